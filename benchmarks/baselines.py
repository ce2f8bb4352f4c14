"""The two baselines the server is compared with, run in this process on the same videos and weights.

in-process
    What the server's models do, called directly, one video after another: the reference preprocessing
    (:func:`training.preprocessing.preprocess_video`, decode limits as the repository sets them) and the same
    ``classifier/1/model.onnx`` through the same :class:`triton_models.runtime.OrtClassifier` (same ONNX
    Runtime session options and thread counts as the server's classifier instances). The server can at best
    overlap these two steps; this is the cost Triton is allowed to add to.

naive
    How PaddleVideo's predict tool works: decode *every* frame to an RGB array with PyAV, sample from the
    list, resize/crop/normalise in NumPy (float64 where NumPy takes it), then the PyTorch model in eager
    mode from the checkpoint, three views as one batch.

Both return per-video latencies and the class probabilities they computed, so the run can check that the
server, the in-process path and the naive path agree on what they compute before comparing their speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from tqdm import tqdm

from benchmarks.videos import BenchVideo
from training.modeling.checkpoint import Checkpoint
from training.preprocessing.sampling import sample_indices
from training.preprocessing.spec import PreprocessSpec


@dataclass
class BaselineResult:
    """Sequential timings of one baseline: every video ``repeats`` times, one after another."""

    name: str
    description: str
    latencies_ms: list[float]
    wall_s: float
    per_video_ms: dict[str, float] = field(default_factory=dict)  # mean per input file
    threads: str = ""

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    @property
    def videos_per_s(self) -> float:
        return self.count / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> dict[str, Any]:
        """Plain dict for results.json."""
        return {
            "name": self.name,
            "description": self.description,
            "count": self.count,
            "wall_s": self.wall_s,
            "videos_per_s": self.videos_per_s,
            "p50_ms": self.percentile(50),
            "p95_ms": self.percentile(95),
            "p99_ms": self.percentile(99),
            "mean_ms": float(np.mean(self.latencies_ms)) if self.latencies_ms else float("nan"),
            "per_video_ms": self.per_video_ms,
            "threads": self.threads,
        }


def _timed_loop(
    name: str,
    description: str,
    videos: Sequence[BenchVideo],
    fn: Callable[[bytes], np.ndarray],
    *,
    repeats: int,
    warmup: int,
    threads: str,
    show_progress: bool,
) -> tuple[BaselineResult, dict[str, np.ndarray]]:
    """Run ``fn`` on every video's bytes, ``warmup`` untimed passes then ``repeats`` timed ones."""
    if not videos:
        raise ValueError("a baseline needs at least one video")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    payloads = [(v.name, v.read_bytes()) for v in videos]  # file reads stay out of the timing
    probs: dict[str, np.ndarray] = {}
    for _ in range(warmup):
        for vname, data in payloads:
            probs[vname] = fn(data)
    latencies: list[float] = []
    per_video: dict[str, list[float]] = {v: [] for v, _ in payloads}
    bar = tqdm(
        total=repeats * len(payloads), desc=f"baseline {name}", unit="video", disable=not show_progress
    )
    t_start = time.perf_counter()
    for _ in range(repeats):
        for vname, data in payloads:
            t0 = time.perf_counter()
            probs[vname] = fn(data)
            ms = (time.perf_counter() - t0) * 1e3
            latencies.append(ms)
            per_video[vname].append(ms)
            bar.update(1)
    wall = time.perf_counter() - t_start
    bar.close()
    result = BaselineResult(
        name=name,
        description=description,
        latencies_ms=latencies,
        wall_s=wall,
        per_video_ms={k: float(np.mean(v)) for k, v in per_video.items()},
        threads=threads,
    )
    return result, probs


# ----------------------------------------------------------------------------------------------------
# in-process: the server's own functions, without the server


def in_process_classifier(repository: str | Path) -> tuple[Callable[[bytes], np.ndarray], str]:
    """``bytes -> (K,) probabilities`` exactly as the cpu repository's models compute them, and a note of
    the threads used. Reads the spec/limits and the ONNX file from the generated repository."""
    from training.preprocessing import preprocess_video
    from triton_models import contract, runtime

    repository = Path(repository)
    spec, limits = runtime.read_spec_file(repository / contract.PREPROCESS)
    onnx_path = repository / contract.CLASSIFIER / "1" / contract.ONNX_FILE
    if not onnx_path.is_file():
        raise FileNotFoundError(f"{onnx_path}: the repository has no ONNX classifier (cpu target expected)")
    instances = _classifier_instances(repository / contract.CLASSIFIER / "config.pbtxt")
    classifier = runtime.OrtClassifier(onnx_path, instances=instances)
    decode_limits = limits.for_serving()

    def run(data: bytes) -> np.ndarray:
        views = preprocess_video(data, spec, limits=decode_limits).views  # (V, 3, T, H, W)
        return classifier(views[None])[0]  # (K,)

    return (
        run,
        f"onnxruntime intra-op {classifier.threads}, inter-op 1; decoder threads {decode_limits.threads}",
    )


def _classifier_instances(config_path: Path) -> int:
    """Instance count of the classifier, as the server reads it (so the ORT thread split matches)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    return max(1, sum(g.count or 1 for g in cfg.instance_group) or 1)


def run_in_process(
    videos: Sequence[BenchVideo],
    repository: str | Path,
    *,
    repeats: int = 1,
    warmup: int = 1,
    show_progress: bool = True,
) -> tuple[BaselineResult, dict[str, np.ndarray]]:
    """Time the in-process baseline; returns its result and the probabilities per video name."""
    fn, threads = in_process_classifier(repository)
    return _timed_loop(
        "in-process",
        "reference preprocessing + the server's ONNX Runtime session, called directly, sequential",
        videos,
        fn,
        repeats=repeats,
        warmup=warmup,
        threads=threads,
        show_progress=show_progress,
    )


# ----------------------------------------------------------------------------------------------------
# naive: PaddleVideo's predict-tool way


def decode_every_frame(data: bytes) -> tuple[list[np.ndarray], float]:
    """Every frame of the first video stream as (H, W, 3) uint8 RGB, and the stream's fps."""
    import io

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25.0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not frames:
        raise ValueError("no frame decoded")
    return frames, fps


def resize_bilinear_np(frame: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """(H, W, 3) -> (out_h, out_w, 3) float32, bilinear with ``align_corners=False`` and no antialias
    (the sampling grid of ``F.interpolate``), in plain NumPy."""
    h, w = frame.shape[:2]
    src = frame.astype(np.float64)

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(pos).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, pos - i0

    y0, y1, wy = axis(h, out_h)
    x0, x1, wx = axis(w, out_w)
    wy = wy[:, None, None]
    wx = wx[None, :, None]
    top = src[y0][:, x0] * (1 - wx) + src[y0][:, x1] * wx  # (out_h, out_w, 3)
    bottom = src[y1][:, x0] * (1 - wx) + src[y1][:, x1] * wx
    return (top * (1 - wy) + bottom * wy).astype(np.float32)


def naive_views(frames: list[np.ndarray], fps: float, spec: PreprocessSpec) -> np.ndarray:
    """Sample, resize, crop and normalise in NumPy -> (V, 3, T, S, S) float32 (deterministic crops)."""
    from training.preprocessing import crop_offsets, scaled_size

    idx = sample_indices(len(frames), fps, spec)
    h, w = frames[0].shape[:2]
    nh, nw = scaled_size(h, w, spec.short_side)
    resized = np.stack([resize_bilinear_np(frames[int(i)], nh, nw) for i in idx])  # (T, nh, nw, 3)
    c = spec.crop_size
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    views = []
    for y, x in crop_offsets(nh, nw, spec):
        crop = (resized[:, y : y + c, x : x + c] / 255.0 - mean) / std  # (T, c, c, 3)
        views.append(crop.transpose(3, 0, 1, 2))  # (3, T, c, c)
    return np.ascontiguousarray(np.stack(views), dtype=np.float32)  # (V, 3, T, c, c)


def naive_classifier(checkpoint: Checkpoint) -> tuple[Callable[[bytes], np.ndarray], str]:
    """``bytes -> (K,)`` the naive way: decode all, NumPy preprocessing, PyTorch eager."""
    model = checkpoint.build_model()
    spec = checkpoint.preprocess

    def run(data: bytes) -> np.ndarray:
        frames, fps = decode_every_frame(data)
        views = naive_views(frames, fps, spec)  # (V, 3, T, S, S)
        with torch.inference_mode():
            logits = model(torch.from_numpy(views))  # (V, K)
            return torch.softmax(logits, dim=-1).mean(0).numpy()  # (K,)

    return run, f"torch intra-op {torch.get_num_threads()}"


def run_naive(
    videos: Sequence[BenchVideo],
    checkpoint: Checkpoint,
    *,
    repeats: int = 1,
    warmup: int = 1,
    show_progress: bool = True,
) -> tuple[BaselineResult, dict[str, np.ndarray]]:
    """Time the naive baseline; returns its result and the probabilities per video name."""
    fn, threads = naive_classifier(checkpoint)
    return _timed_loop(
        "naive",
        "decode every frame (PyAV, RGB), NumPy preprocessing, PyTorch eager (PaddleVideo predict style)",
        videos,
        fn,
        repeats=repeats,
        warmup=warmup,
        threads=threads,
        show_progress=show_progress,
    )


def max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Largest |a - b| over the videos both hold (NaN when they share none)."""
    keys = sorted(set(a) & set(b))
    if not keys:
        return float("nan")
    return float(max(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k]))) for k in keys))
