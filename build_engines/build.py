"""Native checkpoint -> a complete Triton model repository for the ``cpu`` or the ``gpu`` target.

    python -m build_engines.build --checkpoint runs/synthetic_tiny/best.pt --target cpu -o model_repository
    make build-engines CHECKPOINT=... TARGET=gpu

Frame count, crop, mean/std, label names and class count come from the checkpoint alone. Steps:

1. the serving ONNX graph (:mod:`build_engines.export_onnx`, ``graph="serving"``): one batch of videos'
   views ``VIEWS (B, V, 3, T, S, S)`` -> ``PROBS (B, K)`` = softmax per view, mean over views -- both
   ONNX Runtime (cpu) and TensorRT (gpu) then run the post-processing inside the graph;
2. configs, labels, spec files and python models (:mod:`build_engines.repository`);
3. cpu: ``classifier/1/model.onnx``; with ``--precision int8`` that is the int8 graph
   (:mod:`build_engines.quantize`, refused below ``--min-agreement``) and the fp32 graph it was checked
   against stays at ``classifier/model_fp32.onnx``; both are named in ``serving.json``.
   gpu: ``preprocess/1/model.dali`` (the serialized ``mixed`` DALI pipeline) and
   ``classifier/1/model.plan`` -- built here only when TensorRT and a GPU are present; otherwise the ONNX
   graph is left at ``classifier/model.onnx`` with the command that builds the plan.
   ``--dali-device cpu`` changes only the placement: the same pipeline with DALI's CPU decoder, ``KIND_CPU``
   instances and the cpu target's classifier (``classifier/1/model.onnx``), so that Triton's dali backend
   (``make dali-backend``) serves the gpu target's ensemble on a host without a GPU.

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
from pathlib import Path
from typing import Any

from build_engines.export_onnx import ExportError, export_onnx
from build_engines.quantize import (
    FP32_REFERENCE_FILE,
    QuantizeOptions,
    load_calibration,
    quantize_serving_graph,
)
from build_engines.repository import (
    DEFAULT_DALI_INSTANCES,
    RepositoryOptions,
    dali_batch_size,
    generate_configs,
)
from training.modeling.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from training.preprocessing.dali import DALI_DEVICES
from training.preprocessing.limits import DecodeLimits
from triton_models import contract

GPU_PLAN = ("gpu", "mixed")  # (target, DALI placement) of the build that serves a TensorRT plan


class BuildError(ValueError):
    """The repository could not be built; the message names the problem."""


def _export(ckpt: Checkpoint, out: Path) -> Path:
    """The serving graph ``VIEWS -> PROBS`` of ``ckpt``, checked against PyTorch in ONNX Runtime."""
    try:
        return export_onnx(ckpt, out, graph="serving")
    except ExportError as exc:
        raise BuildError(str(exc)) from exc


def _serialize_dali(spec: Any, path: Path, max_batch_size: int, device: str) -> tuple[Path, str]:
    """The pipeline (decoder on ``device``) serialized by the DALI installed here; returns the path and
    DALI's version (the serving container's dali backend must run that DALI or a newer one: the gpu image
    re-serializes it at start, see :mod:`build_engines.dali_model`)."""
    try:
        import nvidia.dali

        from training.preprocessing.dali import serialize_pipeline
    except ImportError as exc:
        raise BuildError(f"the DALI pipeline cannot be serialized: {exc}") from exc
    serialize_pipeline(spec, path, device=device, max_batch_size=max_batch_size)
    return path, str(nvidia.dali.__version__)


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
    versions: dict[str, str] = {}
    quantization = None
    try:
        t0 = time.perf_counter()
        qopts = quantize or QuantizeOptions()
        calibration = load_calibration(qopts, spec, log=log) if opts.precision == "int8" else None
        generate_configs(tmp, spec, labels, opts)
        if opts.target == "cpu" and opts.precision == "int8":
            fp32_path = _export(ckpt, tmp / contract.CLASSIFIER / FP32_REFERENCE_FILE)
            log(f"build: fp32 serving graph {fp32_path.relative_to(tmp)} (ONNX Runtime matches PyTorch)")
            int8_path = tmp / contract.CLASSIFIER / "1" / contract.ONNX_FILE
            assert calibration is not None
            quantization = quantize_serving_graph(
                fp32_path, int8_path, calibration, qopts.min_agreement, repository=tmp, log=log
            ).to_dict()
            log(f"build: int8 serving graph {int8_path.relative_to(tmp)} ({quantization['mode']})")
        elif opts.target == "cpu":
            onnx_path = _export(ckpt, tmp / contract.CLASSIFIER / "1" / contract.ONNX_FILE)
            log(f"build: serving graph {onnx_path.relative_to(tmp)} (ONNX Runtime matches PyTorch)")
        else:
            dali, dali_version = _serialize_dali(
                spec,
                tmp / contract.PREPROCESS / "1" / contract.DALI_FILE,
                dali_batch_size(opts),
                opts.dali_device,
            )
            versions["dali"] = dali_version
            log(f"build: DALI {opts.dali_device} pipeline {dali.relative_to(tmp)} (DALI {dali_version})")
        if opts.target == "gpu" and opts.dali_device == "cpu":
            # The cpu placement: the classifier runs as on the cpu target (no TensorRT on this host).
            onnx_path = _export(ckpt, tmp / contract.CLASSIFIER / "1" / contract.ONNX_FILE)
            log(f"build: serving graph {onnx_path.relative_to(tmp)} (cpu placement; ONNX Runtime)")
        elif opts.target == "gpu":
            onnx_path = _export(ckpt, tmp / contract.CLASSIFIER / contract.ONNX_FILE)
            from build_engines.tensorrt import build_engine, tensorrt_unavailable_reason, tensorrt_version

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
                versions["tensorrt"] = tensorrt_version()
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
                "gpus": list(opts.gpus),
                "dali_instances": opts.dali_instances,
                "dali_max_batch_size": dali_batch_size(opts),
                "dali_device": opts.dali_device,
            },
            "built_with": versions,
            "limits": opts.limits.to_dict(),
            "checkpoint_meta": {k: v for k, v in ckpt.meta.items() if isinstance(v, (str, int, float, bool))},
            # What the checkpoint reached in training (val top-1 ...): lets a client tell a weak training
            # run from a serving mismatch.
            "checkpoint_metrics": {
                k: v
                for k, v in dict(ckpt.meta.get("metrics") or {}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            },
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
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default=None,
        help="default: cpu fp32, gpu fp16 (fp32 with --dali-device cpu)",
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
    p.add_argument("--max-video-bytes", type=int, default=DecodeLimits.max_bytes, help="request size limit")
    p.add_argument(
        "--timeline-window", type=float, default=None, help="video_timeline default window, s (spec's clip)"
    )
    p.add_argument("--timeline-stride", type=float, default=None, help="video_timeline default stride, s")
    p.add_argument("--gpus", type=_int_list, default=(), help="gpu: GPU ids, e.g. '0 1' (default: all)")
    p.add_argument(
        "--dali-instances", type=int, default=DEFAULT_DALI_INSTANCES, help="gpu: DALI instances per GPU"
    )
    p.add_argument(
        "--dali-max-batch-size", type=int, default=None, help="gpu: DALI batch (1 = every video alone)"
    )
    p.add_argument(
        "--dali-device",
        choices=DALI_DEVICES,
        default="mixed",
        help="gpu: where the DALI decoder runs (cpu: the same repository served by Triton's dali backend "
        "on a host without a GPU; see make dali-backend)",
    )
    args = p.parse_args(argv)
    try:
        opts = RepositoryOptions(
            target=args.target,
            max_batch_size=args.max_batch_size,
            # fp16 is the TensorRT plan's default; the cpu placement serves the fp32 ONNX graph.
            precision=args.precision or ("fp16" if (args.target, args.dali_device) == GPU_PLAN else "fp32"),
            instances=args.instances,
            preprocess_instances=args.preprocess_instances,
            max_queue_delay_us=args.max_queue_delay_us,
            preferred_batch_sizes=tuple(args.preferred_batch_size),
            limits=DecodeLimits(max_bytes=args.max_video_bytes),
            timeline_window_s=args.timeline_window,
            timeline_stride_s=args.timeline_stride,
            gpus=tuple(args.gpus),
            dali_instances=args.dali_instances,
            dali_max_batch_size=args.dali_max_batch_size,
            dali_device=args.dali_device,
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
