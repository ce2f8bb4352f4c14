"""Native checkpoint -> a complete Triton model repository for the ``cpu`` or the ``gpu`` target.

    python -m build_engines.build --checkpoint runs/synthetic_tiny/best.pt --target cpu -o model_repository
    make build-engines CHECKPOINT=... TARGET=gpu

Frame count, crop, mean/std, label names and class count come from the checkpoint alone. Steps:

1. the serving ONNX graph: the model wrapped so that it takes one batch of videos' views
   ``VIEWS (B, V, 3, T, S, S)`` and returns ``PROBS (B, K)`` = softmax per view, mean over views -- both
   ONNX Runtime (cpu) and TensorRT (gpu) then run the post-processing inside the graph;
2. configs, labels, spec files and python models (:mod:`build_engines.repository`);
3. cpu: ``classifier/1/model.onnx``; with ``--precision int8`` that is the int8 graph
   (:mod:`build_engines.quantize`, refused below ``--min-agreement``) and the fp32 graph it was checked
   against stays at ``classifier/model_fp32.onnx``; both are named in ``serving.json``.
   gpu: ``preprocess/1/model.dali`` (the serialized ``mixed`` DALI pipeline) and
   ``classifier/1/model.plan`` -- built here only when TensorRT and a GPU are present; otherwise the ONNX
   graph is left at ``classifier/model.onnx`` with the command that builds the plan.

The repository is built in a temporary folder next to ``-o`` and swapped in at the end, so a failed build
never leaves a half-written repository behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from build_engines.quantize import (
    FP32_REFERENCE_FILE,
    QuantizeOptions,
    load_calibration,
    quantize_serving_graph,
)
from build_engines.repository import RepositoryOptions, generate_configs
from training.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from triton_models import contract
from triton_models.runtime import ServingLimits

VERIFY_ATOL = 1e-4


class BuildError(ValueError):
    """The repository could not be built; the message names the problem."""


class ViewAveragedClassifier(nn.Module):
    """The serving graph: a batch of videos' views in, view-averaged class probabilities out.

    Averaging probabilities (not logits) is what PaddleVideo and mmaction2 (``average_clips='prob'``) do;
    the result sums to one (PaddleVideo's predict tool applies a second softmax on top, we do not).
    """

    def __init__(self, model: nn.Module, num_views: int) -> None:
        super().__init__()
        self.model = model
        self.num_views = int(num_views)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        # views: (B, V, 3, T, H, W); V is static in the graph, B is dynamic.
        flat = views.reshape((-1, *views.shape[2:]))  # (B*V, 3, T, H, W)
        probs = self.model(flat).softmax(dim=-1)  # (B*V, K)
        return probs.reshape(-1, self.num_views, probs.shape[-1]).mean(dim=1)  # (B, K)


def export_serving_onnx(ckpt: Checkpoint, out: str | Path, *, opset: int = 17, verify: bool = True) -> Path:
    """Export :class:`ViewAveragedClassifier` of ``ckpt`` to ``out`` (dynamic B) and check it against PyTorch
    with ONNX Runtime on a batch of 2 videos."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = ckpt.preprocess
    # Plain attention (no SDPA) and no dropout: what the exporters and TensorRT handle best.
    model = ckpt.build_model(fused_attn=False, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0)
    wrapper = ViewAveragedClassifier(model, spec.num_views).eval()
    example = torch.zeros((2, *spec.output_shape))  # (2, V, 3, T, S, S)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about static T/H/W are expected
        torch.onnx.export(
            wrapper,
            (example,),
            str(out),
            dynamo=False,
            input_names=[contract.VIEWS],
            output_names=[contract.PROBS],
            dynamic_axes={contract.VIEWS: {0: "batch"}, contract.PROBS: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
        )
    if verify:
        from triton_models.runtime import ort_cpu_session

        gen = torch.Generator().manual_seed(0)
        x = torch.randn((2, *spec.output_shape), generator=gen)  # (2, V, 3, T, S, S)
        with torch.no_grad():
            ref = wrapper(x).numpy()
        sess = ort_cpu_session(out)  # as the classifier will run it
        got = sess.run([contract.PROBS], {contract.VIEWS: x.numpy()})[0]
        diff = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
        if not diff <= VERIFY_ATOL:
            raise BuildError(f"{out}: ONNX Runtime probabilities differ from PyTorch by {diff:.3g}")
    return out


def _serialize_dali(spec: Any, path: Path, max_batch_size: int) -> Path:
    try:
        from training.dali_pipeline import serialize_pipeline
    except ImportError as exc:
        raise BuildError(f"the DALI pipeline cannot be serialized: {exc}") from exc
    serialize_pipeline(spec, path, device="mixed", max_batch_size=max_batch_size)
    return path


def _prepare_destination(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / contract.SERVING_FILE).is_file():
        raise BuildError(f"{out}: not empty and not a generated model repository; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))


def build_repository(
    checkpoint: Checkpoint | str | Path,
    out: str | Path,
    options: RepositoryOptions | None = None,
    *,
    quantize: QuantizeOptions | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Build the repository at ``out`` and return its ``serving.json`` record (plus ``plan_built``).

    ``quantize`` sets calibration and the agreement guard of an int8 build (default: dynamic, 0.99)."""
    opts = options or RepositoryOptions()
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    out = Path(out)
    tmp = _prepare_destination(out)
    spec, labels = ckpt.preprocess, ckpt.label_names()
    plan_built = False
    quantization = None
    try:
        t0 = time.perf_counter()
        qopts = quantize or QuantizeOptions()
        calibration = load_calibration(qopts, spec, log=log) if opts.precision == "int8" else None
        generate_configs(tmp, spec, labels, opts)
        if opts.target == "cpu" and opts.precision == "int8":
            fp32_path = export_serving_onnx(ckpt, tmp / contract.CLASSIFIER / FP32_REFERENCE_FILE)
            log(f"build: fp32 serving graph {fp32_path.relative_to(tmp)} (ONNX Runtime matches PyTorch)")
            int8_path = tmp / contract.CLASSIFIER / "1" / contract.ONNX_FILE
            assert calibration is not None
            quantization = quantize_serving_graph(
                fp32_path, int8_path, calibration, qopts.min_agreement, repository=tmp, log=log
            ).to_dict()
            log(f"build: int8 serving graph {int8_path.relative_to(tmp)} ({quantization['mode']})")
        elif opts.target == "cpu":
            onnx_path = export_serving_onnx(ckpt, tmp / contract.CLASSIFIER / "1" / contract.ONNX_FILE)
            log(f"build: serving graph {onnx_path.relative_to(tmp)} (ONNX Runtime matches PyTorch)")
        else:
            onnx_path = export_serving_onnx(ckpt, tmp / contract.CLASSIFIER / contract.ONNX_FILE)
            dali = _serialize_dali(
                spec, tmp / contract.PREPROCESS / "1" / contract.DALI_FILE, opts.max_batch_size
            )
            log(f"build: DALI mixed pipeline {dali.relative_to(tmp)}")
            from build_engines.tensorrt import build_engine, tensorrt_unavailable_reason

            plan = out / contract.CLASSIFIER / "1" / contract.PLAN_FILE
            reason = tensorrt_unavailable_reason()
            if reason is None:
                build_engine(
                    onnx_path,
                    tmp / contract.CLASSIFIER / "1" / contract.PLAN_FILE,
                    precision=opts.precision,
                    max_batch_size=opts.max_batch_size,
                )
                plan_built = True
                log(f"build: TensorRT plan {contract.CLASSIFIER}/1/{contract.PLAN_FILE} ({opts.precision})")
            else:
                log(
                    f"build: TensorRT plan not built ({reason}); on the GPU host run: python -m "
                    f"build_engines.tensorrt --onnx {out / contract.CLASSIFIER / contract.ONNX_FILE} "
                    f"--plan {plan} --precision {opts.precision} --max-batch-size {opts.max_batch_size}"
                )
        record = {
            "target": opts.target,
            "ensemble": contract.ENSEMBLE,
            "num_classes": len(labels),
            "labels": labels,
            "preprocess": spec.to_dict(),
            "model_config": dict(ckpt.model_config),
            "options": {
                "max_batch_size": opts.max_batch_size,
                "precision": opts.precision,
                "instances": opts.instances,
                "preprocess_instances": opts.preprocess_instances,
                "max_queue_delay_us": opts.max_queue_delay_us,
                "preferred_batch_sizes": list(opts.preferred_batch_sizes),
            },
            "limits": vars(opts.limits).copy(),
            "checkpoint_meta": {k: v for k, v in ckpt.meta.items() if isinstance(v, (str, int, float, bool))},
            "plan_built": plan_built,
        }
        if quantization is not None:
            record["quantization"] = quantization
        (tmp / contract.SERVING_FILE).write_text(json.dumps(record, indent=2) + "\n")
        # Swap in: old repository (if any) moved aside first, removed only after the rename succeeded.
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{int(time.time() * 1000)}")
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        log(
            f"build: {opts.target} repository {out} ready in {time.perf_counter() - t0:.1f}s: "
            f"{len(labels)} classes, input {spec.output_shape} per video, max batch {opts.max_batch_size}"
        )
        return record
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(",", " ").split())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from exc


def main(argv: list[str] | None = None) -> int:
    """CLI: exit 0 when built, 2 for a bad checkpoint/option or a failed export."""
    p = argparse.ArgumentParser(prog="python -m build_engines.build", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="native checkpoint (.pt)")
    p.add_argument("--target", choices=contract.TARGETS, default="cpu")
    p.add_argument("-o", "--out", default="model_repository", help="repository folder to (re)create")
    p.add_argument("--max-batch-size", type=int, default=4, help="videos per dynamic batch")
    p.add_argument(
        "--precision", choices=("fp32", "fp16", "int8"), default=None, help="default: cpu fp32, gpu fp16"
    )
    p.add_argument("--calibration", type=Path, default=None, help="int8: video list for static calibration")
    p.add_argument("--calibration-size", type=int, default=32, help="int8: videos used from the list at most")
    p.add_argument(
        "--min-agreement", type=float, default=0.99, help="int8: required top-1 agreement with fp32"
    )
    p.add_argument("--instances", type=int, default=1, help="classifier instances")
    p.add_argument("--preprocess-instances", type=int, default=2, help="decoding instances")
    p.add_argument("--max-queue-delay-us", type=int, default=1000, help="dynamic batcher wait (us)")
    p.add_argument("--preferred-batch-size", type=_int_list, default=(), help="e.g. '2 4'")
    p.add_argument("--max-video-bytes", type=int, default=ServingLimits.max_bytes, help="request size limit")
    args = p.parse_args(argv)
    try:
        opts = RepositoryOptions(
            target=args.target,
            max_batch_size=args.max_batch_size,
            precision=args.precision or ("fp16" if args.target == "gpu" else "fp32"),
            instances=args.instances,
            preprocess_instances=args.preprocess_instances,
            max_queue_delay_us=args.max_queue_delay_us,
            preferred_batch_sizes=tuple(args.preferred_batch_size),
            limits=ServingLimits(max_bytes=args.max_video_bytes),
        )
        if opts.precision != "int8" and args.calibration is not None:
            raise BuildError("--calibration needs --precision int8")
        quantize = QuantizeOptions(args.calibration, args.min_agreement, args.calibration_size)
        build_repository(args.checkpoint, args.out, opts, quantize=quantize)
    except (CheckpointError, BuildError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever the cause
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
