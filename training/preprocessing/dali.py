"""DALI implementation of the preprocessing spec, for Triton's dali backend (GPU) and CPU checks.

The pipeline takes two external sources, named as Triton's dali backend maps config inputs onto them:

``VIDEO``          one whole encoded file per sample, uint8 1-D (container header included);
``FRAME_INDICES``  int32 ``(T,)`` frame indices, computed upstream with the same
                   :func:`training.preprocessing.sampling.sample_indices` the reference uses (see
                   :func:`training.preprocessing.decode.sample_video_indices`, a demux-only probe), so both
                   implementations take the same frames.

and returns ``(V, 3, T, crop, crop)`` float32 per sample, like ``preprocess_video``:

decode the listed frames (``fn.decoders.video``) -> resize the short side to ``spec.short_side`` with the
reference's size rule (long side ``floor(long / short * size)`` in float64, computed per sample from the
decoded shape) using linear interpolation **without antialias** (``antialias=False``; DALI's linear filter
samples at pixel centres, i.e. ``align_corners=False``) -> crops at the same integer offsets
(UniformCrop or centre, via ``fn.slice``) -> ``(x/255 - mean)/std`` -> ``FHWC -> CFHW`` -> stack views.

Backends: ``device="cpu"`` decodes VP8, VP9 and MJPEG only (DALI's CPU video decoder); ``"mixed"`` decodes
on the GPU with NVDEC (H.264, HEVC, VP8/9, AV1, MPEG-4...) and runs every later op on the GPU. A mixed
pipeline serializes on a GPU-less machine (``device_id=None``); the dali backend assigns the device
when it loads ``model.dali``. Training-only randomness (``random`` crops, flips, ``segment`` draws) is not
part of this pipeline: it serves evaluation specs (``three`` or ``center`` crops). Rotation metadata is not
applied by DALI's decoder; the reference implementation applies it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.preprocessing.spec import PreprocessSpec

VIDEO = "VIDEO"
FRAME_INDICES = "FRAME_INDICES"
DALI_DEVICES = ("cpu", "mixed")


def _check(spec: PreprocessSpec, device: str) -> None:
    if device not in DALI_DEVICES:
        raise ValueError(f"device must be one of {DALI_DEVICES}, got {device!r}")
    if spec.crops not in ("three", "center"):
        raise ValueError(f"the DALI pipeline serves evaluation crops ('three', 'center'), got {spec.crops!r}")
    if spec.short_side < spec.crop_size:
        raise ValueError(f"short_side ({spec.short_side}) must be >= crop_size ({spec.crop_size})")


def _graph(spec: PreprocessSpec, device: str):  # noqa: ANN202 - a DALI DataNode
    """The pipeline body (called inside a ``pipeline_def``)."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    video = fn.external_source(name=VIDEO, dtype=types.UINT8, ndim=1, no_copy=False)
    indices = fn.external_source(name=FRAME_INDICES, dtype=types.INT32, ndim=1)
    frames = fn.decoders.video(video, device=device, frames=indices, pad_mode="edge")  # (T, H, W, 3) uint8

    # Target size, per sample, with the reference's exact rule (float64 like Python's float).
    shape = frames.shape(dtype=types.INT64)  # [T, H, W, C], on the CPU
    h = fn.cast(shape[1], dtype=types.FLOAT64)
    w = fn.cast(shape[2], dtype=types.FLOAT64)
    size = float(spec.short_side)
    short = dmath.min(h, w)
    long = dmath.max(h, w)
    keep = fn.cast(short == size, dtype=types.FLOAT64)  # already the right size: untouched
    new_long = keep * long + (1.0 - keep) * dmath.floor(long / short * size)
    landscape = fn.cast(w >= h, dtype=types.FLOAT64)  # PaddleVideo: `if width < height` is portrait
    new_h = landscape * size + (1.0 - landscape) * new_long
    new_w = landscape * new_long + (1.0 - landscape) * size
    resized = fn.resize(
        frames,
        size=fn.cast(fn.stack(new_h, new_w), dtype=types.FLOAT),
        interp_type=types.INTERP_LINEAR,
        antialias=False,
        dtype=types.FLOAT,
    )  # (T, h, w, 3) float32, 0..255

    c = spec.crop_size
    ih = fn.cast(new_h, dtype=types.INT32)
    iw = fn.cast(new_w, dtype=types.INT32)
    cy = (ih - c) // 2
    cx = (iw - c) // 2
    if spec.crops == "three":
        land = fn.cast(iw >= ih, dtype=types.INT32)
        # landscape: left, right, centre; portrait: top, bottom, middle (PaddleVideo's UniformCrop).
        offsets = [
            (land * cy, (1 - land) * cx),
            (land * cy + (1 - land) * 2 * cy, land * 2 * cx + (1 - land) * cx),
            (cy, cx),
        ]
    else:
        offsets = [(cy, cx)]

    mean = types.Constant(np.asarray(spec.mean, np.float32) * 255.0)
    inv_std = types.Constant(1.0 / (np.asarray(spec.std, np.float32) * 255.0))
    views = []
    for y, x in offsets:
        crop = fn.slice(resized, start=fn.stack(y, x), shape=[c, c], axis_names="HW")  # (T, c, c, 3)
        norm = (crop - mean) * inv_std
        views.append(fn.transpose(norm, perm=[3, 0, 1, 2]))  # (3, T, c, c)
    return fn.stack(*views)  # (V, 3, T, c, c)


def build_pipeline(
    spec: PreprocessSpec,
    *,
    device: str = "cpu",
    batch_size: int = 1,
    num_threads: int = 2,
    device_id: int | None = None,
):  # noqa: ANN201 - nvidia.dali.Pipeline
    """A DALI pipeline for ``spec``; feed it with ``pipe.feed_input(VIDEO, ...)``/``FRAME_INDICES``.

    ``device="cpu"`` runs here (VP8/VP9/MJPEG); ``"mixed"`` needs a GPU to run (``device_id=0``) but
    builds and serializes without one (``device_id=None``).
    """
    _check(spec, device)
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=1)
    def preprocess():  # noqa: ANN202
        return _graph(spec, device)

    return preprocess()


def run_pipeline(pipe, videos: list[bytes | np.ndarray], indices: list[np.ndarray]) -> list[np.ndarray]:  # noqa: ANN001
    """Run one batch: encoded videos and their frame indices -> ``(V, 3, T, c, c)`` float32 per video."""
    if len(videos) != len(indices):
        raise ValueError(f"{len(videos)} videos but {len(indices)} index lists")
    encoded = [
        np.frombuffer(v, np.uint8) if isinstance(v, (bytes, bytearray)) else np.asarray(v, np.uint8)
        for v in videos
    ]
    pipe.feed_input(VIDEO, encoded)
    pipe.feed_input(FRAME_INDICES, [np.asarray(i, np.int32) for i in indices])
    (out,) = pipe.run()
    if hasattr(out, "as_cpu"):
        out = out.as_cpu()
    return [np.array(out.at(i)) for i in range(len(videos))]


def serialize_pipeline(
    spec: PreprocessSpec,
    path: str | Path,
    *,
    device: str = "mixed",
    max_batch_size: int = 8,
    num_threads: int = 2,
) -> Path:
    """Write a Triton dali-backend ``model.dali`` for ``spec``; works without a GPU (``device_id=None``)."""
    pipe = build_pipeline(spec, device=device, batch_size=max_batch_size, num_threads=num_threads)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pipe.serialize(filename=str(path))
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"DALI did not write a serialized pipeline to {path}")
    return path
