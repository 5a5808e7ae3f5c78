// Counts its steps in a global and in a heap object (checking they agree);
// logs every 100 ticks.  The TypeScript twin of agents/examples/counter.
//
// This file is also version 2 (counter_v2.ts builds it with
// `--use COUNTER_VERSION=2`): both versions have the same code, static data
// and globals, differing only in constants, so a hot-swap upgrade from one
// to the other keeps the whole state (see agents/ts/README.md, "Upgrades").
// Both export `agent_migrate`, which accepts ABI major 1.

import { Agent, Message, StepContext, line, register } from "../sdk/lockstep";
export * from "../sdk/abi";
export * from "../sdk/migrate";

// @ts-ignore: defined by `--use COUNTER_VERSION=<n>`
const VERSION: i32 = isDefined(COUNTER_VERSION) ? COUNTER_VERSION : 1;

// Every text either version logs, so that both lay out the same static data.
const TEXT: StaticArray<string> = [
  "counter: ",
  "counter v2: ",
  "tick ",
  " steps ",
  " tasks ",
  " received ",
  "migrated from ABI ",
  "cannot migrate from ABI ",
];

/** Steps counted in a global. */
let STEPS: u64 = 0;
/** `fromVersion` of the last successful `agent_migrate` (0 if none). */
let MIGRATED_FROM: u32 = 0;

/** A heap cell (a separate allocation from the agent object). */
class Cell {
  value: u64 = 0;
}

class Counter extends Agent {
  heapSteps: Cell = new Cell();
  tasks: u64 = 0;
  received: u64 = 0;

  constructor() {
    super();
    STEPS = 0;
  }

  step(ctx: StepContext): i32 {
    STEPS += 1;
    const global = STEPS;
    this.heapSteps.value += 1;
    if (ctx.isTask) this.tasks += 1;
    if (global != this.heapSteps.value) {
      // Global and heap disagree: memory was corrupted.
      return 1;
    }
    if (ctx.tick % 100 == 0) {
      line()
        .s(TEXT[VERSION - 1])
        .s(TEXT[2])
        .u64(ctx.tick)
        .s(TEXT[3])
        .u64(global)
        .s(TEXT[4])
        .u64(this.tasks)
        .s(TEXT[5])
        .u64(this.received)
        .info();
    }
    return 0;
  }

  receive(msg: Message): i32 {
    this.received += 1;
    return 0;
  }

  migrate(fromVersion: u32): i32 {
    if (fromVersion >> 16 != 1) {
      line().s(TEXT[VERSION - 1]).s(TEXT[7]).hex(fromVersion, 8).error();
      return 2;
    }
    MIGRATED_FROM = fromVersion;
    line().s(TEXT[VERSION - 1]).s(TEXT[6]).hex(fromVersion, 8).info();
    return 0;
  }
}

register((): Agent => new Counter());

/** Extra export (ignored by the runtime): steps counted since `agent_init`. */
export function counter_steps(): i64 {
  return <i64>STEPS;
}

/** Extra export (ignored by the runtime): this module's version. */
export function counter_version(): i32 {
  return VERSION;
}

/** Extra export (ignored by the runtime): `fromVersion` of the last
 *  successful migration, `0` if none. */
export function counter_migrated_from(): i32 {
  return <i32>MIGRATED_FROM;
}
