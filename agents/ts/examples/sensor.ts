// Publishes a reading from the deterministic `random()` stream on topic
// "sensors" every step.  The TypeScript twin of agents/examples/sensor.
//
// Payload (16 bytes): `tick: u64 LE`, `value: i64 LE` with `value` in `0..1000`.

import {
  Agent,
  Bytes,
  Name,
  StepContext,
  line,
  publish,
  random,
  refusalText,
  register,
} from "../sdk/lockstep";
export * from "../sdk/abi";

class Sensor extends Agent {
  topic: Name = new Name("sensors");
  payload: Bytes = new Bytes(16);
  published: u64 = 0;
  refused: u64 = 0;

  step(ctx: StepContext): i32 {
    const value = <i64>(random() % 1000);
    const r = publish(this.topic, this.payload.clear().u64(ctx.tick).i64(value));
    if (r == 0) {
      this.published += 1;
    } else {
      this.refused += 1;
      if (this.refused == 1) line().s("sensor: publish refused: ").s(refusalText(r)).warn();
    }
    return 0;
  }
}

register((): Agent => new Sensor());
