"""The cpu target's serving graph at int8: ONNX Runtime quantization, checked against fp32 before it ships.

    python -m build_engines.build --checkpoint CKPT --target cpu --precision int8 \\
        [--calibration LIST] [--calibration-size 32] [--min-agreement 0.99] -o model_repository

What is quantized, and why:

* **MatMul and Gemm only** -- every ViT-B linear layer and both attention products, i.e. ~99% of the
  FLOPs. LayerNorm, Softmax, GELU, the residual adds, the patch-embedding Conv and the view averaging stay
  fp32: they are cheap and, for LayerNorm and Softmax, where int8 error concentrates.
* **Static QDQ** when a calibration list is given: activation ranges come from the listed videos run
  through the checkpoint's own preprocessing (``preprocess_video``); activations uint8
  per tensor, weights int8 symmetric per output channel (U8S8, the layout ONNX Runtime's x86 kernels are
  built for; per-channel halved the largest logit error of ViT-B at the same speed). Static ranges also
  quantize the activation x activation MatMuls of attention, which dynamic quantization cannot. MatMul
  *outputs* are not re-quantized: ONNX Runtime then fuses each DQ -> MatMul into one
  ``MatMulIntegerToFloat`` (int8 in, fp32 out); re-quantizing them made it ``QLinearMatMul`` + a
  DequantizeLinear per consumer, measured 10% slower on ViT-B.
* **Dynamic** otherwise (``quantize_dynamic``: int8 weights, activations quantized per call); attention
  products stay fp32.
* On a CPU without VNNI (AVX2 only) the x86 U8S8 kernels can saturate their 16-bit intermediate sums, so
  weights are then quantized to 7 bits (``reduce_range``), as ONNX Runtime's documentation advises.

The guard: the int8 graph and the fp32 graph run on the same inputs -- the held-out quarter of the
calibration videos (every 4th; all of them when fewer than 4), or seeded random views for a dynamic
build -- and the build reports top-1 agreement and the largest probability difference. When agreement is
below ``min_agreement``, the static build retries with the attention products in fp32, then with the
classifier head in fp32 too (a dynamic build: with the head in fp32) -- "anything that measurably hurts
stays fp32"; the first variant that reaches it ships, and if none does the build is refused with
:class:`AgreementError`. The fp32 graph stays in the repository as the reference
(``classifier/model_fp32.onnx``), next to the served ``classifier/1/model.onnx``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from triton_models import contract

QUANTIZED_OP_TYPES = ("MatMul", "Gemm")
FP32_OP_TYPES = ("LayerNormalization", "Softmax")
"""Kept fp32 by name as well, whatever ``QUANTIZED_OP_TYPES`` becomes."""
FP32_REFERENCE_FILE = "model_fp32.onnx"
"""In the classifier's folder of an int8 repository: the fp32 graph the int8 one was checked against."""
HELD_OUT_EVERY = 4
RANDOM_EVAL_VIEWS = 8
CPU_FLAG_NAMES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


class QuantizationError(ValueError):
    """The int8 graph could not be made or checked; the message names the problem."""


class CalibrationError(QuantizationError):
    """A calibration list that cannot be used: missing, empty, a missing or undecodable video."""


class AgreementError(QuantizationError):
    """The int8 graph's top-1 agrees with fp32 on fewer inputs than required."""


@dataclass(frozen=True)
class QuantizeOptions:
    """How an int8 serving graph is made and what it must reach to ship."""

    calibration: Path | None = None  # a video list; None: dynamic quantization
    min_agreement: float = 0.99  # top-1 agreement with fp32 required on the evaluation inputs
    calibration_size: int = 32  # videos read from the list at most (spread evenly over it)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError(f"min_agreement must be within [0, 1], got {self.min_agreement}")
        if not isinstance(self.calibration_size, int) or self.calibration_size < 1:
            raise ValueError(f"calibration_size must be a positive integer, got {self.calibration_size!r}")


@dataclass(frozen=True)
class Agreement:
    """int8 vs fp32 on the same inputs."""

    top1_agreement: float
    max_prob_diff: float
    samples: int
    evaluated_on: str


@dataclass
class QuantizationReport:
    """What ``serving.json`` records about an int8 build (``quantization`` entry)."""

    mode: str  # "static" | "dynamic"
    variant: str  # which ladder step shipped
    served: str  # repository-relative path of the int8 graph
    fp32_reference: str  # repository-relative path of the fp32 graph
    agreement: dict[str, Any]
    min_agreement: float
    activation_type: str
    weight_type: str
    reduce_range: bool
    quantized_op_types: list[str]
    fp32_nodes: list[str]
    calibration: dict[str, Any] = field(default_factory=dict)
    tried: list[dict[str, Any]] = field(default_factory=list)
    cpu_flags: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# The CPU
# ---------------------------------------------------------------------------------------------------
def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, bool]:
    """The ISA extensions that decide int8/bf16 speed on this CPU (False for all when unreadable)."""
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {name: name in flags for name in CPU_FLAG_NAMES}


def has_vnni(flags: dict[str, bool] | None = None) -> bool:
    """Whether int8 dot products have their VNNI instruction (AVX-512 or AVX encoded)."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags.get("avx512_vnni") or flags.get("avx_vnni"))


# ---------------------------------------------------------------------------------------------------
# Calibration videos
# ---------------------------------------------------------------------------------------------------
def read_calibration_list(path: str | Path) -> list[Path]:
    """Video paths of a list file: one per line, ``path`` or ``path label`` (the project's list format;
    the label is ignored). Relative paths are relative to the list's folder. Raises
    :class:`CalibrationError` naming the list and line for a missing list, an empty one or a missing video."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration list {path}: no such file")
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"calibration list {path}: unreadable ({exc})") from exc
    videos: list[Path] = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        rel = parts[0] if len(parts) == 2 and parts[1].lstrip("-").isdigit() else line
        video = Path(rel) if Path(rel).is_absolute() else path.parent / rel
        if not video.is_file():
            raise CalibrationError(f"calibration list {path}:{n}: video {video} does not exist")
        videos.append(video)
    if not videos:
        raise CalibrationError(f"calibration list {path}: no videos listed")
    return videos


def spread(items: Sequence[Any], count: int) -> list[Any]:
    """``count`` items evenly spread over ``items`` (all of them when there are fewer): a list sorted by
    class then gives every class its share."""
    if len(items) <= count:
        return list(items)
    idx = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in idx]


def calibration_views(
    videos: Sequence[Path], spec: Any, *, log: Callable[[str], None] = print
) -> list[np.ndarray]:
    """Each video through the serving preprocessing -> its ``(1, V, 3, T, S, S)`` float32 views."""
    from training.preprocessing import VideoDecodeError, preprocess_video

    out = []
    for i, video in enumerate(videos, 1):
        try:
            views = preprocess_video(video, spec).views  # (V, 3, T, S, S)
        except VideoDecodeError as exc:
            raise CalibrationError(f"calibration video {video} cannot be used: {exc}") from exc
        out.append(np.ascontiguousarray(views[None], dtype=np.float32))
        if i % 8 == 0 or i == len(videos):
            log(f"build: calibration videos preprocessed {i}/{len(videos)}")
    return out


@dataclass(frozen=True)
class Calibration:
    """The inputs of an int8 build: what static ranges are fitted on and what the guard evaluates on."""

    fit: list[np.ndarray]  # empty: dynamic quantization
    held_out: list[np.ndarray]
    evaluated_on: str
    record: dict[str, Any]

    @property
    def static(self) -> bool:
        return bool(self.fit)


def load_calibration(
    options: QuantizeOptions, spec: Any, *, log: Callable[[str], None] = print
) -> Calibration:
    """Read and preprocess ``options.calibration`` (every 4th video held out for the guard, all of them
    used for both when fewer than 4), or seeded random views for a dynamic build. Raises
    :class:`CalibrationError` for a bad list before anything is exported."""
    if options.calibration is None:
        held = random_views(spec.output_shape, RANDOM_EVAL_VIEWS)
        return Calibration([], held, "seeded random views (no calibration list)", {})
    videos = spread(read_calibration_list(options.calibration), options.calibration_size)
    views = calibration_views(videos, spec, log=log)
    if len(views) >= HELD_OUT_EVERY:
        held = [v for i, v in enumerate(views) if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1]
        fit = [v for i, v in enumerate(views) if i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
        evaluated_on = "held-out calibration videos"
    else:
        held, fit, evaluated_on = views, views, "calibration videos (too few to hold any out)"
    record = {"list": str(options.calibration), "videos": len(views), "fit": len(fit), "held_out": len(held)}
    return Calibration(fit, held, evaluated_on, record)


def random_views(shape: Sequence[int], count: int, seed: int = 0) -> list[np.ndarray]:
    """Seeded N(0, 1) views ``(1, *shape)``: the evaluation inputs of a build without videos (normalised
    pixels are roughly zero-mean, unit-variance, so they exercise the same ranges)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, *shape), dtype=np.float32) for _ in range(count)]


# ---------------------------------------------------------------------------------------------------
# Graphs
# ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantization tool logs one INFO/WARNING line per tensor; keep the build's output readable."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def preprocess_graph(fp32: Path, out: Path) -> Path:
    """Shape inference and ONNX Runtime's basic optimisations, the quantizer's documented first step."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        with _quiet_quantizer():
            quant_pre_process(str(fp32), str(out))
    except Exception as exc:  # the tool raises bare Exceptions/AssertionErrors from deep inside
        raise QuantizationError(
            f"{fp32}: quantization pre-processing failed ({type(exc).__name__}: {exc})"
        ) from exc
    return out


def graph_node_groups(path: Path) -> dict[str, list[str]]:
    """Names of the nodes the ladder treats differently: ``fp32`` (LayerNorm, Softmax), ``attention``
    (MatMuls of two activations) and ``head`` (the last MatMul/Gemm before the output)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    weights |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    fp32 = [n.name for n in graph.node if n.op_type in FP32_OP_TYPES]
    attention = [
        n.name for n in graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input[:2])
    ]
    linear = [n.name for n in graph.node if n.op_type in QUANTIZED_OP_TYPES]
    return {"fp32": fp32, "attention": attention, "head": linear[-1:]}


class ViewsReader(CalibrationDataReader):
    """ONNX Runtime's calibration input: preprocessed videos, one per call (the graph's batch of 1)."""

    def __init__(self, views: Sequence[np.ndarray]) -> None:
        self._it = iter(list(views))

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {contract.VIEWS: x}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while (item := self.get_next()) is not None:
            yield item


def quantize_static_graph(
    pre: Path,
    out: Path,
    views: Sequence[np.ndarray],
    exclude: Sequence[str],
    *,
    reduce_range: bool,
    cache: Path,
) -> Path:
    """Static QDQ (U8S8, per-channel weights) of every MatMul/Gemm not in ``exclude``; ranges cached in
    ``cache`` so that later ladder steps do not calibrate again."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    reader = ViewsReader(views)
    try:
        with _quiet_quantizer():
            quantize_static(
                str(pre),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                per_channel=True,  # one scale per output channel: half the error (ViT-B), same speed
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude),
                calibration_cache_path=str(cache),
                extra_options={
                    "MatMulConstBOnly": False,  # attention products too: both inputs get static ranges
                    "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES),  # see module docstring
                    "WeightSymmetric": True,
                },
            )
    except Exception as exc:
        raise QuantizationError(f"static quantization of {pre} failed ({type(exc).__name__}: {exc})") from exc
    return out


def quantize_dynamic_graph(pre: Path, out: Path, exclude: Sequence[str], *, reduce_range: bool) -> Path:
    """Dynamic quantization: int8 weights of every MatMul/Gemm with a constant operand."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    try:
        with _quiet_quantizer():
            quantize_dynamic(
                str(pre),
                str(out),
                op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                per_channel=False,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude),
                extra_options={"MatMulConstBOnly": True},
            )
    except Exception as exc:
        raise QuantizationError(
            f"dynamic quantization of {pre} failed ({type(exc).__name__}: {exc})"
        ) from exc
    return out


def compare_graphs(fp32: Path, int8: Path, views: Sequence[np.ndarray], evaluated_on: str) -> Agreement:
    """Run both serving graphs (as serving runs them) on the same views; top-1 agreement and the largest
    absolute probability difference over all classes and inputs."""
    from triton_models.runtime import ort_cpu_session

    try:
        ref_sess, q_sess = ort_cpu_session(fp32), ort_cpu_session(int8)
    except Exception as exc:  # onnxruntime raises its own exception types on a graph it cannot load
        raise QuantizationError(f"{int8}: ONNX Runtime cannot load the quantized graph ({exc})") from exc
    agree, diff = 0, 0.0
    for x in views:
        ref = ref_sess.run([contract.PROBS], {contract.VIEWS: x})[0]  # (1, K)
        got = q_sess.run([contract.PROBS], {contract.VIEWS: x})[0]  # (1, K)
        if got.shape != ref.shape or not np.isfinite(got).all():
            raise QuantizationError(
                f"{int8}: output {got.shape} is not finite or differs from fp32 {ref.shape}"
            )
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        diff = max(diff, float(np.abs(ref - got).max()))
    n = sum(x.shape[0] for x in views)
    return Agreement(top1_agreement=agree / n, max_prob_diff=diff, samples=n, evaluated_on=evaluated_on)


def check_agreement(agreement: Agreement, min_agreement: float, *, variant: str = "") -> None:
    """The guard: raise :class:`AgreementError` when int8 top-1 agrees with fp32 less often than required."""
    if agreement.top1_agreement < min_agreement:
        what = f" (best variant tried: {variant})" if variant else ""
        raise AgreementError(
            f"int8 graph refused: top-1 agreement with fp32 is {agreement.top1_agreement:.4f} on "
            f"{agreement.samples} {agreement.evaluated_on}, below --min-agreement {min_agreement:g}{what}; "
            f"largest probability difference {agreement.max_prob_diff:.4f}. Calibrate on more representative "
            f"videos, or lower --min-agreement if that loss is acceptable."
        )


# ---------------------------------------------------------------------------------------------------
# The build step
# ---------------------------------------------------------------------------------------------------
def quantize_serving_graph(
    fp32: Path,
    out: Path,
    calibration: Calibration,
    min_agreement: float = 0.99,
    *,
    repository: Path | None = None,
    log: Callable[[str], None] = print,
) -> QuantizationReport:
    """fp32 serving graph at ``fp32`` -> int8 serving graph at ``out``, checked by the guard.

    ``calibration`` comes from :func:`load_calibration`; ``repository`` only makes the recorded paths
    relative. Raises :class:`AgreementError` when no variant reaches ``min_agreement``.
    """
    flags = cpu_flags()
    reduce_range = not has_vnni(flags)
    fit, held, evaluated_on = calibration.fit, calibration.held_out, calibration.evaluated_on
    rel = (lambda p: str(p.relative_to(repository))) if repository is not None else str
    with tempfile.TemporaryDirectory(prefix="quantize-", dir=out.parent) as tmp:
        pre = preprocess_graph(fp32, Path(tmp) / "pre.onnx")
        groups = graph_node_groups(pre)
        if calibration.static:
            ladder = [
                ("all MatMul/Gemm int8", []),
                ("attention products fp32", groups["attention"]),
                ("attention products and head fp32", groups["attention"] + groups["head"]),
            ]
        else:
            ladder = [("weights int8 (dynamic)", []), ("head fp32 (dynamic)", groups["head"])]
        tried: list[dict[str, Any]] = []
        best: tuple[Agreement, str, list[str], Path] | None = None
        for i, (variant, extra) in enumerate(ladder):
            exclude = groups["fp32"] + list(extra)
            candidate = Path(tmp) / f"int8_{i}.onnx"
            if calibration.static:
                quantize_static_graph(
                    pre, candidate, fit, exclude, reduce_range=reduce_range, cache=Path(tmp) / "ranges.json"
                )
            else:
                quantize_dynamic_graph(pre, candidate, exclude, reduce_range=reduce_range)
            agreement = compare_graphs(fp32, candidate, held, evaluated_on)
            tried.append({"variant": variant, **asdict(agreement)})
            log(
                f"build: int8 ({variant}): top-1 agreement {agreement.top1_agreement:.4f}, "
                f"largest probability difference {agreement.max_prob_diff:.4f} "
                f"on {agreement.samples} {evaluated_on}"
            )
            if best is None or agreement.top1_agreement > best[0].top1_agreement:
                best = (agreement, variant, exclude, candidate)
            if agreement.top1_agreement >= min_agreement:
                break
        assert best is not None
        agreement, variant, exclude, chosen = best
        check_agreement(agreement, min_agreement, variant=variant)
        os.replace(chosen, out)
    return QuantizationReport(
        mode="static" if calibration.static else "dynamic",
        variant=variant,
        served=rel(out),
        fp32_reference=rel(fp32),
        agreement=asdict(agreement),
        min_agreement=min_agreement,
        activation_type="uint8" if calibration.static else "uint8 (dynamic)",
        weight_type="int7 (reduce_range)" if reduce_range else "int8",
        reduce_range=reduce_range,
        quantized_op_types=list(QUANTIZED_OP_TYPES),
        fp32_nodes=list(exclude),
        calibration=calibration.record,
        tried=tried,
        cpu_flags=flags,
    )
