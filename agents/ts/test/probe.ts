// A test agent for the SDK (built to target/agents-build/ts/ts_probe.wasm,
// driven by agents.test.mjs): each direct message's first byte selects an
// SDK feature to exercise; the rest of the payload is its argument.

import {
  Agent,
  Bytes,
  Message,
  MessageKind,
  Name,
  StepContext,
  channelSend,
  info,
  joinChannel,
  leaveChannel,
  line,
  publish,
  register,
  scheduleTaskAfter,
  send,
  subscribe,
  unsubscribe,
  warn,
} from "../sdk/lockstep";
export * from "../sdk/abi";
export * from "../sdk/migrate";

class Probe extends Agent {
  ops: Name = new Name("ops");
  out: Bytes = new Bytes(4);
  deps: Array<u64> = [];

  receive(msg: Message): i32 {
    if (msg.kind != MessageKind.Direct || msg.payload.length == 0) return 0;
    const op = msg.payload.u8(0);
    const arg = msg.payload.slice(1, msg.payload.length - 1);
    if (op == 1) {
      // Number formatting.
      line()
        .i64(i64.MIN_VALUE)
        .ch(32)
        .u64(u64.MAX_VALUE)
        .ch(32)
        .hex(0xbeef, 8)
        .ch(32)
        .f64(-2.5, 2)
        .ch(32)
        .f64(1.0 / 3.0)
        .ch(32)
        .f64(NaN)
        .ch(32)
        .f64(-Infinity)
        .ch(32)
        .f64(6.02e23, 2)
        .ch(32)
        .bool(true)
        .info();
    } else if (op == 2) {
      // A long line is cut at a character boundary.
      const l = line();
      for (let i = 0; i < 100; i++) l.s("é€");
      l.s(l.truncated ? "" : "(not truncated)").warn();
      const n = l.length;
      line().u64(<u64>n).info();
    } else if (op == 3) {
      // Names as strings (encoded per call), Name, View; refusals.
      subscribe("température");
      unsubscribe(this.ops);
      joinChannel(arg);
      channelSend(arg, "héllo");
      leaveChannel(arg);
      const r = publish("", "x");
      publish("results", this.out.clear().i32(r).i32(subscribe(new Name("x".repeat(257)))));
    } else if (op == 4) {
      // Tasks with dependencies from an Array<u64>.
      this.deps.length = 0;
      for (let i = 0; i + 8 <= arg.length; i += 8) this.deps.push(arg.u64(i));
      const id = scheduleTaskAfter(msg.sender, -5, arg, this.deps);
      send(msg.sender, this.out.clear().u64(<u64>id));
    } else if (op == 5) {
      // Math.random, seeded from the lockstep random stream.
      this.out.clear().f64(Math.random()).f64(Math.random());
      send(msg.sender, this.out);
    } else if (op == 6) {
      // A read past the end of a view aborts: logged, then a trap.
      msg.payload.u64(msg.payload.length - 4);
    } else if (op == 7) {
      // A failed assertion with a message.
      assert(false, "probe assertion");
    } else if (op == 8) {
      // trace() goes to the log at trace level.
      trace("probe trace", 2, 1.5, -2);
    } else if (op == 9) {
      // Topic comparison and string copies.
      if (msg.topic.equals("")) info("empty topic");
      const s = arg.toString();
      if (arg.equals(s) && arg.isUtf8()) warn(s + "!");
    }
    return 0;
  }

  step(ctx: StepContext): i32 {
    // Echo the task payload and priority.
    if (ctx.isTask) {
      line().s("task ").hex(ctx.taskId, 16).s(" priority ").i64(ctx.taskPriority).s(" payload ").u64(<u64>ctx.payload.length).info();
    }
    return 0;
  }

  migrate(fromVersion: u32): i32 {
    return <i32>fromVersion == 0x10000 ? 0 : 7;
  }
}

register((): Agent => new Probe());
