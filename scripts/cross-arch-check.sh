#!/usr/bin/env bash
# Determinism across architectures: runs the demo manifest on x86_64
# (natively) and on aarch64 (the same workspace cross-compiled, run under
# qemu-user) with the same seed and tick count, and checks that both runs
# end with the same state hash and write byte-identical journals.  Then each
# run is re-executed (`lockstep verify`) by the other architecture's
# binaries.  Prints both hashes and journal digests and EQUAL or DIFFERENT;
# exits 0 only when everything is equal.
#
#   scripts/cross-arch-check.sh                 # build what is stale, then check
#   scripts/cross-arch-check.sh --ticks 1000    # another tick count (default 2000, the manifest's)
#   scripts/cross-arch-check.sh --no-build      # use the binaries as they are
#   scripts/cross-arch-check.sh --manifest M --seed S   # another manifest or seed
#   scripts/cross-arch-check.sh --no-verify     # skip the two cross-verifications
#
# Environment: LOCKSTEP_QEMU_CPU picks the emulated CPU (default
# neoverse-n1: Armv8.2 with dot-product, no SVE, like AWS Graviton2 or
# Ampere Altra; also cortex-a76 and cortex-a72; other models only with a
# qemu that emulates /proc/cpuinfo, see below).
#
# What it needs (installed with apt-get when run as root, idempotently):
# gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user for the cross
# build and the emulation, and Debian's rustc-web/cargo-web/rust-web-src
# toolchain, whose /usr/bin/cargo builds std for aarch64 from source
# (RUSTC_BOOTSTRAP=1, -Zbuild-std), the route scripts/build-agents.sh takes
# for the wasm agents.  The aarch64 binaries go to target/cross (their own
# target dir: target/release and target/debug are untouched); the linker is
# set for that target only, in this script's environment.  The aarch64 ONNX
# Runtime library comes from the official PyPI wheel, pinned and
# hash-checked like scripts/fetch-onnxruntime.sh does for x86_64, into
# .deps/onnxruntime-aarch64/.  The agents and models are those of
# scripts/setup.sh.
#
# Under emulation (details and measurements: ARCHITECTURE.md,
# "Portability"):
# * Both runs are unsandboxed (`--no-sandbox`; the journal's header records
#   the sandbox settings, so both runs must agree).  Under qemu-user the
#   sandbox stops at Landlock: qemu runs a thread of its own in every
#   process and Landlock confines only the calling thread, so the sandbox
#   refuses; qemu 7.2 also implements neither the Landlock calls nor
#   seccomp(2) (ENOSYS) nor PR_SET_SECCOMP (EINVAL), and a seccomp filter
#   would judge qemu's own x86_64 calls anyway.  Every other layer works
#   there (`--sandbox-disable landlock --sandbox-disable seccomp`).
# * The supervisor finds its children through LOCKSTEP_WORKER_BIN and
#   LOCKSTEP_INFERENCE_HOST_BIN, which point at small wrappers that exec
#   qemu-aarch64 on the aarch64 child: qemu-user hands the guest's execve to
#   the host kernel, which cannot run an aarch64 ELF without a binfmt_misc
#   registration (none here, none needed).
# * qemu 7.2 shows an aarch64 guest the host's /proc/cpuinfo, and ONNX
#   Runtime crashes on it; the aarch64 commands run in a private mount
#   namespace with the emulated CPU's /proc/cpuinfo (needs root).
#
# Result at the time of writing: EQUAL (final hash, journal bytes and both
# cross-verifications), with the demo's Magika model in the portable form
# scripts/gen-models.sh makes (scripts/onnx-portable.py: ONNX Runtime's
# aarch64 Reciprocal and ReduceSum kernels round differently from x86_64's;
# ARCHITECTURE.md, "Portability").  Timings (2 vCPUs): docs/benchmarks.md,
# "Across architectures" — about 3 minutes warm, but a cold run cross-builds
# std, wasmtime and the rest first (about 13 minutes) and the x86_64 release
# build (scripts/test.sh builds debug only), which would take CI from about
# 22 to about 45 of its 60 minutes; so it is not part of scripts/test.sh.
# Run it after changes to anything that computes (worker, engine, inference
# host, ONNX Runtime, models) and record the result in docs/benchmarks.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

TICKS=2000
MANIFEST="$ROOT/examples/demo.toml"
SEED=2026
BUILD=1
VERIFY=1
while (($#)); do
    case "$1" in
        --ticks)
            TICKS="$2"
            shift
            ;;
        --ticks=*) TICKS="${1#--ticks=}" ;;
        --manifest)
            MANIFEST="$(realpath "$2")"
            shift
            ;;
        --seed)
            SEED="$2"
            shift
            ;;
        --no-build) BUILD=0 ;;
        --no-verify) VERIFY=0 ;;
        -h | --help)
            sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "cross-arch-check: unknown argument: $1" >&2
            exit 2
            ;;
    esac
    shift
done
cd "$ROOT"

log() { echo "cross-arch-check: $*" >&2; }
die() {
    log "$*"
    exit 1
}

TRIPLE=aarch64-unknown-linux-gnu
CROSS_DIR="$ROOT/target/cross"
ARM_BIN="$CROSS_DIR/$TRIPLE/release"
X86_BIN="$ROOT/target/release"
WORK="$ROOT/target/cross-check"
SYSROOT=/usr/aarch64-linux-gnu
QEMU_CPU="${LOCKSTEP_QEMU_CPU:-neoverse-n1}"

ORT_VERSION=1.32.0
ARM_WHEEL=onnxruntime-${ORT_VERSION}-cp311-cp311-manylinux_2_28_aarch64.whl
ARM_WHEEL_SHA256=2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c
ARM_LIB_MEMBER=onnxruntime/capi/libonnxruntime.so.${ORT_VERSION}
ARM_LIB_SHA256=49852228a93995158b2a813d4df487d47a1b76b0eaa894507ef49e91b6d7954a
ARM_ORT_DIR="${LOCKSTEP_DEPS_DIR:-$ROOT/.deps}/onnxruntime-aarch64"
ARM_ORT="$ARM_ORT_DIR/libonnxruntime.so.${ORT_VERSION}"

[[ $(uname -s)-$(uname -m) == Linux-x86_64 ]] ||
    die "runs on Linux x86_64 only (this is $(uname -s)-$(uname -m))"

sha() { sha256sum "$1" | cut -d' ' -f1; }
# BLAKE3 when b3sum is there, else SHA-256; the label says which.
digest() {
    if command -v b3sum >/dev/null 2>&1; then
        echo "blake3:$(b3sum --no-names "$1")"
    else
        echo "sha256:$(sha "$1")"
    fi
}
now_ms() { date +%s%3N; }

# --- 1. system packages -------------------------------------------------------

missing=()
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
[[ -f $SYSROOT/lib/ld-linux-aarch64.so.1 && -f $SYSROOT/lib/crt1.o ]] || missing+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
if ((BUILD)); then
    [[ -x /usr/bin/cargo && -x /usr/bin/rustc ]] || missing+=(rustc-web cargo-web)
    [[ -d /usr/lib/rustlib/src/rust/library/std ]] || missing+=(rust-web-src)
fi
if ((${#missing[@]})); then
    pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user rustc-web cargo-web rust-web-src)
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing ${pkgs[*]} (missing: ${missing[*]})"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y "${pkgs[@]}" >&2 ||
            { apt-get update >&2 && apt-get install -y "${pkgs[@]}" >&2; }
    else
        die "missing ${missing[*]}; install with: sudo apt-get install -y ${pkgs[*]}"
    fi
fi
QEMU="$(command -v qemu-aarch64)"

# Agents, models and the x86_64 ONNX Runtime library (scripts/setup.sh).
need_setup=0
for f in target/agents/coordinator.wasm target/agents/classifier.wasm \
    .deps/models/mlp.onnx .deps/models/magika.onnx; do
    [[ -f $f ]] || need_setup=1
done
if ((need_setup)); then
    log "agents or models missing: running scripts/setup.sh"
    scripts/setup.sh >&2
fi
X86_ORT="$(scripts/fetch-onnxruntime.sh)"

# --- 2. builds ----------------------------------------------------------------

if ((BUILD)); then
    log "x86_64 build (target/release)"
    cargo build --release --locked -p lockstep-supervisor -p lockstep-worker \
        -p lockstep-inference-host >&2
    log "aarch64 cross build (target/cross; the first one builds std and every dependency: many minutes)"
    t0=$(now_ms)
    env -u RUSTC -u RUSTDOC -u RUSTFLAGS -u CARGO_BUILD_TARGET PATH="/usr/bin:$PATH" \
        RUSTC_BOOTSTRAP=1 \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
        AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
        cargo build --release --locked --target "$TRIPLE" -Zbuild-std=std,panic_abort \
        --target-dir "$CROSS_DIR" \
        -p lockstep-supervisor -p lockstep-worker -p lockstep-inference-host >&2
    log "aarch64 build took $((($(now_ms) - t0) / 1000)) s"
fi
for b in lockstep lockstep-worker lockstep-inference-host; do
    [[ -x $X86_BIN/$b ]] || die "missing $X86_BIN/$b (run without --no-build)"
    [[ -x $ARM_BIN/$b ]] || die "missing $ARM_BIN/$b (run without --no-build)"
done

# --- 3. ONNX Runtime for aarch64 ------------------------------------------------

if [[ ! -f $ARM_ORT || $(sha "$ARM_ORT") != "$ARM_LIB_SHA256" ]]; then
    # shellcheck source=lib/pinned-wheel.sh
    . "$ROOT/scripts/lib/pinned-wheel.sh"
    pinned_wheel_member "$ARM_WHEEL" "$ARM_WHEEL_SHA256" "$ARM_LIB_MEMBER" "$ARM_LIB_SHA256" \
        "$ARM_ORT" 0644 -- --platform manylinux_2_28_aarch64 --python-version 3.11 \
        --implementation cp --abi cp311 "onnxruntime==${ORT_VERSION}" ||
        die "could not install $ARM_ORT"
    log "installed $ARM_ORT"
fi

# --- 4. the two runs ----------------------------------------------------------

rm -rf "$WORK"
mkdir -p "$WORK/bin"
# The supervisor starts its children with execve and an environment of its
# own (supervisor/src/jail.rs, PASSED_ENV): no PATH, no QEMU_* variables.
# These wrappers (run by the host's /bin/sh) bring the emulator along.
for b in lockstep-worker lockstep-inference-host; do
    cat >"$WORK/bin/$b" <<EOF
#!/bin/sh
exec "$QEMU" -cpu "$QEMU_CPU" -L "$SYSROOT" "$ARM_BIN/$b" "\$@"
EOF
    chmod +x "$WORK/bin/$b"
done

# ONNX Runtime reads the CPU's model (MIDR) from /proc/cpuinfo through
# the cpuinfo library.  qemu-user 7.2 (Debian 12) shows an aarch64 guest the
# host's x86_64 file, in which cpuinfo finds no Arm core, and ORT crashes on
# a null pointer while creating its CPU description (SIGSEGV at start-up of
# the inference host); later qemu versions emulate the file.  So the
# aarch64 commands run in a private mount namespace in which /proc/cpuinfo
# is the file the emulated CPU would have (harmless where qemu emulates it
# anyway).  Without root or a known CPU model they run as they are.
FAKE_CPUINFO=
# MIDR fields of qemu's CPU models (target/arm/cpu64.c).
case "$QEMU_CPU" in
    neoverse-n1) midr=(0x41 0x4 0xd0c 1) feats="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs" ;;
    cortex-a76) midr=(0x41 0x4 0xd0b 1) feats="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs" ;;
    cortex-a72) midr=(0x41 0x0 0xd08 3) feats="fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid" ;;
    *) midr=() ;;
esac
if ((${#midr[@]})) && [[ $(id -u) == 0 ]] && command -v unshare >/dev/null 2>&1; then
    FAKE_CPUINFO="$WORK/cpuinfo"
    for i in $(seq 0 $(($(nproc) - 1))); do
        printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: %s\nCPU implementer\t: %s\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
            "$i" "$feats" "${midr[@]}"
    done >"$FAKE_CPUINFO"
else
    log "warning: /proc/cpuinfo left as it is (needs root, unshare(1) and LOCKSTEP_QEMU_CPU neoverse-n1, cortex-a76 or cortex-a72); ONNX Runtime crashes under qemu versions that do not emulate it"
fi

# x86_64: the native binaries with the pinned x86_64 library.
x86() {
    env LOCKSTEP_WORKER_BIN="$X86_BIN/lockstep-worker" \
        LOCKSTEP_INFERENCE_HOST_BIN="$X86_BIN/lockstep-inference-host" \
        ORT_DYLIB_PATH="$X86_ORT" "$X86_BIN/lockstep" "$@"
}
# aarch64: the cross-built binaries under qemu-user.
arm() {
    env LOCKSTEP_WORKER_BIN="$WORK/bin/lockstep-worker" \
        LOCKSTEP_INFERENCE_HOST_BIN="$WORK/bin/lockstep-inference-host" \
        ORT_DYLIB_PATH="$ARM_ORT" \
        "${ns[@]}" "$QEMU" -cpu "$QEMU_CPU" -L "$SYSROOT" "$ARM_BIN/lockstep" "$@"
}
ns=()
if [[ -n $FAKE_CPUINFO ]]; then
    # shellcheck disable=SC2016
    ns=(unshare --mount --propagation private -- sh -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "$FAKE_CPUINFO")
fi

run_one() {
    local arch=$1 dir="$WORK/$1" t0
    log "$arch: $TICKS ticks of ${MANIFEST#"$ROOT"/} (seed $SEED) into ${dir#"$ROOT"/}"
    t0=$(now_ms)
    if ! "$arch" run "$MANIFEST" --ticks "$TICKS" --seed "$SEED" --run-dir "$dir" \
        --no-sandbox --no-board --no-metrics --json >"$WORK/$arch.summary.json" 2>"$WORK/$arch.log"; then
        tail -20 "$WORK/$arch.log" >&2
        die "$arch run failed (log: ${WORK#"$ROOT"/}/$arch.log)"
    fi
    echo $(($(now_ms) - t0)) >"$WORK/$arch.wall_ms"
}
run_one x86
run_one arm

field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }

# --- 5. compare -----------------------------------------------------------------

status=0
x86_hash=$(field "$WORK/x86.summary.json" hash)
arm_hash=$(field "$WORK/arm.summary.json" hash)
x86_journal=$(digest "$WORK/x86/journal.lsj")
arm_journal=$(digest "$WORK/arm/journal.lsj")
[[ $x86_hash == "$arm_hash" ]] || status=1
if ! cmp -s "$WORK/x86/journal.lsj" "$WORK/arm/journal.lsj"; then
    status=1
    log "the journals differ; first differing entries (lockstep log):"
    x86 log "$WORK/x86" >"$WORK/x86.journal.txt" 2>/dev/null || true
    x86 log "$WORK/arm" >"$WORK/arm.journal.txt" 2>/dev/null || true
    diff "$WORK/x86.journal.txt" "$WORK/arm.journal.txt" | head -n 12 >&2 || true
fi

# The verdict's first line, else the last line of the error output.
first_line() {
    local l
    l=$(head -n 1 "$WORK/$1.txt" 2>/dev/null || true)
    [[ -n $l ]] || l=$(tail -n 1 "$WORK/$1.log" 2>/dev/null || true)
    echo "$l"
}
verify_x86_by_arm=skipped
verify_arm_by_x86=skipped
if ((VERIFY)); then
    log "verify: the x86_64 run re-executed by the aarch64 binaries"
    t0=$(now_ms)
    if LOCKSTEP_SANDBOX=off arm verify "$WORK/x86" >"$WORK/verify-x86-by-arm.txt" 2>"$WORK/verify-x86-by-arm.log"; then
        verify_x86_by_arm="$(tail -1 "$WORK/verify-x86-by-arm.txt")"
    else
        verify_x86_by_arm="FAILED: $(first_line verify-x86-by-arm) (${WORK#"$ROOT"/}/verify-x86-by-arm.*)"
        status=1
    fi
    echo $(($(now_ms) - t0)) >"$WORK/verify-x86-by-arm.wall_ms"
    log "verify: the aarch64 run re-executed by the x86_64 binaries"
    t0=$(now_ms)
    if x86 verify "$WORK/arm" >"$WORK/verify-arm-by-x86.txt" 2>"$WORK/verify-arm-by-x86.log"; then
        verify_arm_by_x86="$(tail -1 "$WORK/verify-arm-by-x86.txt")"
    else
        verify_arm_by_x86="FAILED: $(first_line verify-arm-by-x86) (${WORK#"$ROOT"/}/verify-arm-by-x86.*)"
        status=1
    fi
    echo $(($(now_ms) - t0)) >"$WORK/verify-arm-by-x86.wall_ms"
fi

# --- 6. report ------------------------------------------------------------------

secs() { awk -v ms="$(cat "$1")" 'BEGIN { printf "%.1f s", ms / 1000 }'; }
vsecs() { [[ -f $WORK/$1.wall_ms ]] && echo "  ($(secs "$WORK/$1.wall_ms"))" || true; }
verdict=EQUAL
((status == 0)) || verdict=DIFFERENT
cat <<EOF
cross-arch-check: ${MANIFEST#"$ROOT"/}, seed $SEED, $TICKS ticks, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')
  x86_64  (native)                  hash $x86_hash  journal $x86_journal  wall $(secs "$WORK/x86.wall_ms")
  aarch64 (qemu-user, $QEMU_CPU)  hash $arm_hash  journal $arm_journal  wall $(secs "$WORK/arm.wall_ms")
  verify x86_64 run on aarch64:  $verify_x86_by_arm$(vsecs verify-x86-by-arm)
  verify aarch64 run on x86_64:  $verify_arm_by_x86$(vsecs verify-arm-by-x86)
$verdict
EOF
exit "$status"
