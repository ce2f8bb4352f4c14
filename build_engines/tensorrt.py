"""Serving ONNX graph -> TensorRT plan, on TensorRT 10.x or 11.x (needs an NVIDIA GPU and ``tensorrt``).

    python -m build_engines.tensorrt --onnx R/classifier/model.onnx --plan R/classifier/1/model.plan \\
        --precision fp16 --max-batch-size 4

Run it where the plan will be served (a plan is tied to the GPU model and TensorRT version), e.g. inside
``nvcr.io/nvidia/tritonserver:<yy.mm>-py3``, whose TensorRT matches its tensorrt backend.

FP16: ViT/TimeSformer LayerNorm and softmax overflow or lose accuracy in half precision (TimeSformer#33,
TensorRT#1262, #2564). TensorRT 10.x (weakly typed): ``BuilderFlag.FP16`` with those layers pinned to FP32
by layer precision constraints and ``OBEY_PRECISION_CONSTRAINTS``. TensorRT 11 removed those flags and
``platform_has_fast_fp16`` (every network is strongly typed), so FP16 must come from the graph itself: the
builder parses the mixed-precision graph of :mod:`build_engines.mixed_precision` (FP16 matmuls, GELU and
convolution; LayerNorm, softmax and the attention logits in FP32) as a strongly typed network. Which path
runs is decided by feature detection, not by version strings. FP32 builds are strongly typed on both.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from triton_models import contract

# Layers kept in FP32 under --precision fp16: LayerNorm (one NORMALIZATION layer when exported at opset
# >= 17, otherwise a reduce/sub/pow/sqrt/div chain named after the norm module) and softmax.
FP32_NAME_PATTERN = re.compile(r"norm|softmax", re.IGNORECASE)


class EngineBuildError(RuntimeError):
    """The plan could not be built; the message says why (parser errors included)."""


class TensorRTUnavailable(EngineBuildError):
    """No ``tensorrt`` module or no CUDA GPU on this machine."""


# CUDA runtimes to look for, newest first: NGC Triton 26.x containers are CUDA 13, 24.x/25.x CUDA 12.
CUDART_NAMES = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")


def _load_cudart() -> object | None:
    import ctypes

    for name in CUDART_NAMES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def tensorrt_unavailable_reason() -> str | None:
    """Why a plan cannot be built here, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python package is not installed"
    import ctypes

    cudart = _load_cudart()
    if cudart is None:
        return f"no CUDA runtime ({', '.join(CUDART_NAMES[:2])}) is loadable"
    count = ctypes.c_int(0)
    if cudart.cudaGetDeviceCount(ctypes.byref(count)) != 0 or count.value < 1:  # type: ignore[attr-defined]
        return "no CUDA GPU is visible"
    return None


def tensorrt_version() -> str:
    """The installed TensorRT's version ("" when none): a plan loads only on the version that built it."""
    try:
        import tensorrt
    except ImportError:
        return ""
    return str(tensorrt.__version__)


def strongly_typed_only(trt: object) -> bool:
    """TensorRT 11 removed the FP16 builder flag (every network is strongly typed); 10.x still has it."""
    return not hasattr(trt.BuilderFlag, "FP16")  # type: ignore[attr-defined]


def _keep_fp32(layer, trt) -> bool:  # noqa: ANN001 - tensorrt types are only importable on a GPU host
    types = {trt.LayerType.SOFTMAX}
    if hasattr(trt.LayerType, "NORMALIZATION"):
        types.add(trt.LayerType.NORMALIZATION)
    return layer.type in types or bool(FP32_NAME_PATTERN.search(layer.name))


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    *,
    precision: str = "fp16",
    max_batch_size: int = 4,
    opt_batch_size: int | None = None,
    workspace_gib: float = 4.0,
    verbose: bool = False,
) -> Path:
    """Parse ``onnx_path`` and write a serialized engine to ``plan_path``.

    One optimization profile covers batch 1..``max_batch_size`` of the ``VIEWS`` input (B, V, 3, T, H, W);
    ``opt_batch_size`` (default: max) is what the kernels are tuned for. Raises :class:`EngineBuildError`
    (never exits), listing every parser error.
    """
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise TensorRTUnavailable(f"cannot build a TensorRT plan here: {reason}")
    import tensorrt as trt

    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f"{onnx_path}: no such ONNX file")

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    typed = strongly_typed_only(trt)
    source = onnx_path
    if precision == "fp16" and typed:
        # Strongly typed (TensorRT 11): precision is what the graph's own types say, so the FP16 graph is
        # made here, with LayerNorm, softmax and the attention logits kept in FP32 by casts.
        from build_engines.mixed_precision import convert_to_mixed_fp16

        source = convert_to_mixed_fp16(onnx_path, plan_path.with_suffix(".fp16.onnx"))
    flags = 0
    if typed or precision == "fp32":
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)  # explicit batch is the only mode since 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for e in errors:
            logger.log(trt.Logger.ERROR, e)
        raise EngineBuildError(
            f"{onnx_path}: ONNX parser failed with {len(errors)} error(s): " + "; ".join(errors)
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == "fp16" and not typed:
        # TensorRT 10: weakly typed network, FP16 by builder flag with LayerNorm/softmax pinned to FP32.
        if not builder.platform_has_fast_fp16:
            raise EngineBuildError("precision fp16 requested but this GPU has no fast FP16")
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = 0
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if _keep_fp32(layer, trt):
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    if layer.get_output(j).dtype in (trt.float32, trt.float16):
                        layer.set_output_type(j, trt.float32)
                pinned += 1
        logger.log(trt.Logger.INFO, f"{pinned} LayerNorm/softmax layers pinned to FP32")

    inp = network.get_input(0)
    if inp.name != contract.VIEWS:
        raise EngineBuildError(f"{onnx_path}: first input is {inp.name!r}, expected {contract.VIEWS!r}")
    item = tuple(inp.shape)[1:]  # (V, 3, T, H, W), static
    if any(d < 0 for d in item):
        raise EngineBuildError(f"{onnx_path}: only the batch axis may be dynamic, got {tuple(inp.shape)}")
    opt = min(max_batch_size, opt_batch_size or max_batch_size)
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, (1, *item), (opt, *item), (max_batch_size, *item))
    config.add_optimization_profile(profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"{onnx_path}: TensorRT failed to build the engine (see the log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    return plan_path


def main(argv: list[str] | None = None) -> int:
    """CLI: exit 0 with the plan written, 2 for a bad argument or a failed build, 1 without TensorRT/GPU."""
    p = argparse.ArgumentParser(prog="python -m build_engines.tensorrt", description=__doc__.split("\n")[0])
    p.add_argument("--onnx", required=True, help="serving ONNX graph (VIEWS -> PROBS)")
    p.add_argument("--plan", required=True, help="output plan, e.g. REPO/classifier/1/model.plan")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp16")
    p.add_argument("--max-batch-size", type=int, default=4, help="videos per batch (Triton max_batch_size)")
    p.add_argument("--opt-batch-size", type=int, default=None)
    p.add_argument("--workspace-gib", type=float, default=4.0)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        out = build_engine(
            args.onnx,
            args.plan,
            precision=args.precision,
            max_batch_size=args.max_batch_size,
            opt_batch_size=args.opt_batch_size,
            workspace_gib=args.workspace_gib,
            verbose=args.verbose,
        )
    except TensorRTUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (EngineBuildError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {args.precision}, batch 1..{args.max_batch_size})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
