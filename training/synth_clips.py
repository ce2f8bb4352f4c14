"""The synthetic motion classes and how one clip of each is drawn (frames only; no encoding, no files).

Shared by the dataset writer (:mod:`training.synth`) and the timeline writer (:mod:`training.synth_timeline`);
the design rules that make the classes a test of temporal modelling are in :mod:`training.synth`'s docstring.
"""

from __future__ import annotations

import math

import numpy as np

CLASSES = (
    "moving_left",
    "moving_right",
    "moving_up",
    "moving_down",
    "growing",
    "shrinking",
    "rotating_clockwise",
    "rotating_anticlockwise",
)
SIZES = ((96, 64), (112, 64), (128, 72), (80, 80), (64, 96), (128, 96), (96, 96), (72, 128))  # (W, H)
FRAME_RATES = (12, 15, 20, 24, 25, 30)
# The CPU demo's set (`make demo`, `training.demo_check`, `--demo`): the classes and size that
# training/configs/synthetic_tiny.yaml learns to >= 95 % in minutes on two cores. With fewer than ~100
# clips per class the tiny model memorises its training clips instead of learning direction; the
# rotation classes (and all eight at once) need more training than the demo's five minutes.
DEMO_CLASSES = ("moving_left", "moving_right", "moving_up", "moving_down", "growing", "shrinking")
DEMO_PER_CLASS = 100


def _texture(rng: np.random.Generator, h: int, w: int, lo: int, hi: int) -> np.ndarray:
    """A smooth random colour texture (H, W, 3) uint8 in [lo, hi]: coarse noise upsampled."""
    gh, gw = max(2, h // 8), max(2, w // 8)
    coarse = rng.uniform(0.0, 1.0, size=(gh, gw, 3))
    yi = np.linspace(0, gh - 1, h).round().astype(int)
    xi = np.linspace(0, gw - 1, w).round().astype(int)
    fine = coarse[yi][:, xi] * 0.6 + rng.uniform(0.0, 1.0, size=(h, w, 3)) * 0.4
    tint = rng.uniform(0.3, 1.0, size=3)
    return (lo + (hi - lo) * fine * tint).astype(np.uint8)


def render_clip(label: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """One random clip of class ``label``: ((T, H, W, 3) uint8 RGB frames, fps).

    Every path (position, scale, angle) is symmetric about the clip's middle frame and its middle value is
    drawn the same way for both classes of a pair, so a clip played backwards is a clip of the paired class
    with exactly the paired class's distribution, and the set of frames (order ignored) says nothing about
    the direction. All motion happens inside the frame's central square, which is what a centre crop keeps.
    """
    name = CLASSES[label]
    w, h = SIZES[int(rng.integers(len(SIZES)))]
    fps = int(FRAME_RATES[int(rng.integers(len(FRAME_RATES)))])
    n = max(8, int(round(rng.uniform(1.5, 3.0) * fps)))
    background = _texture(rng, h, w, 0, 110)
    side = min(h, w)
    ox, oy = (w - side) / 2, (h - side) / 2  # the central square's corner
    tex = _texture(rng, 64, 64, 140, 255)
    tex[:, 48:] = np.clip(tex[:, 48:].astype(int) + 60, 0, 255)  # a bright end: orientation is visible
    s = np.linspace(-0.5, 0.5, n)  # (T,) time, centred on the middle frame
    rot = name.startswith("rotating")
    aspect = 3.0 if rot else float(rng.uniform(0.8, 1.25))
    sign = 1.0 if name in ("moving_right", "moving_down", "growing", "rotating_clockwise") else -1.0
    base = rng.uniform(0.2, 0.3) * side  # object height in pixels (at the middle frame)
    scale = np.ones(n)
    angle = np.full(n, rng.uniform(0, 2 * math.pi) if rot else 0.0)
    cx = np.full(n, ox + side * rng.uniform(0.4, 0.6))
    cy = np.full(n, oy + side * rng.uniform(0.4, 0.6))
    if name.startswith("moving"):
        travel = rng.uniform(0.45, 0.6) * side
        half = base * max(aspect, 1.0) / 2 * 1.05  # the object's half extent, with a margin
        # The whole path stays inside the square: no wrap-around (an object leaving one border and
        # entering the other would show motion both ways).
        lo, hi = half + travel / 2, side - half - travel / 2
        mid = rng.uniform(lo, hi) if hi > lo else side / 2
        across = rng.uniform(half, side - half)
        if name in ("moving_left", "moving_right"):
            cx, cy = ox + mid + sign * travel * s, np.full(n, oy + across)
        else:
            cx, cy = np.full(n, ox + across), oy + mid + sign * travel * s
    elif name in ("growing", "shrinking"):
        ratio = rng.uniform(2.0, 2.6)  # size at the last frame / size at the first (or its inverse)
        scale = np.exp(math.log(ratio) * s * sign)
        base = rng.uniform(0.25, 0.35) * side
    else:
        # Image y points down, so a clockwise turn on screen is a growing angle here. Below 180 degrees
        # over the clip, the 8 sampled frames are less than 30 degrees apart: the turn is unambiguous.
        turn = math.radians(rng.uniform(120, 180))
        angle = angle[0] + turn * s * sign
        base = rng.uniform(0.2, 0.26) * side  # the bar (3x as long) stays inside the square

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        dx, dy = xs - cx[i], ys - cy[i]  # (H, W) offsets from the object centre
        c, sn = math.cos(angle[i]), math.sin(angle[i])
        u = (c * dx + sn * dy) / (base * aspect * scale[i])  # object frame, [-0.5, 0.5] inside
        v = (-sn * dx + c * dy) / (base * scale[i])
        inside = (np.abs(u) < 0.5) & (np.abs(v) < 0.5)
        tu = np.clip(((u + 0.5) * 63).astype(int), 0, 63)
        tv = np.clip(((v + 0.5) * 63).astype(int), 0, 63)
        frame = background.copy()
        frame[inside] = tex[tv[inside], tu[inside]]
        frames[i] = frame
    return frames, fps
