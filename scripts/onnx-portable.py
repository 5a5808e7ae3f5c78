#!/usr/bin/env python3
"""Rewrites an ONNX model so that ONNX Runtime's CPU kernels give the same
bits on every architecture (ARCHITECTURE.md, "Portability").

ONNX Runtime's CPU kernels for two operators round differently by
architecture: `Reciprocal` is not a correctly rounded division on aarch64,
and `ReduceSum` / `ReduceMean` sum in an order that follows the vector
width of the build.  This script replaces them with operators whose every
element is one correctly rounded IEEE operation, in an order fixed by the
graph itself:

* `Reciprocal(x)`                  -> `Div(1, x)`
* `ReduceSum(x, axes)`             -> for each reduced axis of size K, a
  pairwise tree: `Add(x[0:h], x[h:2h])` (h = K // 2), the odd element
  appended with `Concat`, repeated until one is left; then `Squeeze` when
  `keepdims = 0`
* `ReduceMean(x, axes)`            -> the tree above, then `Div` by the
  element count

Every reduced axis must have a static size (after shape inference with the
batch dimension left free); a node that does not is left as it is and
named on stderr, and the script exits with status 3, so that a model is
never silently half-portable.  Everything else in the graph (initializers,
names of inputs and outputs, opsets, metadata) is kept; the output bytes
depend only on the input bytes and this script.

    onnx-portable.py IN.onnx OUT.onnx
"""

import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference


class Rewriter:
    def __init__(self, model):
        self.model = model
        self.graph = model.graph
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0
        )
        if self.opset < 13:
            raise SystemExit(
                f"onnx-portable: opset {self.opset} is older than 13 (Slice/Squeeze inputs); not supported"
            )
        self.counter = 0
        self.consts = {}
        self.inits = {i.name: i for i in self.graph.initializer}
        inferred = shape_inference.infer_shapes(model, data_prop=True)
        self.types = {}
        for v in (
            list(inferred.graph.value_info)
            + list(inferred.graph.input)
            + list(inferred.graph.output)
        ):
            self.types[v.name] = v.type.tensor_type
        for name, init in self.inits.items():
            self.types.setdefault(name, None)

    def fresh(self, stem):
        self.counter += 1
        return f"portable__{stem}__{self.counter}"

    def const(self, values, dtype):
        key = (tuple(np.asarray(values).ravel().tolist()), np.dtype(dtype).str)
        if key not in self.consts:
            name = self.fresh("const")
            arr = np.asarray(values, dtype=dtype)
            self.graph.initializer.append(numpy_helper.from_array(arr, name))
            self.consts[key] = name
        return self.consts[key]

    def shape_of(self, name):
        t = self.types.get(name)
        if t is None or not t.HasField("shape"):
            return None, None
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        return dims, t.elem_type

    def axes_of(self, node):
        for a in node.attribute:
            if a.name == "axes":
                return list(a.ints)
        if len(node.input) > 1 and node.input[1]:
            init = self.inits.get(node.input[1])
            if init is None:
                return "dynamic"
            return [int(v) for v in numpy_helper.to_array(init).ravel()]
        return None

    def attr(self, node, name, default):
        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def slice(self, out, x, axis, start, end):
        starts = self.const([start], np.int64)
        ends = self.const([end], np.int64)
        axes = self.const([axis], np.int64)
        return helper.make_node("Slice", [x, starts, ends, axes], [out], name=out)

    def tree_sum(self, x, axis, size, stem):
        """Nodes summing `x` along `axis` (static `size`) to size 1, pairwise."""
        nodes = []
        cur, m = x, size
        while m > 1:
            h = m // 2
            lo, hi, s = self.fresh(stem + "_lo"), self.fresh(stem + "_hi"), self.fresh(stem + "_add")
            nodes.append(self.slice(lo, cur, axis, 0, h))
            nodes.append(self.slice(hi, cur, axis, h, 2 * h))
            nodes.append(helper.make_node("Add", [lo, hi], [s], name=s))
            if m % 2:
                rest, cat = self.fresh(stem + "_odd"), self.fresh(stem + "_cat")
                nodes.append(self.slice(rest, cur, axis, 2 * h, m))
                nodes.append(helper.make_node("Concat", [s, rest], [cat], name=cat, axis=axis))
                s = cat
            cur, m = s, h + m % 2
        return nodes, cur

    def rewrite_reduce(self, node):
        dims, elem = self.shape_of(node.input[0])
        axes = self.axes_of(node)
        if dims is None or axes == "dynamic":
            return None, "input shape or axes unknown"
        rank = len(dims)
        if axes is None or axes == []:
            if node.op_type == "ReduceSum" and self.attr(node, "noop_with_empty_axes", 0):
                return [helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)], None
            axes = list(range(rank))
        axes = sorted({a % rank for a in axes})
        if any(dims[a] is None for a in axes):
            return None, f"reduced axis of unknown size (shape {dims}, axes {axes})"
        stem = node.op_type.lower()
        nodes, cur, count = [], node.input[0], 1
        for a in axes:
            more, cur = self.tree_sum(cur, a, dims[a], stem)
            nodes += more
            count *= dims[a]
        if node.op_type == "ReduceMean":
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
            div = self.fresh(stem + "_mean")
            nodes.append(helper.make_node("Div", [cur, self.const(count, dtype)], [div], name=div))
            cur = div
        if self.attr(node, "keepdims", 1):
            nodes.append(helper.make_node("Identity", [cur], [node.output[0]], name=node.name))
        else:
            nodes.append(
                helper.make_node(
                    "Squeeze", [cur, self.const(axes, np.int64)], [node.output[0]], name=node.name
                )
            )
        return nodes, None

    def rewrite_reciprocal(self, node):
        _, elem = self.shape_of(node.input[0])
        if elem is None:
            return None, "input type unknown"
        one = self.const(1, onnx.helper.tensor_dtype_to_np_dtype(elem))
        return [helper.make_node("Div", [one, node.input[0]], [node.output[0]], name=node.name)], None

    def run(self):
        out, left = [], []
        rewritten = 0
        for node in self.graph.node:
            if node.domain not in ("", "ai.onnx"):
                out.append(node)
                continue
            if node.op_type == "Reciprocal":
                nodes, why = self.rewrite_reciprocal(node)
            elif node.op_type in ("ReduceSum", "ReduceMean"):
                nodes, why = self.rewrite_reduce(node)
            else:
                out.append(node)
                continue
            if nodes is None:
                left.append(f"{node.op_type} {node.name!r}: {why}")
                out.append(node)
            else:
                out += nodes
                rewritten += 1
        del self.graph.node[:]
        self.graph.node.extend(out)
        return rewritten, left


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: onnx-portable.py IN.onnx OUT.onnx")
    model = onnx.load(sys.argv[1])
    rw = Rewriter(model)
    rewritten, left = rw.run()
    onnx.checker.check_model(model)
    onnx.save(model, sys.argv[2])
    print(f"onnx-portable: {sys.argv[2]}: {rewritten} node(s) rewritten", file=sys.stderr)
    for line in left:
        print(f"onnx-portable: left as it is: {line}", file=sys.stderr)
    if left:
        sys.exit(3)


if __name__ == "__main__":
    main()
