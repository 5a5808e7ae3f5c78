// The agent ABI v1.0 exports (docs/abi.md "Exports").  Every agent module
// re-exports them:
//
//     export * from "../sdk/abi";
//
// and registers its agent with `register` (lockstep.ts).  `agent_migrate`
// is optional and lives in migrate.ts.

import {
  ABI_VERSION,
  __abiBuffer,
  __abiInit,
  __abiReceive,
  __abiShutdown,
  __abiStep,
} from "./lockstep";

/** The ABI version this module implements: `(major << 16) | minor`. */
export function agent_abi_version(): i32 {
  return <i32>ABI_VERSION;
}

/** A buffer of at least `len` bytes for the host to write a context or
 *  message into; reused (and only moved when it grows).  `0` if `len` is
 *  negative or too large. */
export function agent_buffer(len: i32): i32 {
  return <i32>__abiBuffer(len);
}

/** Creates the agent with the registered factory. */
export function agent_init(): i32 {
  return __abiInit();
}

/** One scheduled step. */
export function agent_step(ctxPtr: i32): i32 {
  return __abiStep(<usize>ctxPtr);
}

/** One delivered message. */
export function agent_receive(msgPtr: i32): i32 {
  return __abiReceive(<usize>msgPtr);
}

/** The agent is about to be stopped. */
export function agent_shutdown(): i32 {
  return __abiShutdown();
}
