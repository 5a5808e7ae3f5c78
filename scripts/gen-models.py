#!/usr/bin/env python3
"""Generates the test/demo ONNX models of lockstep-inference-host.

Run through scripts/gen-models.sh (which provides a pinned `onnx` in a venv
under .deps/pyenv), or directly with any Python that has `onnx`:

    python3 scripts/gen-models.py [OUT_DIR]      # default: <repo>/.deps/models

Writes, deterministically (same bytes on every run; a SHA256SUMS file lists
them):

* ``mlp.onnx``       - fp32 MLP: "input" f32[N,16] (dynamic batch N) -> Gemm
                        16x64 -> Relu -> Gemm 64x4 -> "output" f32[N,4];
                        weights from a fixed seed (version "v1").
* ``mlp_v2.onnx``    - the same graph with different weights (version "v2",
                        for versioned-swap tests).
* ``mlp_fixed.onnx`` - the v1 weights with a *fixed* batch of 1
                        ("input" f32[1,16]): requests for it cannot be
                        concatenated and run one at a time.
* ``broken.onnx``    - not a model at all (deliberately unparsable).

Weights come from our own splitmix64 stream mapped exactly onto f32 values
(no numpy RNG), so they do not depend on the numpy version.
"""

import hashlib
import os
import struct
import sys

import onnx
from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 8
IN_DIM, HIDDEN, OUT_DIM = 16, 64, 4

MASK64 = (1 << 64) - 1


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


def weights(seed, count, scale):
    """`count` f32 values in [-scale, scale), exactly representable."""
    state = seed
    out = []
    for _ in range(count):
        state, z = splitmix64(state)
        # 24 random bits -> k / 2^23 - 1 in [-1, 1), exact in f32.
        unit = (z >> 40) / float(1 << 23) - 1.0
        out.append(unit * scale)  # scale is a power of two: still exact
    return struct.pack("<%df" % count, *out)


def tensor(name, dims, raw):
    return helper.make_tensor(name, TensorProto.FLOAT, dims, vals=raw, raw=True)


def mlp(seed, version, batch="N"):
    w1 = tensor("w1", [IN_DIM, HIDDEN], weights(seed, IN_DIM * HIDDEN, 0.5))
    b1 = tensor("b1", [HIDDEN], weights(seed + 1, HIDDEN, 0.125))
    w2 = tensor("w2", [HIDDEN, OUT_DIM], weights(seed + 2, HIDDEN * OUT_DIM, 0.25))
    b2 = tensor("b2", [OUT_DIM], weights(seed + 3, OUT_DIM, 0.125))
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["h_relu"], name="relu"),
        helper.make_node("Gemm", ["h_relu", "w2", "b2"], ["output"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "lockstep_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, IN_DIM])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, OUT_DIM])],
        initializer=[w1, b1, w2, b2],
    )
    model = helper.make_model(
        graph,
        producer_name="lockstep-gen-models",
        producer_version="1",
        opset_imports=[helper.make_opsetid("", OPSET)],
    )
    model.ir_version = IR_VERSION
    model.model_version = version
    helper.set_model_props(model, {"lockstep.version": "v%d" % version})
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


BROKEN = (
    b"this is not an ONNX model: lockstep-inference-host must refuse it "
    b"with a typed error instead of crashing\n" + bytes(range(256))
)


def main():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(repo, ".deps", "models")
    os.makedirs(out_dir, exist_ok=True)
    files = {
        "mlp.onnx": mlp(0x10C5_7E9, 1),
        "mlp_v2.onnx": mlp(0x20C5_7E9, 2),
        "mlp_fixed.onnx": mlp(0x10C5_7E9, 1, batch=1),
        "broken.onnx": BROKEN,
    }
    sums = []
    for name, data in sorted(files.items()):
        path = os.path.join(out_dir, name)
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        sums.append("%s  %s\n" % (hashlib.sha256(data).hexdigest(), name))
        print(path)
    with open(os.path.join(out_dir, "SHA256SUMS"), "w") as f:
        f.writelines(sums)


if __name__ == "__main__":
    main()
