// Subscribes to "sensors", sums and counts the readings, and publishes a
// summary on "summary" every 10 ticks.  The TypeScript twin of
// agents/examples/aggregator.
//
// Summary payload (40 bytes, LE): `tick: u64`, `window_count: u64`,
// `window_sum: i64` (readings since the previous summary), `total_count: u64`,
// `total_sum: i64`.

import {
  Agent,
  Bytes,
  Message,
  MessageKind,
  Name,
  StepContext,
  line,
  publish,
  refusalText,
  register,
  subscribe,
} from "../sdk/lockstep";
export * from "../sdk/abi";

/** How often (in ticks) a summary is published. */
const EVERY: u64 = 10;

class Aggregator extends Agent {
  sensors: Name = new Name("sensors");
  summary: Name = new Name("summary");
  payload: Bytes = new Bytes(40);
  subscribed: bool = false;
  windowCount: u64 = 0;
  windowSum: i64 = 0;
  totalCount: u64 = 0;
  totalSum: i64 = 0;
  malformed: u64 = 0;

  constructor() {
    super();
    this.subscribed = this.subscribe();
  }

  subscribe(): bool {
    const r = subscribe(this.sensors);
    if (r == 0) return true;
    line().s("aggregator: subscribe refused: ").s(refusalText(r)).warn();
    return false;
  }

  step(ctx: StepContext): i32 {
    if (!this.subscribed) this.subscribed = this.subscribe();
    if (ctx.tick % EVERY != 0) return 0;
    this.payload
      .clear()
      .u64(ctx.tick)
      .u64(this.windowCount)
      .i64(this.windowSum)
      .u64(this.totalCount)
      .i64(this.totalSum);
    const r = publish(this.summary, this.payload);
    if (r != 0) line().s("aggregator: publish refused: ").s(refusalText(r)).warn();
    line()
      .s("aggregator: tick ")
      .u64(ctx.tick)
      .s(" window ")
      .u64(this.windowCount)
      .s(" readings sum ")
      .i64(this.windowSum)
      .s("; total ")
      .u64(this.totalCount)
      .s(" malformed ")
      .u64(this.malformed)
      .info();
    this.windowCount = 0;
    this.windowSum = 0;
    return 0;
  }

  receive(msg: Message): i32 {
    if (msg.kind != MessageKind.Topic || !msg.topic.equalsName(this.sensors)) return 0;
    if (msg.payload.length != 16) {
      this.malformed += 1;
      return 0;
    }
    const value = msg.payload.i64(8);
    this.windowCount += 1;
    this.windowSum += value;
    this.totalCount += 1;
    this.totalSum += value;
    return 0;
  }
}

register((): Agent => new Aggregator());
