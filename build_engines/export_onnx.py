"""Native checkpoint -> ONNX graph (dynamic batch), checked against PyTorch with ONNX Runtime.

    python -m build_engines.export_onnx --checkpoint CKPT -o model.onnx [--graph frames|serving]
        [--opset 17] [--no-verify]

The one exporter of the project; it makes two graphs from the same model:

- ``frames`` (default): ``frames`` (B, 3, T, H, W) float32 -> ``logits`` (B, num_classes), raw;
- ``serving``: what the classifier model serves, ``VIEWS`` (B, V, 3, T, H, W) -> ``PROBS`` (B, num_classes),
  softmax per view and mean over views inside the graph (:mod:`training.modeling.views`), so ONNX Runtime
  and TensorRT return final probabilities.

T, H, W (and V) are fixed by the checkpoint's preprocessing spec, B is dynamic. The model is
built with the plain matmul+softmax attention (``fused_attn=False``), which both exporters and ONNX Runtime /
TensorRT handle best. The legacy TorchScript exporter is tried first (it constant-folds and produces a compact
graph); the dynamo exporter is the fallback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from training.modeling.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from training.modeling.views import ViewAveragedClassifier
from triton_models import contract

ONNX_INPUT = "frames"
ONNX_OUTPUT = "logits"
GRAPHS = {"frames": (ONNX_INPUT, ONNX_OUTPUT), "serving": (contract.VIEWS, contract.PROBS)}
"""Graph kind -> (input name, output name)."""
VERIFY_ATOL = 1e-4

__all__ = [
    "GRAPHS",
    "ONNX_INPUT",
    "ONNX_OUTPUT",
    "ExportError",
    "export_onnx",
    "export_model",
    "verify_onnx",
    "main",
]


class ExportError(ValueError):
    """The export failed or its graph does not reproduce PyTorch's logits."""


def _input_shape(ckpt: Checkpoint) -> tuple[int, int, int, int]:
    """(3, T, H, W) that serving feeds: the spec's frame count and crop (they match the model's unless the
    spec deliberately runs the model at another length/size, which the model supports)."""
    spec = ckpt.preprocess
    in_chans = int(ckpt.model_config.get("in_chans", 3))
    return (in_chans, spec.num_frames, spec.crop_size, spec.crop_size)


def export_model(
    model: torch.nn.Module,
    example: torch.Tensor,
    out: str | Path,
    *,
    opset: int = 17,
    verify: bool = True,
    names: tuple[str, str] = GRAPHS["frames"],
) -> Path:
    """Export any (B, ...) -> (B, K) module to ``out`` with a dynamic batch axis; ``names`` are the graph's
    (input, output) tensor names.

    ``example`` fixes T, H, W (its batch size does not matter). Raises :class:`ExportError` when both
    exporters fail, or, with ``verify``, when ONNX Runtime's logits on a random batch of 2 differ from
    PyTorch's by more than 1e-4.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    errors: list[str] = []
    with torch.no_grad():
        try:
            _export_legacy(model, example, out, opset, names)
        except Exception as exc:  # the legacy exporter may be absent or reject an op; try dynamo next
            errors.append(f"legacy exporter: {type(exc).__name__}: {exc}")
            try:
                _export_dynamo(model, example, out, opset, names)
            except Exception as exc2:
                errors.append(f"dynamo exporter: {type(exc2).__name__}: {exc2}")
                raise ExportError("ONNX export failed; " + " | ".join(errors)) from exc2
    if verify:
        verify_onnx(model, out, example.shape[1:], names=names)
    return out


def _export_legacy(
    model: torch.nn.Module, example: torch.Tensor, out: Path, opset: int, names: tuple[str, str]
) -> None:
    inp, outp = names
    with warnings.catch_warnings():
        # T/H/W are read as Python ints on purpose (static in the graph); silence the tracer's notes on that.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(out),
            dynamo=False,
            input_names=[inp],
            output_names=[outp],
            dynamic_axes={inp: {0: "batch"}, outp: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            export_params=True,
        )


def _export_dynamo(
    model: torch.nn.Module, example: torch.Tensor, out: Path, opset: int, names: tuple[str, str]
) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    example2 = example.expand(2, *example.shape[1:]).contiguous()  # batch 1 would be specialised away
    program = torch.onnx.export(
        model,
        (example2,),
        dynamo=True,
        input_names=[names[0]],
        output_names=[names[1]],
        dynamic_shapes={"x": {0: batch}},
        opset_version=opset,
        optimize=True,
        external_data=False,
    )
    program.save(str(out))


def verify_onnx(
    model: torch.nn.Module,
    onnx_path: str | Path,
    sample_shape: tuple[int, ...] | torch.Size,
    *,
    names: tuple[str, str] = GRAPHS["frames"],
) -> float:
    """Run ONNX Runtime and PyTorch on the same random batch of 2; return the max abs difference, raise
    :class:`ExportError` beyond 1e-4 or when the output shape differs."""
    from triton_models.runtime import ort_cpu_session

    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, *sample_shape), generator=gen)  # (2, 3, T, H, W) or (2, V, 3, T, H, W)
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort_cpu_session(onnx_path)
    got = sess.run([names[1]], {names[0]: x.numpy()})[0]
    if got.shape != ref.shape:
        raise ExportError(f"{onnx_path}: ONNX output shape {got.shape} != PyTorch {ref.shape}")
    diff = float(np.abs(got - ref).max())
    if not np.isfinite(diff) or diff > VERIFY_ATOL:
        raise ExportError(
            f"{onnx_path}: ONNX Runtime {names[1]} differ from PyTorch by {diff:.3g} (> {VERIFY_ATOL:g})"
        )
    return diff


def export_onnx(
    checkpoint: Checkpoint | str | Path,
    out: str | Path,
    *,
    opset: int = 17,
    verify: bool = True,
    graph: str = "frames",
) -> Path:
    """Export a native checkpoint (object or path) to ONNX at ``out`` as the ``graph`` kind of
    :data:`GRAPHS`; see the module docstring."""
    if graph not in GRAPHS:
        raise ExportError(f"unknown graph {graph!r}; expected one of {sorted(GRAPHS)}")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    # Plain attention (no SDPA) and no dropout: what the exporters and TensorRT handle best.
    model = ckpt.build_model(fused_attn=False, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0)
    shape = _input_shape(ckpt)  # (3, T, H, W)
    if graph == "serving":
        model = ViewAveragedClassifier(model, ckpt.preprocess.num_views).eval()
        shape = (ckpt.preprocess.num_views, *shape)  # (V, 3, T, H, W)
    example = torch.zeros((1, *shape))
    return export_model(model, example, out, opset=opset, verify=verify, names=GRAPHS[graph])


def main(argv: list[str] | None = None) -> int:
    """CLI entry: exit 0 on success, 2 on a bad checkpoint or a failed export/verification."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="native checkpoint (.pt)")
    parser.add_argument("-o", "--out", required=True, help="output .onnx path")
    parser.add_argument(
        "--graph", choices=sorted(GRAPHS), default="frames", help="frames->logits or VIEWS->PROBS"
    )
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check")
    args = parser.parse_args(argv)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        out = export_onnx(ckpt, args.out, opset=args.opset, verify=not args.no_verify, graph=args.graph)
    except (CheckpointError, ExportError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # always one line
        return 2
    dims = ",".join(map(str, _input_shape(ckpt)))
    if args.graph == "serving":
        dims = f"{ckpt.preprocess.num_views},{dims}"
    inp, outp = GRAPHS[args.graph]
    size_mb = out.stat().st_size / 1e6
    check = "unverified" if args.no_verify else f"matches PyTorch within {VERIFY_ATOL:g}"
    print(
        f"wrote {out} ({size_mb:.1f} MB): {inp} (B,{dims}) -> "
        f"{outp} (B,{ckpt.num_classes}), opset {args.opset}, {check}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
