#!/usr/bin/env bash
# The tick benchmarks (supervisor/benches/tick.rs): Lockstep's tick
# latency over 1 and 2 worker processes, the in-process wasmtime bound, the
# Node.js peer (run by the bench itself when node/npm exist) and message
# routing throughput, in one run.  Results and analysis: docs/bench-tick.md.
#
#   scripts/bench-tick.sh                       # 5 rounds
#   LOCKSTEP_BENCH_QUICK=1 scripts/bench-tick.sh   # 1 short round (< 60 s)
#
# Other knobs (see the bench's module docs): LOCKSTEP_BENCH_RUNS,
# LOCKSTEP_BENCH_ONLY=run,inproc,node,msg, LOCKSTEP_BENCH_AGENTS,
# LOCKSTEP_BENCH_WORKERS, LOCKSTEP_BENCH_MSGS, LOCKSTEP_NODE_PEER.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The bench starts the release worker binary that sits next to it.
cargo build --release -p lockstep-worker --bin lockstep-worker
cargo bench -p lockstep-supervisor --bench tick
