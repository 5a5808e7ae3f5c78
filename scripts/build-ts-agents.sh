#!/usr/bin/env bash
# Builds the TypeScript (AssemblyScript) agents, agents/ts/examples/<name>.ts,
# into target/agents/ts_<name>.wasm.  scripts/build-agents.sh runs it and
# then verifies the modules like every other agent (imports only from
# "lockstep" with the ABI's signatures, the required exports).
#
#   scripts/build-ts-agents.sh     # npm ci (when the lock file changed) + compile what is stale
#
# Needs Node.js 20 or later (what assemblyscript 0.28 requires) and npm: when
# they are missing it installs Debian's nodejs and npm if run as root, else
# (or if Debian's nodejs is older) says so and exits with status 3
# (build-agents.sh then skips the TypeScript agents).  The compiler,
# assemblyscript (pinned in agents/ts/package-lock.json), comes from the npm
# registry through `npm ci`.  Compiled modules are kept in
# target/agents-build/ts and copied to target/agents only when changed (the
# SDK's test agent, agents/ts/test/probe.ts, stays there); with nothing
# changed a re-run does no work.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TS="$ROOT/agents/ts"
OUT="$ROOT/target/agents"
BUILD="$ROOT/target/agents-build/ts"

case "${1:-}" in
    -h | --help)
        sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    "") ;;
    *)
        echo "build-ts-agents: unknown argument: $1" >&2
        exit 2
        ;;
esac

log() { echo "build-ts-agents: $*" >&2; }

node_ok() {
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 &&
        node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' 2>/dev/null
}

if ! node_ok; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing nodejs npm (Node.js 20+ and npm are needed for the TypeScript agents)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y nodejs npm >&2 ||
            { apt-get update >&2 && apt-get install -y nodejs npm >&2; } || true
    fi
    if ! node_ok; then
        log "Node.js 20+ and npm are needed to build the TypeScript agents" \
            "(found: node $(node --version 2>/dev/null || echo none), npm $(npm --version 2>/dev/null || echo none))."
        echo "    sudo apt-get install -y nodejs npm    # Debian 13 and later: Node.js 20+" >&2
        exit 3
    fi
fi

# --- the compiler -------------------------------------------------------------

# `npm ci` only when package.json or the lock file changed since the last one.
stamp="$TS/node_modules/.lockstep-ci-stamp"
want="$(cat "$TS/package.json" "$TS/package-lock.json" | cksum)"
if [[ ! -f $stamp || $(cat "$stamp") != "$want" || ! -x $TS/node_modules/.bin/asc ]]; then
    log "npm ci in agents/ts ($(node --version), npm $(npm --version))"
    (cd "$TS" && npm ci --no-audit --no-fund --loglevel=error >&2)
    echo "$want" >"$stamp"
fi

# --- compile what is stale ----------------------------------------------------

mkdir -p "$OUT" "$BUILD"
inputs=("$TS"/sdk/*.ts "$TS"/examples/*.ts "$TS"/test/*.ts "$TS/asconfig.json" "$TS/build.mjs"
    "$TS/package-lock.json" "${BASH_SOURCE[0]}")
newest="${inputs[0]}"
for f in "${inputs[@]}"; do [[ $f -nt $newest ]] && newest="$f"; done

names=()
stale=()
for src in "$TS"/examples/*.ts; do
    name="$(basename "${src%.ts}")"
    names+=("$name")
    built="$BUILD/ts_$name.wasm"
    if [[ ! -f $built || $newest -nt $built ]]; then
        stale+=("$name")
    fi
done
# The SDK's test agent (for `npm test`), kept in the build directory only.
if [[ ! -f $BUILD/ts_probe.wasm || $newest -nt $BUILD/ts_probe.wasm ]]; then
    stale+=(test/probe)
fi

if ((${#stale[@]})); then
    log "AssemblyScript $("$TS/node_modules/.bin/asc" --version | sed 's/^Version //'): ${stale[*]}"
    (cd "$TS" && node build.mjs "$BUILD" "${stale[@]}")
fi

for name in "${names[@]}"; do
    # Copy only when changed, so up-to-date outputs keep their mtime.
    cmp -s "$BUILD/ts_$name.wasm" "$OUT/ts_$name.wasm" || cp "$BUILD/ts_$name.wasm" "$OUT/ts_$name.wasm"
done
log "${#names[@]} TypeScript modules in ${OUT#"$ROOT"/}/"
