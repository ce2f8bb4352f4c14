"""FP32 ONNX graph -> mixed-precision graph (FP16 compute, FP32 where ViT needs it), for strongly typed
TensorRT (11.x removed ``BuilderFlag.FP16``: a network's precision is the one its tensors are typed with).

    python -m build_engines.mixed_precision --onnx R/classifier/model.onnx -o model.fp16.onnx

Kept in FP32 (the rest runs in FP16):

- ``LayerNormalization`` and ``Softmax`` (ViT LayerNorm and softmax overflow or lose accuracy in FP16:
  TimeSformer#33, TensorRT#1262, #2564);
- the attention logits: every ``MatMul`` whose result reaches a ``Softmax`` through element-wise ops
  only (``q k^T``, with q already scaled by the model), and those element-wise ops;
- the tail after the last compute-heavy op (bias of the head, softmax per view, mean over views), so the
  probabilities are computed in FP32.

Graph inputs and outputs stay FP32 (``VIEWS`` in, ``PROBS`` out): the Triton config does not change.
Casts are inserted wherever an FP16 tensor meets an FP32 consumer or the other way round; FP32 weights
used only by FP16 ops are stored as FP16. Every conversion is checked in ONNX Runtime against the FP32
graph by :func:`compare_precision` (also a test on the CPU).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP32_OPS = frozenset({"LayerNormalization", "Softmax"})
HEAVY_OPS = frozenset({"MatMul", "Gemm", "Conv"})
# Element-wise ops allowed between the logits MatMul and its Softmax (scale, mask/bias).
LOGIT_PATH_OPS = frozenset({"Mul", "Div", "Add", "Sub", "Where"})
# Ops whose float output type follows their float inputs (safe to run in either precision).
_F32, _F16 = TensorProto.FLOAT, TensorProto.FLOAT16


class MixedPrecisionError(ValueError):
    """The graph cannot be converted; the message says why."""


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of FP32 tensors in the graph (after shape/type inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out = {i.name for i in g.initializer if i.data_type == _F32}
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type == _F32:
            out.add(vi.name)
    for node in g.node:  # typed by their attributes, inference may not list them
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == _F32:
                    out.add(node.output[0])
    return out


def _fp32_nodes(graph: onnx.GraphProto) -> set[int]:
    """Indices of the nodes kept in FP32 (see the module docstring)."""
    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        for name in n.input:
            consumers[name].append(i)
    keep = {i for i, n in enumerate(nodes) if n.op_type in FP32_OPS}
    # Attention logits: walk back from each Softmax through element-wise ops to the MatMul that makes them.
    for n in nodes:
        if n.op_type != "Softmax":
            continue
        stack = [n.input[0]]
        while stack:
            j = producer.get(stack.pop())
            if j is None or j in keep and nodes[j].op_type != "Softmax":
                continue
            op = nodes[j].op_type
            if op == "MatMul":
                keep.add(j)
            elif op in LOGIT_PATH_OPS:
                keep.add(j)
                stack.extend(nodes[j].input)
    # The tail: nodes with no heavy op downstream (and not heavy themselves).
    reaches_heavy: dict[int, bool] = {}
    for i in reversed(range(len(nodes))):  # ONNX graphs are topologically sorted
        reaches_heavy[i] = any(
            nodes[c].op_type in HEAVY_OPS or reaches_heavy.get(c, False)
            for o in nodes[i].output
            for c in consumers.get(o, [])
        )
    for i, n in enumerate(nodes):
        if n.op_type not in HEAVY_OPS and not reaches_heavy[i]:
            keep.add(i)
    return keep


def convert_to_mixed_fp16(src: str | Path, dst: str | Path) -> Path:
    """Write the mixed-precision version of the FP32 ONNX graph ``src`` to ``dst``; returns ``dst``."""
    model = onnx.load(str(src))
    if any(i.type.tensor_type.elem_type == _F16 for i in model.graph.input):
        raise MixedPrecisionError(f"{src}: already has FP16 inputs")
    floats = _float_tensors(model)
    graph = model.graph
    keep = _fp32_nodes(graph)
    nodes = list(graph.node)
    inits = {i.name: i for i in graph.initializer}
    graph_inputs = {i.name for i in graph.input}

    # Where each float tensor lives: its producer's precision (graph inputs and FP32 weights start FP32).
    home: dict[str, int] = {name: _F32 for name in floats}
    init_users: dict[str, set[int]] = defaultdict(set)
    for i, n in enumerate(nodes):
        for name in n.input:
            if name in inits and name in floats:
                init_users[name].add(_F32 if i in keep else _F16)
    for name, wants in init_users.items():
        if wants == {_F16}:  # used only in FP16: store it as FP16
            arr = numpy_helper.to_array(inits[name]).astype(np.float16)
            inits[name].CopyFrom(numpy_helper.from_array(arr, name))
            home[name] = _F16
    for i, n in enumerate(nodes):
        prec = _F32 if i in keep else _F16
        if prec == _F16:
            if n.op_type == "Cast":
                for a in n.attribute:
                    if a.name == "to" and a.i == _F32:
                        a.i = _F16
            elif n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value" and a.t.data_type == _F32:
                        a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16)))
            elif n.op_type == "ConstantOfShape":
                for a in n.attribute:
                    if a.name == "value" and a.t.data_type == _F32:
                        a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16)))
        for o in n.output:
            if o in floats:
                home[o] = prec

    # Casts where a float tensor meets a consumer of the other precision (one cast per tensor and type).
    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            out = f"{name}__to_{'fp16' if to == _F16 else 'fp32'}"
            new_nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"cast_{len(casts)}_{out}"))
            casts[key] = out
        return casts[key]

    for i, n in enumerate(nodes):
        prec = _F32 if i in keep else _F16
        if n.op_type not in ("Shape", "Cast"):  # Shape reads no values; a Cast takes any input type
            for k, name in enumerate(n.input):
                if name and name in home and home[name] != prec:
                    n.input[k] = cast(name, prec)
        new_nodes.append(n)
    outputs = []
    for o in graph.output:
        if home.get(o.name) == _F16:  # rename the FP16 producer's output, cast back to the FP32 name
            fp16_name = f"{o.name}__fp16"
            for n in new_nodes:
                for k, name in enumerate(n.output):
                    if name == o.name:
                        n.output[k] = fp16_name
                for k, name in enumerate(n.input):
                    if name == o.name:
                        n.input[k] = fp16_name
            new_nodes.append(helper.make_node("Cast", [fp16_name], [o.name], to=_F32))
        outputs.append(o)
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]  # stale types; consumers re-infer
    assert graph_inputs == {i.name for i in graph.input}
    onnx.checker.check_model(model)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


def precision_summary(path: str | Path) -> dict[str, int]:
    """How many nodes of the graph run in FP16 vs FP32 (by their float output type) and how many casts."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*model.graph.value_info, *model.graph.output]}
    out = {"fp16": 0, "fp32": 0, "casts": 0}
    for n in model.graph.node:
        if n.op_type == "Cast":
            out["casts"] += 1
            continue
        t = types.get(n.output[0]) if n.output else None
        if t == _F16:
            out["fp16"] += 1
        elif t == _F32:
            out["fp32"] += 1
    return out


def compare_precision(fp32: str | Path, mixed: str | Path, inputs: np.ndarray) -> dict[str, float]:
    """Run both graphs in ONNX Runtime (CPU) on ``inputs``; returns the max absolute probability
    difference and the fraction of rows whose top-1 class agrees."""
    import onnxruntime as ort

    def run(path: str | Path) -> np.ndarray:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return sess.run(None, {name: inputs})[0]

    a, b = run(fp32), run(mixed)
    return {
        "max_abs_diff": float(np.abs(a - b).max()),
        "top1_agree": float((a.argmax(-1) == b.argmax(-1)).mean()),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: write the mixed-precision graph and print its precision split."""
    p = argparse.ArgumentParser(
        prog="python -m build_engines.mixed_precision", description=__doc__.split("\n")[0]
    )
    p.add_argument("--onnx", required=True, help="FP32 serving graph")
    p.add_argument("-o", "--out", required=True, help="mixed-precision graph to write")
    args = p.parse_args(argv)
    try:
        out = convert_to_mixed_fp16(args.onnx, args.out)
    except (MixedPrecisionError, onnx.checker.ValidationError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {precision_summary(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
