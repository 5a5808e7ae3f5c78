// The optional `agent_migrate` export (docs/abi.md "Upgrades").  A module
// that is meant to be the target of a hot-swap upgrade re-exports it next to
// the required exports:
//
//     export * from "../sdk/abi";
//     export * from "../sdk/migrate";
//
// It calls the agent's `migrate(fromVersion)`.  If the old module's globals
// were not carried over (its global layout differs from this module's), the
// SDK's state is unreachable and it returns `ERR_STATE_LOST`, an agent fault
// that restarts the agent (fresh instance, `agent_init`) by its policy.

import { __abiMigrate } from "./lockstep";

/** Called after a hot-swap upgrade with the old module's `agent_abi_version`. */
export function agent_migrate(fromVersion: i32): i32 {
  return __abiMigrate(fromVersion);
}
