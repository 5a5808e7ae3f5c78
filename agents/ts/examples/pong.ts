// Pong half of a ping-pong pair: echoes every direct message's payload back
// to its sender.  The TypeScript twin of agents/examples/pong.

import {
  Agent,
  Message,
  MessageKind,
  StepContext,
  line,
  refusalText,
  register,
  send,
} from "../sdk/lockstep";
export * from "../sdk/abi";

/** Echoes sent since `agent_init` (exported as `pong_replies`). */
let REPLIES: u64 = 0;

class Pong extends Agent {
  refused: u64 = 0;

  constructor() {
    super();
    REPLIES = 0;
  }

  step(ctx: StepContext): i32 {
    if (ctx.tick % 100 == 0) {
      line()
        .s("pong: tick ")
        .u64(ctx.tick)
        .s(" replies ")
        .u64(REPLIES)
        .s(" refused ")
        .u64(this.refused)
        .info();
    }
    return 0;
  }

  receive(msg: Message): i32 {
    if (msg.kind != MessageKind.Direct || msg.fromRuntime) return 0;
    const r = send(msg.sender, msg.payload);
    if (r == 0) {
      REPLIES += 1;
    } else {
      this.refused += 1;
      line().s("pong: reply to ").u64(msg.sender).s(" refused: ").s(refusalText(r)).warn();
    }
    return 0;
  }
}

register((): Agent => new Pong());

/** Extra export (ignored by the runtime): echoes sent since `agent_init`. */
export function pong_replies(): i64 {
  return <i64>REPLIES;
}
