#!/usr/bin/env bash
# Runs Lockstep's whole test suite from a fresh clone: installs what it needs
# (system packages, the pinned ONNX Runtime library, wasm agents, models),
# builds every binary, then runs unit, integration (real processes), loom and
# doc tests.  Usage: scripts/test.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/setup.sh

echo "== build (all binaries: the integration tests spawn them)"
cargo build --workspace --bins --locked

echo "== tests"
cargo test --workspace --locked

echo "== loom model checking of the ring and the seqlock"
RUSTFLAGS="--cfg loom" cargo test -p shm-protocol --test loom --release --locked --target-dir target/loom

echo "== all tests passed"
