#!/usr/bin/env bash
# The GPU inference path, checked on a machine with an NVIDIA GPU: builds
# nothing there, runs what the build machine prepared.
#
#   scripts/gpu-check.sh --prepare   # on the build machine: release binaries and the
#                                    # CPU-vs-CUDA bench into target/gpu-check/bin
#   scripts/gpu-check.sh             # on the GPU machine (after
#                                    # scripts/fetch-onnxruntime.sh --gpu, or with its
#                                    # files carried over into .deps/)
#
# Prints the device and library versions, then the table of
# inference-host/benches/gpu.rs (MLP, Magika and MiniLM at batch 1, 64 and 1,024:
# CPU vs CUDA latency p50/p99 and spread, throughput, registry overhead vs a
# direct ort session, max abs difference CPU vs CUDA, CUDA run-to-run bit
# equality), then the demo run with `--device cuda`, verified on CUDA
# (bitwise) and on the CPU (every CUDA answer equal within its model's
# tolerance), and the same demo on the CPU for comparison.  Exits non-zero
# when the CUDA demo or either verification fails.
#
# Where the CUDA/cuDNN libraries are not in the loader's path or
# .deps/cuda/lib, set LD_LIBRARY_PATH to their directories: the supervisor
# passes it to the inference host.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$repo/target/gpu-check
bin=$out/bin
log() { echo "gpu-check: $*" >&2; }

if [[ ${1:-} == --prepare ]]; then
    cd "$repo"
    cargo build --release --locked -p lockstep-supervisor -p lockstep-worker -p lockstep-inference-host
    bench=$(cargo bench --locked -p lockstep-inference-host --bench gpu --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])')
    mkdir -p "$bin"
    cp -f target/release/lockstep target/release/lockstep-worker target/release/lockstep-inference-host "$bin"/
    cp -f "$bench" "$bin/gpu-bench"
    log "prepared $bin:"
    ls -l "$bin" >&2
    log "the GPU machine needs these, the agents (target/agents), the models (.deps/models) and"
    log ".deps/onnxruntime-gpu (scripts/fetch-onnxruntime.sh --gpu; its CUDA provider library is 284 MB)"
    exit 0
fi

for b in lockstep lockstep-worker lockstep-inference-host gpu-bench; do
    [[ -x $bin/$b ]] || {
        log "$bin/$b is missing: run scripts/gpu-check.sh --prepare on the build machine"
        exit 2
    }
done

echo "== device"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv || true
else
    echo "nvidia-smi: not found"
fi
echo "== libraries (scripts/fetch-onnxruntime.sh --gpu)"
"$repo/scripts/fetch-onnxruntime.sh" --gpu >/dev/null || true
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

echo "== CPU vs CUDA (inference-host/benches/gpu.rs)"
"$bin/gpu-bench"

echo "== the demo with --device cuda, then verify"
status=0
rm -rf "$out/demo-cuda" "$out/demo-cpu"
if "$bin/lockstep" run "$repo/examples/demo.toml" --device cuda --run-dir "$out/demo-cuda" --json >"$out/demo-cuda.json"; then
    cat "$out/demo-cuda.json"
    echo "-- verify on CUDA (the same device: bitwise)"
    "$bin/lockstep" verify "$out/demo-cuda" --device cuda || status=1
    echo "-- verify on the CPU (the answers of CUDA within tolerance)"
    "$bin/lockstep" verify "$out/demo-cuda" --device cpu || status=1
else
    log "the demo with --device cuda failed"
    status=1
fi
echo "== the same demo on the CPU (its answers are CPU answers: another journal)"
"$bin/lockstep" run "$repo/examples/demo.toml" --device cpu --run-dir "$out/demo-cpu" --json || status=1
exit $status
