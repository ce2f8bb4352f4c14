"""Resize, crop and normalise decoded frames into the model's views, in NumPy (no torch).

``(T, H, W, 3)`` uint8 frames -> ``(V, 3, T, c, c)`` float32: short side scaled to ``spec.short_side``
(bilinear, ``align_corners=False``, no antialias, as PaddleVideo's ``JitterScale`` with paddle
``F.interpolate``; long side ``int(floor(long/short*size))``), then crops (``three`` = PaddleVideo's
UniformCrop, ``center``, ``random`` with optional flip) and ``(rgb/255 - mean) / std``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from training.preprocessing.spec import PreprocessSpec


def scaled_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(new_h, new_w)``: short side -> ``short_side``, long side ``int(floor(long / short * short_side))``.

    The float expression is PaddleVideo's ``JitterScale`` one, so sizes agree to the pixel.
    """
    if width <= height and width == short_side or height <= width and height == short_side:
        return height, width
    if width < height:
        return int(math.floor((float(height) / width) * short_side)), short_side
    return short_side, int(math.floor((float(width) / height) * short_side))


@lru_cache(maxsize=64)
def _grid(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source rows/columns and weights of a half-pixel bilinear resize along one axis.

    The arithmetic is torch's and paddle's CPU kernel's in float32 (``src = (dst + 0.5) * in/out - 0.5``,
    clamped at 0; the upper neighbour clamped at the edge), so the grid is the same to the last bit.
    Returns ``(i0, i1, w0, w1)`` with weights shaped for broadcasting along that axis.
    """
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    w0 = (np.float32(1.0) - w1).astype(np.float32)
    return i0, i1, w0, w1


def resize_frame(frame: np.ndarray, nh: int, nw: int) -> np.ndarray:
    """One uint8 frame ``(H, W, 3)`` -> float32 ``(nh, nw, 3)`` on the 0..255 scale, bilinear, no antialias.

    Separable: rows first (on the uint8 rows it needs), then columns; about 1e-4 of torch's
    ``F.interpolate`` on the 0..255 scale (the same grid, another order of the float sums).
    """
    h, w = frame.shape[:2]
    if (h, w) == (nh, nw):
        return frame.astype(np.float32)
    y0, y1, wy0, wy1 = _grid(h, nh)
    x0, x1, wx0, wx1 = _grid(w, nw)
    rows = frame[y0].astype(np.float32)  # (nh, W, 3)
    rows *= wy0[:, None, None]
    rows += frame[y1].astype(np.float32) * wy1[:, None, None]
    out = rows[:, x0]  # (nh, nw, 3)
    out *= wx0[None, :, None]
    out += rows[:, x1] * wx1[None, :, None]
    return out


def resize_frames(frames: np.ndarray | list[np.ndarray], short_side: int) -> np.ndarray:
    """uint8 frames ``(T, H, W, 3)`` -> float32 ``(T, 3, h, w)`` on the 0..255 scale, short side scaled.

    Frames of differing sizes are each scaled to the first one's size.
    """
    nh, nw = scaled_size(*frames[0].shape[:2], short_side)
    out = np.empty((len(frames), 3, nh, nw), dtype=np.float32)  # (T, 3, h, w)
    for i, f in enumerate(frames):
        out[i] = resize_frame(np.asarray(f), nh, nw).transpose(2, 0, 1)
    return out


def crop_offsets(
    height: int, width: int, spec: PreprocessSpec, rng: np.random.Generator | None = None
) -> list[tuple[int, int]]:
    """``(y, x)`` top-left corners of the views for a frame of this (already resized) size.

    ``three``: PaddleVideo's UniformCrop -- landscape: left, right, centre (x = 0, 2s, s with
    ``s = (W - crop) // 2``, y centred); portrait: top, bottom, middle. ``center``: ``((H-c)//2, (W-c)//2)``.
    ``random``: uniform over valid corners from ``rng`` (centre without ``rng``).
    """
    c = spec.crop_size
    if height < c or width < c:
        raise ValueError(f"a {c}x{c} crop does not fit a {width}x{height} frame (short_side < crop_size?)")
    cy, cx = (height - c) // 2, (width - c) // 2
    if spec.crops == "three":
        if height <= width:
            return [(cy, 0), (cy, 2 * cx), (cy, cx)]
        return [(0, cx), (2 * cy, cx), (cy, cx)]
    if spec.crops == "random" and rng is not None:
        return [(int(rng.integers(0, height - c + 1)), int(rng.integers(0, width - c + 1)))]
    return [(cy, cx)]


def views_from_frames(
    frames: np.ndarray | list[np.ndarray],
    spec: PreprocessSpec,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """uint8 frames ``(T, H, W, 3)`` -> normalised views ``(V, 3, T, c, c)`` float32 (resize, crop, flip).

    With ``crops='random'`` and ``rng``: a random short side in ``[short_side, short_side_max]``, a random
    crop and (when ``spec.flip``) a horizontal flip with probability 0.5. Without ``rng`` it is
    deterministic (short side ``short_side``, centre crop, no flip).
    """
    train = spec.crops == "random" and rng is not None
    short = spec.short_side
    if train and spec.short_side_max is not None:
        short = int(rng.integers(spec.short_side, spec.short_side_max + 1))
    t = len(frames)
    nh, nw = scaled_size(*frames[0].shape[:2], short)
    c = spec.crop_size
    offsets = crop_offsets(nh, nw, spec, rng if train else None)
    flip = bool(train and spec.flip and rng.random() < 0.5)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    out = np.empty((len(offsets), 3, t, c, c), dtype=np.float32)  # (V, 3, T, c, c)
    # One frame at a time: only one frame's float copy lives beside the output, and each step stays in cache.
    for i, frame in enumerate(frames):
        x = resize_frame(np.asarray(frame), nh, nw)  # (nh, nw, 3), 0..255
        # Normalise once per frame (views overlap), in place: (x/255 - mean)/std.
        x /= np.float32(255.0)
        x -= mean
        x /= std
        for v, (y, x0) in enumerate(offsets):
            crop = x[y : y + c, x0 : x0 + c]  # (c, c, 3) view, no copy
            if flip:
                crop = crop[:, ::-1]
            out[v, :, i] = crop.transpose(2, 0, 1)
    return out
