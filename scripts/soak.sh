#!/usr/bin/env bash
# Runs the soak test for longer than the test suite does: a `--forever` run
# of 1,000 agents with the default settings, sampled every 5 s, checked
# against the bounds in tests/tests/soak.rs (ARCHITECTURE.md, "Resource
# bounds of a long run").  Usage:
#
#   scripts/soak.sh            # one hour
#   scripts/soak.sh 600        # ten minutes
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
secs="${1:-3600}"
scripts/setup.sh
cargo build --workspace --bins --locked
LOCKSTEP_SOAK_SECS="$secs" cargo test --locked -p lockstep-tests --test soak -- --nocapture
