// The `lockstep` host imports, exactly as docs/abi.md declares them.
//
// Pointers and lengths are offsets into this module's memory (`usize` is
// `i32` on wasm32).  The host validates every range: a bad one faults the
// agent (`bad_host_call`), so prefer the checked wrappers in `lockstep.ts`.

// @ts-ignore: decorator
@external("lockstep", "send")
export declare function send(to: i64, ptr: usize, len: usize): i32;

// @ts-ignore: decorator
@external("lockstep", "publish")
export declare function publish(topicPtr: usize, topicLen: usize, ptr: usize, len: usize): i32;

// @ts-ignore: decorator
@external("lockstep", "subscribe")
export declare function subscribe(topicPtr: usize, topicLen: usize): i32;

// @ts-ignore: decorator
@external("lockstep", "unsubscribe")
export declare function unsubscribe(topicPtr: usize, topicLen: usize): i32;

// @ts-ignore: decorator
@external("lockstep", "join_channel")
export declare function join_channel(namePtr: usize, nameLen: usize): i32;

// @ts-ignore: decorator
@external("lockstep", "leave_channel")
export declare function leave_channel(namePtr: usize, nameLen: usize): i32;

// @ts-ignore: decorator
@external("lockstep", "channel_send")
export declare function channel_send(namePtr: usize, nameLen: usize, ptr: usize, len: usize): i32;

// @ts-ignore: decorator
@external("lockstep", "schedule_task")
export declare function schedule_task(
  agent: i64,
  priority: i32,
  ptr: usize,
  len: usize,
  depsPtr: usize,
  depsLen: usize,
): i64;

// @ts-ignore: decorator
@external("lockstep", "infer")
export declare function infer(modelPtr: usize, modelLen: usize, inputPtr: usize, inputLen: usize): i64;

// @ts-ignore: decorator
@external("lockstep", "log")
export declare function log(level: i32, ptr: usize, len: usize): i32;

// @ts-ignore: decorator
@external("lockstep", "random")
export declare function random(): i64;

// @ts-ignore: decorator
@external("lockstep", "tick")
export declare function tick(): i64;

// @ts-ignore: decorator
@external("lockstep", "agent_id")
export declare function agent_id(): i64;
