#!/usr/bin/env bash
# Lockstep's demo from a fresh clone: installs what it needs, builds the
# release binaries and runs the demo scenario.  Usage: scripts/demo.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/setup.sh
cargo build --release --workspace --bins --locked

run_dir="$root/run/demo"
rm -rf "$run_dir"
echo "== lockstep ping: start 4 workers and the inference host, ping each, shut down"
target/release/lockstep ping --workers 4 --rounds 10000 --run-dir "$run_dir"
echo "== lockstep-ui (read-only viewer of the run's state board)"
target/release/lockstep-ui --once "$run_dir"
