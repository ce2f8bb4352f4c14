"""FP16 for strongly typed TensorRT comes from the ONNX graph: the mixed-precision serving graph keeps
LayerNorm, softmax and the attention logits in FP32 and matches the FP32 graph in ONNX Runtime (CPU).

Stated tolerance: top-1 equal on every video, max probability difference < 2e-3 (measured on the tiny
model with trained-like logits: about 1e-4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from build_engines.export_onnx import export_onnx
from build_engines.mixed_precision import compare_precision, convert_to_mixed_fp16, precision_summary
from build_engines.tensorrt import CUDART_NAMES, strongly_typed_only
from tests.utils_model import make_tiny_checkpoint
from training.modeling.checkpoint import load_checkpoint
from training.modeling.model import Attention


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("mp")
    ckpt = make_tiny_checkpoint(d / "t.pt", num_classes=5, num_frames=4, img_size=32, labels=list("abcde"))
    fp32 = export_onnx(load_checkpoint(ckpt), d / "model.onnx", graph="serving")
    return fp32, convert_to_mixed_fp16(fp32, d / "model.fp16.onnx")


def test_mixed_graph_matches_fp32_in_onnx_runtime(graphs) -> None:
    fp32, mixed = graphs
    x = np.random.default_rng(0).normal(0.5, 0.5, size=(6, 3, 3, 4, 32, 32)).astype(np.float32)
    r = compare_precision(fp32, mixed, x)
    assert r["top1_agree"] == 1.0
    assert r["max_abs_diff"] < 2e-3, r
    print(f"mixed vs fp32: max prob diff {r['max_abs_diff']:.2e}")


def test_mixed_graph_is_mostly_fp16_with_fp32_where_vit_needs_it(graphs) -> None:
    _, mixed = graphs
    summary = precision_summary(mixed)
    assert summary["fp16"] > 3 * summary["fp32"] > 0, summary
    model = onnx.shape_inference.infer_shapes(onnx.load(str(mixed)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.output]}
    types.update({i.name: i.type.tensor_type.elem_type for i in model.graph.input})
    kept = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert kept
    for n in kept:  # computed in FP32: FP32 in, FP32 out
        assert types[n.input[0]] == onnx.TensorProto.FLOAT and types[n.output[0]] == onnx.TensorProto.FLOAT
    producers = {o: n for n in model.graph.node for o in n.output}
    logits = [producers[n.input[0]] for n in kept if n.op_type == "Softmax"]
    assert any(p.op_type == "MatMul" and types[p.output[0]] == onnx.TensorProto.FLOAT for p in logits)
    # Graph boundary unchanged: FP32 VIEWS in, FP32 PROBS out (the Triton config stays as it is).
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.FLOAT]


def test_attention_logits_cannot_overflow_in_fp16() -> None:
    """q is scaled before q k^T: with |q.k| = 64 * 40 * 40 = 102400 > 65504 (FP16 max), the unscaled
    product would be inf and softmax NaN; scaled (1/8) it is 12800."""
    attn = Attention(dim=128, num_heads=2, fused_attn=False).eval()
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.bias.fill_(40.0)  # every q and k element 40
    x = torch.zeros(1, 3, 128)
    with torch.no_grad():
        out = attn.half()(x.half())
    assert torch.isfinite(out).all()


def test_tensorrt_builder_picks_its_path_by_feature_and_finds_cuda_13() -> None:
    class Trt10:
        class BuilderFlag:
            FP16 = 1

    class Trt11:
        class BuilderFlag:
            TF32 = 2

    assert not strongly_typed_only(Trt10) and strongly_typed_only(Trt11)
    assert CUDART_NAMES[0] == "libcudart.so.13" and "libcudart.so.12" in CUDART_NAMES
