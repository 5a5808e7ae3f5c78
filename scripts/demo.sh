#!/usr/bin/env bash
# Lockstep's demo from a fresh clone: installs what it needs (system
# packages, the pinned ONNX Runtime, the wasm agents, the models), builds the
# release binaries, runs the demo society of agents for a few thousand ticks,
# shows the read-only view of the run, and verifies that the run reproduces
# bit for bit.  Usage: scripts/demo.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/setup.sh
cargo build --release --workspace --bins --locked

run_dir="$root/run/demo"
rm -rf "$run_dir"
echo "== lockstep run examples/demo.toml (sensors, aggregators, a coordinator with prioritised tasks, inference agents, ...)"
target/release/lockstep run examples/demo.toml --run-dir "$run_dir"
echo
echo "== lockstep-ui --once (the read-only view of the run's state board)"
target/release/lockstep-ui --once "$run_dir" | head -n 30
echo
echo "== lockstep verify: re-execute the whole run from its checkpoints"
target/release/lockstep verify "$run_dir"
echo
echo "The run directory is $run_dir (journal, snapshots, metrics.jsonl)."
echo "Try: target/release/lockstep log $run_dir --kind event | head"
