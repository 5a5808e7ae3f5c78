#!/usr/bin/env bash
# Builds every example agent (Rust crates under agents/examples/, C files under
# agents/c/, TypeScript files under agents/ts/examples/) into
# target/agents/<name>.wasm (c_<name>, ts_<name>) and checks that each module
# speaks agent ABI v1.0: imports only from module "lockstep" with the
# documented signatures, exports the required functions and a non-shared
# memory.
#
#   scripts/build-agents.sh            # build + verify everything
#   scripts/build-agents.sh --no-c     # skip the C agents
#   scripts/build-agents.sh --no-ts    # skip the TypeScript agents
#
# Toolchain: a rustup toolchain with the wasm32-unknown-unknown target if one
# is installed (plain `cargo build --target wasm32-unknown-unknown`);
# otherwise Debian's rustc-web/cargo-web with rust-web-src, building core and
# alloc from source (-Zbuild-std).  C agents need clang and wasm-ld (lld).
# TypeScript agents need Node.js and npm (scripts/build-ts-agents.sh; without
# them they are skipped with a message).  Rust outputs go to
# target/agents-build (a separate target dir); re-running with nothing
# changed is quick and leaves target/agents/* untouched.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
AGENTS="$ROOT/agents"
OUT="$ROOT/target/agents"
BUILD="$ROOT/target/agents-build"
TARGET=wasm32-unknown-unknown
BUILD_C=1
BUILD_TS=1

for arg in "$@"; do
    case "$arg" in
        --no-c) BUILD_C=0 ;;
        --no-ts) BUILD_TS=0 ;;
        -h | --help)
            sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "build-agents: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

log() { echo "build-agents: $*" >&2; }

# --- toolchain selection ----------------------------------------------------

MODE=debian
if command -v rustup >/dev/null 2>&1 &&
    (cd "$AGENTS" && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"); then
    MODE=rustup
fi

missing=()
if [[ $MODE == debian ]]; then
    [[ -x /usr/bin/cargo && -x /usr/bin/rustc ]] || missing+=(rustc-web cargo-web)
    [[ -d /usr/lib/rustlib/src/rust/library/core ]] || missing+=(rust-web-src)
    [[ -e /usr/bin/rust-lld ]] || missing+=(lld-22)
fi
if [[ $BUILD_C == 1 ]]; then
    command -v clang >/dev/null 2>&1 || missing+=(clang)
    command -v wasm-ld >/dev/null 2>&1 || missing+=(lld)
fi
if ((${#missing[@]})); then
    if [[ $MODE == debian ]]; then
        # Install the whole verified set so versions match each other.
        pkgs=(rustc-web cargo-web rust-web-src lld-22 clang lld)
        [[ $BUILD_C == 1 ]] || pkgs=(rustc-web cargo-web rust-web-src lld-22)
    else
        pkgs=(clang lld)
    fi
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing ${pkgs[*]} (missing: ${missing[*]})"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y "${pkgs[@]}" >&2 ||
            { apt-get update >&2 && apt-get install -y "${pkgs[@]}" >&2; }
    else
        log "missing tools (${missing[*]}). Install them with:"
        echo "    sudo apt-get install -y ${pkgs[*]}" >&2
        if [[ $MODE == debian ]]; then
            log "or use rustup: rustup target add $TARGET"
        fi
        exit 1
    fi
fi

# --- Rust agents --------------------------------------------------------------

mkdir -p "$OUT" "$BUILD"

if [[ $MODE == rustup ]]; then
    log "Rust: rustup toolchain with $TARGET ($(cd "$AGENTS" && rustc --version))"
    (cd "$AGENTS" && cargo build --release --target "$TARGET" --target-dir "$BUILD")
else
    log "Rust: Debian toolchain, -Zbuild-std ($(/usr/bin/rustc --version))"
    # cargo must run inside agents/ so agents/.cargo/config.toml applies.
    (cd "$AGENTS" && env -u RUSTC -u RUSTDOC PATH="/usr/bin:$PATH" RUSTC_BOOTSTRAP=1 \
        cargo build --release --target "$TARGET" -Zbuild-std=core,alloc --target-dir "$BUILD")
fi

names=()
for dir in "$AGENTS"/examples/*/; do
    name="$(basename "$dir")"
    src="$BUILD/$TARGET/release/$name.wasm"
    if [[ ! -f $src ]]; then
        log "expected $src after the build"
        exit 1
    fi
    # Copy only when changed, so up-to-date outputs keep their mtime.
    cmp -s "$src" "$OUT/$name.wasm" || cp "$src" "$OUT/$name.wasm"
    names+=("$name")
done

# --- C agents -----------------------------------------------------------------

if [[ $BUILD_C == 1 ]]; then
    for src in "$AGENTS"/c/*.c; do
        [[ -e $src ]] || continue
        name="c_$(basename "${src%.c}")"
        out="$OUT/$name.wasm"
        if [[ ! -f $out || $src -nt $out || $AGENTS/c/lockstep_agent.h -nt $out ||
            ${BASH_SOURCE[0]} -nt $out ]]; then
            log "C: $src -> $out"
            clang --target=wasm32 -std=c11 -O2 -ffreestanding -nostdlib \
                -Wall -Wextra -Werror -I"$AGENTS/c" \
                -Wl,--no-entry -Wl,-z,stack-size=65536 -Wl,--strip-all \
                -o "$out.tmp" "$src"
            mv "$out.tmp" "$out"
        fi
        names+=("$name")
    done
fi

# --- TypeScript agents --------------------------------------------------------

if [[ $BUILD_TS == 1 ]]; then
    ts_status=0
    "$ROOT/scripts/build-ts-agents.sh" || ts_status=$?
    if [[ $ts_status == 3 ]]; then
        log "skipping the TypeScript agents (no Node.js/npm; see above)"
    elif [[ $ts_status != 0 ]]; then
        log "building the TypeScript agents failed"
        exit "$ts_status"
    else
        for src in "$AGENTS"/ts/examples/*.ts; do
            [[ -e $src ]] || continue
            names+=("ts_$(basename "${src%.ts}")")
        done
    fi
fi

# --- verification -------------------------------------------------------------

PY="$(command -v python3 || true)"
if [[ -z $PY ]]; then
    log "python3 not found: skipping the import/export check"
    for name in "${names[@]}"; do ls -la "$OUT/$name.wasm"; done
    exit 0
fi

files=()
for name in "${names[@]}"; do files+=("$OUT/$name.wasm"); done

"$PY" - "${files[@]}" <<'PY'
"""Checks agent modules against docs/abi.md (v1.0) and prints one line each."""
import os
import sys

I32, I64 = 0x7F, 0x7E
IMPORTS = {
    "send": ((I64, I32, I32), (I32,)),
    "publish": ((I32, I32, I32, I32), (I32,)),
    "subscribe": ((I32, I32), (I32,)),
    "unsubscribe": ((I32, I32), (I32,)),
    "join_channel": ((I32, I32), (I32,)),
    "leave_channel": ((I32, I32), (I32,)),
    "channel_send": ((I32, I32, I32, I32), (I32,)),
    "schedule_task": ((I64, I32, I32, I32, I32, I32), (I64,)),
    "infer": ((I32, I32, I32, I32), (I64,)),
    "log": ((I32, I32, I32), (I32,)),
    "random": ((), (I64,)),
    "tick": ((), (I64,)),
    "agent_id": ((), (I64,)),
}
EXPORTS = {
    "agent_abi_version": ((), (I32,)),
    "agent_buffer": ((I32,), (I32,)),
    "agent_init": ((), (I32,)),
    "agent_step": ((I32,), (I32,)),
    "agent_receive": ((I32,), (I32,)),
    "agent_shutdown": ((), (I32,)),
}
OPTIONAL = {"agent_migrate": ((I32,), (I32,))}


class Reader:
    def __init__(self, data, pos=0):
        self.d, self.i = data, pos

    def byte(self):
        b = self.d[self.i]
        self.i += 1
        return b

    def uleb(self):
        result = shift = 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    def name(self):
        n = self.uleb()
        s = self.d[self.i : self.i + n].decode("utf-8")
        self.i += n
        return s

    def limits(self):
        flags = self.byte()
        lo = self.uleb()
        hi = self.uleb() if flags & 1 else None
        return flags, lo, hi


def check(path):
    data = open(path, "rb").read()
    errs = []
    if data[:8] != b"\0asm\1\0\0\0":
        return ["not a wasm v1 module"], {}
    types, imports, funcs, memories, exports = [], [], [], [], {}
    r = Reader(data, 8)
    while r.i < len(data):
        sid, size = r.byte(), r.uleb()
        end = r.i + size
        s = Reader(data[:end], r.i)
        if sid == 1:
            for _ in range(s.uleb()):
                if s.byte() != 0x60:
                    errs.append("unexpected type form")
                    break
                params = tuple(s.byte() for _ in range(s.uleb()))
                results = tuple(s.byte() for _ in range(s.uleb()))
                types.append((params, results))
        elif sid == 2:
            for _ in range(s.uleb()):
                mod, field, kind = s.name(), s.name(), s.byte()
                if kind == 0:
                    desc = s.uleb()
                elif kind == 1:
                    s.byte()
                    desc = s.limits()
                elif kind == 2:
                    desc = s.limits()
                elif kind == 3:
                    desc = (s.byte(), s.byte())
                else:
                    s.byte()
                    desc = s.uleb()
                imports.append((mod, field, kind, desc))
        elif sid == 3:
            funcs = [s.uleb() for _ in range(s.uleb())]
        elif sid == 5:
            memories = [s.limits() for _ in range(s.uleb())]
        elif sid == 7:
            for _ in range(s.uleb()):
                name, kind, idx = s.name(), s.byte(), s.uleb()
                exports[name] = (kind, idx)
        r.i = end

    func_sigs = []
    for mod, field, kind, desc in imports:
        where = f"import {mod}.{field}"
        if mod != "lockstep":
            errs.append(f"{where}: only module 'lockstep' may be imported")
        elif kind != 0:
            errs.append(f"{where}: only functions may be imported")
        elif field not in IMPORTS:
            errs.append(f"{where}: not in the ABI")
        elif types[desc] != IMPORTS[field]:
            errs.append(f"{where}: signature {types[desc]} != {IMPORTS[field]}")
        if kind == 0:
            func_sigs.append(types[desc])
    func_sigs += [types[t] for t in funcs]

    for name, sig in list(EXPORTS.items()) + list(OPTIONAL.items()):
        if name not in exports:
            if name in EXPORTS:
                errs.append(f"missing export {name}")
            continue
        kind, idx = exports[name]
        if kind != 0:
            errs.append(f"export {name} is not a function")
        elif func_sigs[idx] != sig:
            errs.append(f"export {name}: signature {func_sigs[idx]} != {sig}")
    mem = exports.get("memory")
    if mem is None or mem[0] != 2:
        errs.append("missing memory export")
    for flags, lo, hi in memories:
        if flags & 2:
            errs.append("shared memory")
        if flags & 4:
            errs.append("memory64")
    info = {
        "imports": ",".join(sorted(f for _, f, _, _ in imports)) or "-",
        "pages": memories[0][1] if memories else "?",
        "migrate": "agent_migrate" in exports,
    }
    return errs, info


failed = 0
for path in sys.argv[1:]:
    name = os.path.basename(path)
    try:
        errs, info = check(path)
    except (IndexError, UnicodeDecodeError) as e:
        errs, info = [f"malformed module ({e!r})"], {}
    size = os.path.getsize(path)
    if errs:
        failed += 1
        print(f"  {name:<18} {size:>7} bytes  FAIL: " + "; ".join(errs))
        continue
    extra = "  +agent_migrate" if info["migrate"] else ""
    print(
        f"  {name:<18} {size:>7} bytes  memory {info['pages']} pages  "
        f"imports: {info['imports']}{extra}"
    )
sys.exit(1 if failed else 0)
PY
log "${#names[@]} modules in ${OUT#"$ROOT"/}/"
