#!/usr/bin/env bash
# Runs every benchmark of docs/benchmarks.md, one after the other (never in
# parallel: they measure the machine), and keeps each one's table in
# target/bench-results/<name>.txt.  Usage:
#
#   scripts/bench-all.sh                  # all of them (≈ 30–40 min on 2 vCPUs)
#   scripts/bench-all.sh transport tick   # some of them
#   LOCKSTEP_BENCH_QUICK=1 scripts/bench-all.sh   # smoke run of each
#
# Names: transport worker tick board dashboard inference recovery sandbox pipeline scale scale-out.  The tick bench runs
# the Node.js peer (../shared/peers/node-seed-tick, or LOCKSTEP_NODE_PEER)
# when node and npm exist; the transport bench includes iceoryx2.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/setup.sh
out="$root/target/bench-results"
mkdir -p "$out"
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(transport worker tick board dashboard inference recovery sandbox pipeline scale scale-out)
# The benches start the release binaries that sit next to them.
cargo build --release --workspace --bins --locked
for n in "${names[@]}"; do
    echo "== $n ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))"
    case "$n" in
        transport) cmd=(cargo bench --locked -p shm-protocol --bench transport --features bench-iceoryx2) ;;
        worker) cmd=(cargo bench --locked -p lockstep-worker --bench worker) ;;
        tick) cmd=(cargo bench --locked -p lockstep-supervisor --bench tick) ;;
        board) cmd=(cargo bench --locked -p lockstep-ui --bench board) ;;
        dashboard) cmd=(cargo bench --locked -p lockstep-ui --bench dashboard) ;;
        inference) cmd=(cargo bench --locked -p lockstep-inference-host --bench inference) ;;
        recovery) cmd=(cargo bench --locked -p lockstep-supervisor --bench recovery) ;;
        sandbox) cmd=(cargo bench --locked -p lockstep-supervisor --bench sandbox) ;;
        pipeline) cmd=(cargo bench --locked -p lockstep-supervisor --bench pipeline) ;;
        scale) cmd=(cargo bench --locked -p lockstep-supervisor --bench scale) ;;
        scale-out) cmd=(cargo bench --locked -p lockstep-supervisor --bench scale_out) ;;
        *) echo "unknown benchmark: $n (transport worker tick board dashboard inference recovery sandbox pipeline scale scale-out)" >&2; exit 2 ;;
    esac
    "${cmd[@]}" 2>&1 | tee "$out/$n.txt"
done
echo "== results in $out"
