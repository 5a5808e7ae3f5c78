#!/usr/bin/env bash
# The demo across "machines" on this one: a NATS server with JetStream and
# three lockstep-node processes (a, b, gpu) standing in for three machines.
# The demo runs once on this machine alone and once with its three workers
# on nodes a, b and on this machine and its inference host on node gpu,
# archived live in JetStream; the script prints both final hashes, compares
# the journals byte for byte, and resumes the archived run elsewhere.
#
#   scripts/cluster-demo.sh [TICKS]        # default 1200
#
# Installs what it needs (scripts/setup.sh), builds the release binaries,
# stops everything it started on exit.  Exit status 1 if anything differs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
ticks=${1:-1200}

scripts/setup.sh
cargo build --release --workspace --bins --locked
bin="$root/target/release"
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
nats="nats://127.0.0.1:$port"
echo "== nats-server with JetStream on $nats"
.deps/nats/nats-server -a 127.0.0.1 -p "$port" -js -sd "$work/js" >"$work/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
done
for n in a b gpu; do
    LOCKSTEP_LOG=warn "$bin/lockstep-node" serve --nats "$nats" --name "$n" >"$work/node-$n.log" 2>&1 &
    pids+=($!)
done
for n in a b gpu; do
    for _ in $(seq 100); do grep -q ready "$work/node-$n.log" && break; sleep 0.1; done
    grep -q ready "$work/node-$n.log" || { echo "node $n did not start:"; cat "$work/node-$n.log"; exit 1; }
done
echo "== nodes a, b, gpu ready"

echo "== the demo on this machine alone ($ticks ticks)"
"$bin/lockstep" run examples/demo.toml --ticks "$ticks" --workers 3 --no-board --run-dir "$work/alone" --json >"$work/alone.json"
echo "== the demo across nodes a, b, this machine; inference on node gpu; archived as cluster-demo"
"$bin/lockstep" run examples/demo.toml --ticks "$ticks" --workers 3 --no-board --run-dir "$work/spread" --json \
    --nats "$nats" --nodes a,b,local --inference-node gpu --archive cluster-demo >"$work/spread.json"
hash() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["hash"])' "$1"; }
h1=$(hash "$work/alone.json")
h2=$(hash "$work/spread.json")
echo "final hash, one machine:    $h1"
echo "final hash, across nodes:   $h2"
echo "journal digest, one machine:  $(sha256sum <"$work/alone/journal.lsj" | cut -c1-64)"
echo "journal digest, across nodes: $(sha256sum <"$work/spread/journal.lsj" | cut -c1-64)"
status=0
if [[ $h1 == "$h2" ]] && cmp -s "$work/alone/journal.lsj" "$work/spread/journal.lsj"; then
    echo "EQUAL"
else
    echo "DIFFERENT"
    status=1
fi
echo "== the archived run rebuilt from JetStream and verified on \"another machine\""
"$bin/lockstep-node" fetch --nats "$nats" --name cluster-demo --into "$work/elsewhere"
"$bin/lockstep" verify "$work/elsewhere" || status=1
exit $status
