// Every 5 ticks schedules prioritised tasks for workers
// `agentId()+1 ..= agentId()+3`, then a join task depending on them.  The
// TypeScript twin of agents/examples/coordinator.
//
// Task payload (12 bytes, LE): `round: u64`, `part: u32` (`0` for the join
// task).  Worker `agentId()+j` gets priority `10 * (4 - j)`; the join task
// goes to the first worker with priority 0 and depends on the round's tasks.

import {
  Agent,
  Bytes,
  StepContext,
  agentId,
  line,
  refusalText,
  register,
  scheduleTask,
  scheduleTaskAfter,
} from "../sdk/lockstep";
export * from "../sdk/abi";

/** Ticks between rounds. */
const EVERY: u64 = 5;
/** Number of workers (`agentId()+1 ..= agentId()+WORKERS`). */
const WORKERS: u64 = 3;

class Coordinator extends Agent {
  me: u64 = agentId();
  round: u64 = 0;
  scheduled: u64 = 0;
  refused: u64 = 0;
  payload: Bytes = new Bytes(12);
  ids: Array<u64> = new Array<u64>(<i32>WORKERS);

  /** Schedules one task; its id, or 0 if refused. */
  schedule(agent: u64, priority: i32, round: u64, part: u32, join: bool): u64 {
    this.payload.clear().u64(round).u32(part);
    const id = join
      ? scheduleTaskAfter(agent, priority, this.payload, this.ids)
      : scheduleTask(agent, priority, this.payload);
    if (id > 0) {
      this.scheduled += 1;
      return <u64>id;
    }
    this.refused += 1;
    line().s("coordinator: task for ").u64(agent).s(" refused: ").s(refusalText(id)).warn();
    return 0;
  }

  step(ctx: StepContext): i32 {
    // Only plain steps start rounds (a task sent to us is just accepted).
    if (ctx.isTask || ctx.tick % EVERY != 0) return 0;
    this.round += 1;
    this.ids.length = 0;
    for (let j: u64 = 1; j <= WORKERS; j++) {
      const priority = <i32>(10 * (WORKERS + 1 - j));
      const id = this.schedule(this.me + j, priority, this.round, <u32>j, false);
      if (id != 0) this.ids.push(id);
    }
    const join = this.schedule(this.me + 1, 0, this.round, 0, true);
    const l = line()
      .s("coordinator: round ")
      .u64(this.round)
      .s(" scheduled ")
      .u64(<u64>this.ids.length)
      .s(" tasks, join ");
    if (join != 0) l.s("Some(").u64(join).s(")");
    else l.s("None");
    l.s(" (total ").u64(this.scheduled).s(", refused ").u64(this.refused).s(")").info();
    return 0;
  }
}

register((): Agent => new Coordinator());
