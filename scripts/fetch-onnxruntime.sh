#!/usr/bin/env bash
# Fetches the pinned ONNX Runtime CPU library for lockstep-inference-host.
#
# The library comes out of the official `onnxruntime` wheel on PyPI (the only
# binary channel reachable from our build machines).  Both the wheel and the
# extracted shared library are checked against pinned SHA-256 values, so a
# different build can never slip in: float results are part of Lockstep's
# determinism contract.
#
#   scripts/fetch-onnxruntime.sh          # -> .deps/onnxruntime/libonnxruntime.so.1.32.0
#   scripts/fetch-onnxruntime.sh --gpu    # + .deps/onnxruntime-gpu/ (CUDA 13 build) and,
#                                         #   where the machine has an NVIDIA driver but not
#                                         #   the CUDA 13 / cuDNN 9 libraries, .deps/cuda/lib/
#   scripts/fetch-onnxruntime.sh --gpu --cuda-libs   # the CUDA libraries even without a driver
#                                         #   (to carry them to a GPU machine)
#
# Idempotent: when the library is already there with the pinned hash nothing
# is downloaded.  Prints the CPU library's absolute path on stdout (progress
# and the GPU report go to stderr).  Needs python3 with pip; Linux x86_64
# only for now.
#
# GPU: the `onnxruntime-gpu` wheel (1.31.1, built for CUDA 13: the newest
# GPU build on PyPI; the CPU library stays 1.32.0) gives
# libonnxruntime.so.1.31.1, libonnxruntime_providers_shared.so and
# libonnxruntime_providers_cuda.so, all hash-pinned.  The CUDA EP also needs
# the CUDA runtime, cuBLAS, cuRAND, cuFFT, NVRTC (13.x) and cuDNN 9: the
# script looks for them (ldconfig, /usr/local/cuda*) and, for those it does
# not find on a machine with a driver, installs the libraries out of
# NVIDIA's PyPI wheels (CUDA 13.0 versions, wheel hashes pinned) into
# .deps/cuda/lib, where the inference host preloads them from.  The driver
# (libcuda.so.1, /dev/nvidia*) cannot come from a wheel: without it the
# script says so, and `--device auto` runs on the CPU.
#
# The inference host finds the library at this path by itself (walking up
# from its executable to the directory holding `.deps`); elsewhere pass
# `--ort-lib PATH` or set ORT_DYLIB_PATH.
set -euo pipefail

ORT_VERSION=1.32.0
# The exact wheel: pinned platform and Python tag so that the hash does not
# depend on the local interpreter (the C library inside is the same in every
# cp3xx wheel, but the wheel bytes are not).
WHEEL=onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl
WHEEL_SHA256=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d
LIB_MEMBER=onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}
LIB_SHA256=6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest_dir=${LOCKSTEP_DEPS_DIR:-$repo/.deps}/onnxruntime
lib=$dest_dir/libonnxruntime.so.${ORT_VERSION}

log() { echo "fetch-onnxruntime: $*" >&2; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *)
        log "only Linux x86_64 is pinned (this is $(uname -s)-$(uname -m)); pass --ort-lib to the inference host"
        exit 1
        ;;
esac

gpu=0 cuda_libs=0
for arg in "$@"; do
    case $arg in
        --gpu) gpu=1 ;;
        --cuda-libs) gpu=1 cuda_libs=1 ;;
        *)
            log "unknown argument $arg (expected --gpu or --cuda-libs)"
            exit 2
            ;;
    esac
done

# shellcheck source=lib/pinned-wheel.sh
. "$repo/scripts/lib/pinned-wheel.sh"

if [[ -f $lib && $(sha "$lib") == "$LIB_SHA256" ]]; then
    log "already present: $lib"
else
    pinned_wheel_member "$WHEEL" "$WHEEL_SHA256" "$LIB_MEMBER" "$LIB_SHA256" "$lib" 0644 -- \
        --platform manylinux_2_28_x86_64 --python-version 3.11 \
        --implementation cp --abi cp311 "onnxruntime==${ORT_VERSION}" ||
        { log "could not install $lib"; exit 1; }
    log "installed $lib"
fi
((gpu)) || { echo "$lib"; exit 0; }

# ---- GPU: ONNX Runtime's CUDA build ----
GPU_VERSION=1.31.1
GPU_WHEEL=onnxruntime_gpu-${GPU_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl
GPU_WHEEL_SHA256=e26c475fe361b2015f45b4b824bd13f0bb20204e59b62814e6f0acd5f3d491a6
GPU_MEMBERS=(
    onnxruntime/capi/libonnxruntime.so.${GPU_VERSION}=5104254339ecadae808da771bd0b63b240f0dbd466514234905e54372435c303
    onnxruntime/capi/libonnxruntime_providers_shared.so=086ec1d5388f64153d9c63470d126693db9a182c8ce236d3a1119068471b8a0d
    onnxruntime/capi/libonnxruntime_providers_cuda.so=d5290158115fa5569a3fe8f1f4037ee9b0e86658a96e52f852bbb7039aa88137
)
gpu_dir=${LOCKSTEP_DEPS_DIR:-$repo/.deps}/onnxruntime-gpu
have_all() {
    local m
    for m in "$@"; do
        [[ -f $gpu_dir/$(basename "${m%%=*}") && $(sha "$gpu_dir/$(basename "${m%%=*}")") == "${m#*=}" ]] || return 1
    done
}
if have_all "${GPU_MEMBERS[@]}"; then
    log "already present: $gpu_dir (onnxruntime-gpu $GPU_VERSION)"
else
    pinned_wheel_members "$GPU_WHEEL" "$GPU_WHEEL_SHA256" "$gpu_dir" 0644 "${GPU_MEMBERS[@]}" -- \
        --platform manylinux_2_28_x86_64 --python-version 3.11 \
        --implementation cp --abi cp311 "onnxruntime-gpu==${GPU_VERSION}" ||
        { log "could not install onnxruntime-gpu into $gpu_dir"; exit 1; }
    log "installed $gpu_dir (onnxruntime-gpu $GPU_VERSION)"
fi

# ---- GPU: driver, CUDA and cuDNN ----
driver=
if [[ -r /proc/driver/nvidia/version ]]; then
    driver=$(sed -n 's/.*Kernel Module[^0-9]*\([0-9.]*\).*/\1/p' /proc/driver/nvidia/version | head -n1)
fi
if [[ -n $driver ]]; then
    log "NVIDIA driver: $driver"
    command -v nvidia-smi >/dev/null &&
        nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null |
        while read -r line; do log "  GPU $line"; done
else
    log "NVIDIA driver: none (no /proc/driver/nvidia/version): CUDA cannot run on this machine;"
    log "  --device auto runs on the CPU, --device cuda refuses to start"
fi

cuda_dir=${LOCKSTEP_DEPS_DIR:-$repo/.deps}/cuda/lib
# Where a library is: .deps/cuda/lib, LD_LIBRARY_PATH (the supervisor
# passes it to the inference host), the loader's cache, the CUDA toolkit.
find_lib() {
    local name=$1 d
    [[ -f $cuda_dir/$name ]] && { echo "$cuda_dir/$name"; return 0; }
    local IFS=:
    for d in ${LD_LIBRARY_PATH:-}; do
        [[ -n $d && -f $d/$name ]] && { echo "$d/$name"; return 0; }
    done
    unset IFS
    ldconfig -p 2>/dev/null | awk -v n="$name" '$1 == n { print $NF; found = 1; exit } END { exit !found }' && return 0
    for d in /usr/local/cuda*/targets/x86_64-linux/lib /usr/local/cuda*/lib64 /usr/lib/x86_64-linux-gnu; do
        [[ -f $d/$name ]] && { echo "$d/$name"; return 0; }
    done
    return 1
}
# name of a wheel, its pinned hash, `pkg==version`, members (in the wheel).
CUDA_WHEELS=(
    "nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl|7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548|nvidia-cuda-runtime==13.0.96|nvidia/cu13/lib/libcudart.so.13"
    "nvidia_cublas-13.0.2.14-py3-none-manylinux_2_27_x86_64.whl|0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c|nvidia-cublas==13.0.2.14|nvidia/cu13/lib/libcublas.so.13 nvidia/cu13/lib/libcublasLt.so.13"
    "nvidia_cuda_nvrtc-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl|ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575|nvidia-cuda-nvrtc==13.0.88|nvidia/cu13/lib/libnvrtc.so.13 nvidia/cu13/lib/libnvrtc-builtins.so.13.0"
    "nvidia_curand-10.4.0.35-py3-none-manylinux_2_27_x86_64.whl|1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc|nvidia-curand==10.4.0.35|nvidia/cu13/lib/libcurand.so.10"
    "nvidia_cufft-12.0.0.61-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl|6c44f692dce8fd5ffd3e3df134b6cdb9c2f72d99cf40b62c32dde45eea9ddad3|nvidia-cufft==12.0.0.61|nvidia/cu13/lib/libcufft.so.12"
    "nvidia_cudnn_cu13-9.13.1.26-py3-none-manylinux_2_27_x86_64.whl|a0f434a881ce8b35afe3a328634db1da4a3852fc6dfbe89577f3e78400ee10d0|nvidia-cudnn-cu13==9.13.1.26|nvidia/cudnn/lib/libcudnn.so.9 nvidia/cudnn/lib/libcudnn_graph.so.9 nvidia/cudnn/lib/libcudnn_ops.so.9 nvidia/cudnn/lib/libcudnn_heuristic.so.9 nvidia/cudnn/lib/libcudnn_adv.so.9 nvidia/cudnn/lib/libcudnn_cnn.so.9 nvidia/cudnn/lib/libcudnn_engines_precompiled.so.9 nvidia/cudnn/lib/libcudnn_engines_runtime_compiled.so.9"
)
missing=0
for entry in "${CUDA_WHEELS[@]}"; do
    IFS='|' read -r wheel wheel_sha spec members <<<"$entry"
    need=()
    for m in $members; do
        if where=$(find_lib "$(basename "$m")"); then
            log "found $(basename "$m"): $where"
        else
            need+=("$m=-")
        fi
    done
    ((${#need[@]})) || continue
    if [[ -z $driver ]] && ((!cuda_libs)); then
        log "missing (not fetched without a driver; --cuda-libs fetches them anyway): ${need[*]//=-/}"
        missing=1
        continue
    fi
    if pinned_wheel_members "$wheel" "$wheel_sha" "$cuda_dir" 0644 "${need[@]}" -- "$spec"; then
        log "installed from $wheel into $cuda_dir: ${need[*]//=-/}"
    else
        log "could not install $spec into $cuda_dir"
        missing=1
    fi
done
if [[ -n $driver ]] && ((!missing)); then
    log "GPU: ready (onnxruntime-gpu $GPU_VERSION in $gpu_dir; CUDA 13 and cuDNN 9 found)"
else
    log "GPU: not ready on this machine${driver:+ (libraries missing, above)}${driver:- (no driver)}"
fi
echo "$lib"
