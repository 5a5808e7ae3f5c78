// Version 2 of counter.ts for hot-swap tests: the same source built with
// `--use COUNTER_VERSION=2` (logs "counter v2: ...", `counter_version` 2).
// The TypeScript twin of agents/examples/upgrade_v2.
// asc-flags: --use COUNTER_VERSION=2
// upgrade-of: counter
export * from "./counter";
