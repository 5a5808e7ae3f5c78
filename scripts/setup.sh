#!/usr/bin/env bash
# Installs what Lockstep's build, tests and demo need, idempotently:
# system packages (apt, when root), the pinned ONNX Runtime library, the
# WebAssembly agents, the test models and the text-embedding model.  Safe
# to run repeatedly.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

need_pkgs=()
command -v python3 >/dev/null || need_pkgs+=(python3 python3-pip)
command -v pkill >/dev/null || need_pkgs+=(procps)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"
    else
        echo "setup: please install: ${need_pkgs[*]}" >&2
        exit 1
    fi
fi

for step in fetch-onnxruntime.sh fetch-nats-server.sh build-agents.sh gen-models.sh fetch-minilm.sh; do
    if [ -x "scripts/$step" ]; then
        echo "== setup: $step"
        "scripts/$step"
    fi
done

# The metrics endpoint's test checks the exposition with the reference
# parser (Python's prometheus_client), in the venv gen-models.sh made.
if [ -x .deps/pyenv/bin/python ] && ! .deps/pyenv/bin/python -c 'import prometheus_client' 2>/dev/null; then
    echo "== setup: prometheus_client (OpenMetrics reference parser)"
    .deps/pyenv/bin/python -m pip install --quiet --only-binary=:all: prometheus_client==0.21.1
fi
