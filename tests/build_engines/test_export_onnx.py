"""ONNX export: the graph reproduces PyTorch and the official fixture in ONNX Runtime, dynamic batch."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from build_engines.export_onnx import ONNX_INPUT, ONNX_OUTPUT, ExportError, export_onnx, main, verify_onnx
from tests.utils_model import FIXTURE_DIR, make_tiny_checkpoint, tiny_model
from training.convert import import_checkpoint
from training.modeling.checkpoint import load_checkpoint
from training.modeling.model import ATTENTION_TYPES


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run([ONNX_OUTPUT], {ONNX_INPUT: x})[0]


def test_official_fixture_through_convert_and_onnx(tmp_path: Path) -> None:
    """Official code's checkpoint -> convert -> native -> ONNX -> ONNX Runtime == the official logits."""
    ckpt = import_checkpoint(FIXTURE_DIR / "checkpoint.pyth", num_heads=3)
    onnx_path = export_onnx(ckpt, tmp_path / "fixture.onnx")
    x = np.load(FIXTURE_DIR / "input.npy")
    np.testing.assert_allclose(_run(onnx_path, x), np.load(FIXTURE_DIR / "logits.npy"), atol=1e-4, rtol=0)
    graph = onnx.load(str(onnx_path)).graph
    (inp,), (out,) = graph.input, graph.output
    assert (inp.name, out.name) == ("frames", "logits")
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims[1:] == [3, 4, 32, 32] and isinstance(dims[0], str)  # dynamic batch, static T/H/W
    ops = Counter(n.op_type for n in graph.node)
    # Plain attention, constant-folded: no fused-attention op, only the shape ops of the batch axis.
    assert ops["Softmax"] == 4 and ops["Shape"] <= 3 and not any("Attention" in op for op in ops), ops


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_every_attention_type_exports_with_dynamic_batch(tmp_path: Path, attention_type: str) -> None:
    ckpt_path = make_tiny_checkpoint(tmp_path / "m.pt", attention_type=attention_type, seed=2)
    onnx_path = export_onnx(ckpt_path, tmp_path / "m.onnx")
    model = load_checkpoint(ckpt_path).build_model()
    for batch in (1, 3):
        x = torch.randn(batch, 3, 4, 32, 32, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            ref = model(x).numpy()
        np.testing.assert_allclose(_run(onnx_path, x.numpy()), ref, atol=1e-4, rtol=0)


def test_verification_fails_loudly_on_a_wrong_graph(tmp_path: Path) -> None:
    ckpt_path = make_tiny_checkpoint(tmp_path / "m.pt")
    onnx_path = export_onnx(ckpt_path, tmp_path / "m.onnx", verify=False)
    other = tiny_model(seed=9)  # same shapes, other weights
    with pytest.raises(ExportError, match="differ from PyTorch"):
        verify_onnx(other, onnx_path, (3, 4, 32, 32))


def test_cli(tmp_path: Path, capsys) -> None:
    ckpt_path = make_tiny_checkpoint(tmp_path / "m.pt", attention_type="space_only")
    assert main(["--checkpoint", str(ckpt_path), "-o", str(tmp_path / "m.onnx")]) == 0
    assert "matches PyTorch" in capsys.readouterr().out and (tmp_path / "m.onnx").stat().st_size > 0
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(bad), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1 and not (tmp_path / "x.onnx").exists()
