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
#
# Idempotent: when the library is already there with the pinned hash nothing
# is downloaded.  Prints the library's absolute path on stdout (progress goes
# to stderr).  Needs python3 with pip; Linux x86_64 only for now.
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

if [[ -f $lib && $(sha "$lib") == "$LIB_SHA256" ]]; then
    log "already present: $lib"
    echo "$lib"
    exit 0
fi

# shellcheck source=lib/pinned-wheel.sh
. "$repo/scripts/lib/pinned-wheel.sh"
pinned_wheel_member "$WHEEL" "$WHEEL_SHA256" "$LIB_MEMBER" "$LIB_SHA256" "$lib" 0644 -- \
    --platform manylinux_2_28_x86_64 --python-version 3.11 \
    --implementation cp --abi cp311 "onnxruntime==${ORT_VERSION}" ||
    { log "could not install $lib"; exit 1; }
log "installed $lib"
echo "$lib"
