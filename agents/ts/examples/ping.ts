// Ping half of a ping-pong pair: sends its counter to agent `agentId() + 1`,
// waits for the echo (re-sends after 10 ticks), repeats.  The TypeScript twin
// of agents/examples/ping; pairs with the Rust, C or TypeScript pong.

import {
  Agent,
  Bytes,
  Message,
  MessageKind,
  StepContext,
  agentId,
  line,
  refusalText,
  register,
  send,
} from "../sdk/lockstep";
export * from "../sdk/abi";

/** Re-send the outstanding ping if no echo arrived within this many ticks. */
const RESEND_AFTER: u64 = 10;

/** Echoes received since `agent_init` (exported as `ping_echoes`). */
let ECHOES: u64 = 0;

class Ping extends Agent {
  peer: u64 = agentId() + 1;
  counter: u64 = 0;
  /** Whether a ping is in flight: its value and the tick it was (last) sent in. */
  outstanding: bool = false;
  outValue: u64 = 0;
  outSent: u64 = 0;
  refused: bool = false;
  payload: Bytes = new Bytes(8);

  constructor() {
    super();
    ECHOES = 0;
  }

  step(ctx: StepContext): i32 {
    const due = !this.outstanding || (ctx.tick > this.outSent && ctx.tick - this.outSent >= RESEND_AFTER);
    if (!due) return 0;
    if (this.outstanding) {
      line().s("ping: no echo for ").u64(this.counter).s(" yet, re-sending").warn();
    }
    const r = send(this.peer, this.payload.clear().u64(this.counter));
    if (r == 0) {
      this.outstanding = true;
      this.outValue = this.counter;
      this.outSent = ctx.tick;
      this.refused = false;
    } else if (!this.refused) {
      this.refused = true;
      line().s("ping: send to ").u64(this.peer).s(" refused: ").s(refusalText(r)).warn();
    }
    return 0;
  }

  receive(msg: Message): i32 {
    if (msg.kind != MessageKind.Direct || msg.sender != this.peer) return 0;
    if (msg.payload.length != 8) {
      line().s("ping: malformed echo (").u64(msg.payload.length).s(" bytes)").warn();
      return 0;
    }
    const value = msg.payload.u64(0);
    if (this.outstanding && this.outValue == value) {
      this.outstanding = false;
      this.counter += 1;
      ECHOES += 1;
      if (ECHOES % 100 == 0) line().s("ping: ").u64(ECHOES).s(" echoes").info();
    } else {
      // A stale echo (e.g. of a re-sent ping, or from before a restart).
      line().s("ping: ignoring stale echo ").u64(value).warn();
    }
    return 0;
  }
}

register((): Agent => new Ping());

/** Extra export (ignored by the runtime): echoes received since `agent_init`. */
export function ping_echoes(): i64 {
  return <i64>ECHOES;
}
