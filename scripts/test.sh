#!/usr/bin/env bash
# Runs Lockstep's whole test suite from a fresh clone: installs what it needs
# (system packages, the pinned ONNX Runtime library, wasm agents, models),
# builds every binary, then runs unit, integration (real processes), loom and
# doc tests.  Usage: scripts/test.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

scripts/setup.sh

# A one-off build gains nothing from incremental artefacts (gigabytes of them).
export CARGO_INCREMENTAL=0
df -h . | sed 's/^/== disk: /'

# Headless Chromium for the web dashboard's browser test
# (tests/tests/dashboard.rs; without it that test says it skipped).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== setup: chromium (the dashboard's browser test)"
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } ||
        echo "setup: chromium could not be installed; the dashboard's browser test will skip" >&2
fi

echo "== build (all binaries: the integration tests spawn them)"
cargo build --workspace --bins --locked

echo "== tests"
cargo test --workspace --locked

echo "== loom model checking of the ring and the seqlock"
RUSTFLAGS="--cfg loom" cargo test -p shm-protocol --test loom --release --locked --target-dir target/loom

echo "== all tests passed"
