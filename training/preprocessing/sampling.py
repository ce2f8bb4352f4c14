"""Frame sampling: which decoded frames (by index) make up a clip.

Pure NumPy and shared by every implementation (reference PyAV decoder, DALI pipeline, Triton pre-processing),
so that all of them pick exactly the same frames for the same video. Indices count frames in presentation
order from 0 (the first decoded frame) to ``total_frames - 1``; they never look at timestamps, so variable
frame rate videos are indexed the way they are decoded.

Modes (``PreprocessSpec.sampling``):

``uniform``
    ``num_frames`` indices spread from the first to the last frame: ``linspace(0, L-1, T)`` rounded to the
    nearest integer, halves rounded up (``floor(x + 0.5)``), so the first and last frames are always taken.
``paddle``
    PaddleVideo's PP-TimeSformer test-time rule, bit for bit: ``clip_sz = 32*T/30*fps`` (evaluated in that
    order, in float64), ``idx = int64(clip(linspace(0, clip_sz-1, T), 0, L-1)) % L``. It covers a window
    of about 8.5 s (T=8) from the start of the video, not the whole video; short videos repeat their last
    frame.
``paddle_train``
    PaddleVideo's PP-TimeSformer train (and valid) rule: ``VideoDecoder(backend='pyav', mode='train')`` with
    ``get_start_end_idx(clip_idx=-1)`` draws a start ``s`` uniformly in ``[0, max(L - clip_sz, 0)]`` (same
    ``clip_sz`` as ``paddle``), decodes the window that begins there, and the sampler spreads T frames over
    it as in test mode: ``idx = start + int64(linspace(0, clip_sz-1, T))``, clipped to ``[0, L-1]``. The
    window begins on a whole frame, ``start = floor(s)`` (PaddleVideo decodes from the frame at the start's
    timestamp; flooring keeps the window inside the video). Videos shorter than ``clip_sz`` always start at
    0 and repeat their last frame, exactly like ``paddle``. Draws come from ``rng``; without one the centre
    window is taken (``start = floor(delta / 2)``), as ``segment`` falls back to segment centres.
``segment``
    TSN-style: the video is cut into T equal segments and one index is drawn uniformly inside each segment
    from ``rng`` (training); without ``rng`` the centre of each segment is taken (evaluation).

Videos shorter than T frames repeat frames in every mode.
"""

from __future__ import annotations

import math

import numpy as np

from training.preprocessing.spec import PreprocessSpec

# PaddleVideo's VideoDecoder constants for TimeSformer: sampling_rate=32, target_fps=30.
PADDLE_SAMPLING_RATE = 32
PADDLE_TARGET_FPS = 30


def paddle_clip_size(num_frames: int, fps: float) -> float:
    """The length (in frames) of PaddleVideo's test window: ``32 * num_frames / 30 * fps``.

    The expression is evaluated left to right exactly as PaddleVideo writes it, so float rounding agrees.
    """
    return PADDLE_SAMPLING_RATE * num_frames / PADDLE_TARGET_FPS * float(fps)


def uniform_indices(total_frames: int, num_frames: int) -> np.ndarray:
    """``num_frames`` indices from the first to the last frame, rounded half up."""
    pos = np.linspace(0.0, total_frames - 1, num_frames)  # (T,)
    return np.floor(pos + 0.5).astype(np.int64)


def paddle_indices(total_frames: int, num_frames: int, fps: float) -> np.ndarray:
    """PaddleVideo's ``Sampler(linspace_sample=True)`` after ``VideoDecoder(backend='pyav', mode='test')``.

    The decoder hands the sampler ``start_idx = 0`` and ``end_idx = clip_sz - 1``; the sampler takes
    ``linspace(start, end, T)``, clips to ``[0, L-1]``, truncates to int64 and wraps with ``% L``.
    """
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"paddle sampling needs a positive frame rate, got fps={fps!r}")
    clip_sz = paddle_clip_size(num_frames, fps)
    start_idx = 0.0
    end_idx = start_idx + clip_sz - 1
    offsets = np.linspace(start_idx, end_idx, num_frames)  # (T,) float64
    offsets = np.clip(offsets, 0, total_frames - 1).astype(np.int64)
    return offsets % total_frames


def paddle_train_indices(
    total_frames: int, num_frames: int, fps: float, rng: np.random.Generator | None
) -> np.ndarray:
    """PaddleVideo's training-time window: a random start in ``[0, max(L - clip_sz, 0)]`` (one
    ``rng.uniform`` draw), then ``paddle``'s linspace over ``clip_sz`` frames from there."""
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"paddle_train sampling needs a positive frame rate, got fps={fps!r}")
    clip_sz = paddle_clip_size(num_frames, fps)
    delta = max(total_frames - clip_sz, 0.0)
    s = float(rng.uniform(0.0, delta)) if rng is not None else delta / 2.0
    start = math.floor(s)
    offsets = np.linspace(0.0, clip_sz - 1, num_frames).astype(np.int64)  # (T,) within the window
    return np.minimum(start + offsets, total_frames - 1).astype(np.int64)


def segment_indices(total_frames: int, num_frames: int, rng: np.random.Generator | None) -> np.ndarray:
    """One index per equal segment: random inside it with ``rng``, its centre without."""
    edges = np.linspace(0.0, float(total_frames), num_frames + 1)  # (T+1,) segment borders
    low = np.floor(edges[:-1]).astype(np.int64)
    # A segment shorter than one frame still owns the frame it starts in (short videos repeat frames).
    high = np.maximum(np.floor(edges[1:]).astype(np.int64), low + 1)
    if rng is None:
        idx = (low + high - 1) // 2
    else:
        idx = rng.integers(low, high)  # high is exclusive
    return np.minimum(idx, total_frames - 1).astype(np.int64)


def sample_indices(
    total_frames: int,
    fps: float,
    spec: PreprocessSpec,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Frame indices (int64, shape ``(spec.num_frames,)``) for a video of ``total_frames`` decoded frames.

    ``fps`` is only used by ``paddle`` and ``paddle_train`` sampling; ``rng`` only by the random modes,
    ``segment`` and ``paddle_train``.
    """
    if isinstance(total_frames, bool) or not isinstance(total_frames, (int, np.integer)):
        raise ValueError(f"total_frames must be an integer, got {total_frames!r}")
    if total_frames < 1:
        raise ValueError(f"a video needs at least one frame to sample from, got total_frames={total_frames}")
    total_frames = int(total_frames)
    t = spec.num_frames
    if spec.sampling == "uniform":
        return uniform_indices(total_frames, t)
    if spec.sampling == "paddle":
        return paddle_indices(total_frames, t, float(fps))
    if spec.sampling == "paddle_train":
        return paddle_train_indices(total_frames, t, float(fps), rng)
    if spec.sampling == "segment":
        return segment_indices(total_frames, t, rng)
    raise ValueError(f"unknown sampling mode {spec.sampling!r}")
