#!/usr/bin/env bash
# Generates the inference host's test/demo models into .deps/models/ with
# scripts/gen-models.py, using a pinned `onnx` in a venv under .deps/pyenv
# (created on first use from PyPI).  Deterministic: the output bytes are the
# same on every run, and are checked against the pinned SHA256SUMS below.
#
# It also fetches one real model: Google's Magika file-type classifier
# (model `standard_v3_3`: "bytes" i32[N,2048] -> "target_label" f32[N,214]),
# out of the `magika` wheel on PyPI, both hashes pinned, kept as
# magika.upstream.onnx; magika.onnx is that model rewritten by
# scripts/onnx-portable.py (the same answers on x86_64 and aarch64), its
# bytes pinned too.
#
#   scripts/gen-models.sh     # -> .deps/models/{mlp,mlp_v2,mlp_fixed,broken,magika}.onnx
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$repo/.deps/pyenv
out=${1:-$repo/.deps/models}

# Everything the generator imports, pinned (protobuf serialises the models).
PINS=(onnx==1.20.1 protobuf==7.36.2 numpy==2.4.6 ml_dtypes==0.6.0 typing_extensions==4.16.0)

if ! "$venv/bin/python" -c 'import onnx' 2>/dev/null; then
    echo "gen-models: creating $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --only-binary=:all: "${PINS[@]}" >&2
fi

"$venv/bin/python" "$repo/scripts/gen-models.py" "$out"

# Expected bytes (update deliberately when the generator changes).
EXPECTED_SUMS='72a6a1938ea672051c4fec34df9bf07ce6a8a034f75d2fea6f7ad994050f9c79  broken.onnx
966b12aa72939ab5dea4b43230c393b79075034e6090186f80ad15ec68c3418c  mlp.onnx
9cc2b0b5ef4d69304fdfdeb3c554c17923c0a43b8467aaf77d2c05ffe6586f52  mlp_fixed.onnx
755ebc0abd017139260623a9b7373a34631f4a043598d88c7ab76afdff1f4618  mlp_v2.onnx'
if ! diff "$out/SHA256SUMS" <(printf '%s\n' "$EXPECTED_SUMS") >&2; then
    echo "gen-models: generated models differ from the pinned SHA-256 values" >&2
    exit 1
fi
echo "gen-models: models in $out match the pinned SHA-256 values" >&2

# The real model: pinned wheel, pinned model bytes; skipped when present.
MAGIKA_WHEEL=magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl
MAGIKA_WHEEL_SHA256=3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529
MAGIKA_MEMBER=magika/models/standard_v3_3/model.onnx
MAGIKA_SHA256=fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c
MAGIKA_CONFIG_MEMBER=magika/models/standard_v3_3/config.min.json
MAGIKA_CONFIG_SHA256=ae24c742205358f6ff6dfd5facb6743fb69743dbba8373e73da58ff0cbd695db
MAGIKA_PORTABLE_SHA256=d42cdc0c43185baf4dc14a6a9ca8bc9dd7bddd75e441afad39da623a358bbf86
magika=$out/magika.upstream.onnx
portable=$out/magika.onnx
magika_config=$out/magika.config.json
have() { [[ -f $1 && $(sha256sum "$1" | cut -d' ' -f1) == "$2" ]]; }
# A directory from before the rewrite holds the upstream bytes as magika.onnx.
if ! have "$magika" "$MAGIKA_SHA256" && have "$portable" "$MAGIKA_SHA256"; then
    mv -f "$portable" "$magika"
fi
if have "$magika" "$MAGIKA_SHA256" && have "$magika_config" "$MAGIKA_CONFIG_SHA256"; then
    echo "gen-models: $magika already present" >&2
else
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    echo "gen-models: downloading $MAGIKA_WHEEL from PyPI" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --python-version 3.11 \
        magika==1.0.3 -d "$tmp" >&2
    got=$(sha256sum "$tmp/$MAGIKA_WHEEL" | cut -d' ' -f1)
    if [[ $got != "$MAGIKA_WHEEL_SHA256" ]]; then
        echo "gen-models: SHA-256 mismatch for $MAGIKA_WHEEL: got $got" >&2
        exit 1
    fi
    extract() {
        python3 -c 'import sys, zipfile; open(sys.argv[3], "wb").write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
            "$tmp/$MAGIKA_WHEEL" "$1" "$tmp/member"
        got=$(sha256sum "$tmp/member" | cut -d' ' -f1)
        if [[ $got != "$2" ]]; then
            echo "gen-models: SHA-256 mismatch for $1: got $got" >&2
            exit 1
        fi
        mv -f "$tmp/member" "$3"
        echo "$3"
    }
    extract "$MAGIKA_MEMBER" "$MAGIKA_SHA256" "$magika"
    extract "$MAGIKA_CONFIG_MEMBER" "$MAGIKA_CONFIG_SHA256" "$magika_config"
fi

# The portable rewrite (ARCHITECTURE.md, "Portability"): derived bytes,
# pinned like the rest.
if ! have "$portable" "$MAGIKA_PORTABLE_SHA256"; then
    "$venv/bin/python" "$repo/scripts/onnx-portable.py" "$magika" "$portable.tmp"
    got=$(sha256sum "$portable.tmp" | cut -d' ' -f1)
    if [[ $got != "$MAGIKA_PORTABLE_SHA256" ]]; then
        rm -f "$portable.tmp"
        echo "gen-models: SHA-256 mismatch for the portable Magika model: got $got" >&2
        exit 1
    fi
    mv -f "$portable.tmp" "$portable"
fi
echo "gen-models: $portable (portable rewrite) matches its pinned SHA-256" >&2
