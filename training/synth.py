"""A synthetic motion dataset: classes that only motion and temporal order tell apart.

Eight classes -- moving left / right / up / down, growing / shrinking, rotating clockwise / anticlockwise --
each a textured object over a textured background, with random colours, textures, sizes, speeds,
positions, lengths, resolutions and frame rates, encoded as real videos (H.264 by default) with a keyframe
every 2 s like web video.

Design rules that make it a test of *temporal* modelling:

* every class played backwards is its paired class (left <-> right, up <-> down, grow <-> shrink,
  cw <-> ccw), with the same distribution: paths are symmetric about the middle frame, whose position,
  size and angle are drawn alike for both classes of a pair, so the frames without their order say
  nothing about the direction;
* motion stays inside the frame's central square for the whole clip (no wrap-around at the borders,
  which would show motion both ways), so a centre crop sees all of it;
* motion is large over the clip (the object travels 45-60% of the square, sizes change 2-2.6x, the bar
  turns 120-180 degrees), so 8 sampled frames always show it unambiguously.

Writes ``DIR/{train,val}/<class>/<n>.<ext>``, ``train.list`` / ``val.list`` (``relative/path label``,
Kinetics style) and ``labels.txt`` (``id name``). Deterministic for a seed (the same bytes with the same
FFmpeg build); the validation split uses its own seeds.

    python -m training.synth --out data/synthetic [--per-class 40] [--codec h264|vp9|mjpeg] [--seed 0]
        [--classes moving_left,moving_right]
    python -m training.synth --timeline --out data/timeline [--clips 30] [--clip-seconds 2]

``--timeline`` writes one long video of held-out clips back to back and its ground-truth segments
(:mod:`training.synth_timeline`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

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
# codec -> (FFmpeg encoder, extension, pixel format, options)
SYNTH_CODECS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "h264": ("libx264", ".mp4", "yuv420p", {"preset": "veryfast", "threads": "1", "crf": "20"}),
    "vp9": (
        "libvpx-vp9",
        ".webm",
        "yuv420p",
        {"deadline": "realtime", "cpu-used": "8", "threads": "1", "crf": "24", "b": "0"},
    ),
    "mjpeg": ("mjpeg", ".avi", "yuvj420p", {}),
}
SIZES = ((96, 64), (112, 64), (128, 72), (80, 80), (64, 96), (128, 96), (96, 96), (72, 128))  # (W, H)
FRAME_RATES = (12, 15, 20, 24, 25, 30)
SPLITS = {"train": 0, "val": 1}
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


def encode_clip(path: Path, frames: np.ndarray, fps: int, codec: str) -> Path:
    """Encode (T, H, W, 3) uint8 frames with a keyframe every 2 s (web-video-like GOP)."""
    encoder, _, pix_fmt, options = SYNTH_CODECS[codec]
    _, h, w, _ = frames.shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(encoder, rate=Fraction(fps), options=dict(options))
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        stream.codec_context.gop_size = 2 * fps
        stream.codec_context.thread_count = 1  # one encoder thread: the same bytes for the same seed
        if encoder == "mjpeg":
            stream.codec_context.flags |= av.codec.context.Flags.qscale
            stream.codec_context.qscale = 3
        for i, image in enumerate(frames):
            # Convert to the encoder's pixel format here, with a fresh converter: the encoder's own
            # cached converter made the bytes depend on the previously encoded clip's size.
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_synthetic_dataset(
    out: str | Path,
    per_class: int = 40,
    val_per_class: int | None = None,
    codec: str = "h264",
    seed: int = 0,
    progress: bool = True,
    classes: tuple[str, ...] | list[str] | None = None,
) -> dict[str, int]:
    """Write the dataset under ``out``; returns the number of videos per split. ``classes`` picks a subset
    of :data:`CLASSES` (labels then count 0.. in that order; each clip is the one the full set has)."""
    names = tuple(CLASSES if classes is None else classes)
    unknown = [c for c in names if c not in CLASSES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"classes must be distinct names from {list(CLASSES)}, got {list(names)}")
    if codec not in SYNTH_CODECS:
        raise ValueError(f"codec must be one of {sorted(SYNTH_CODECS)}, got {codec!r}")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    val_per_class = max(1, per_class // 4) if val_per_class is None else val_per_class
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ext = SYNTH_CODECS[codec][1]
    counts = {"train": per_class, "val": val_per_class}
    jobs = [
        (split, label, i) for split in SPLITS for label in range(len(names)) for i in range(counts[split])
    ]
    lines: dict[str, list[str]] = {split: [] for split in SPLITS}
    for split, label, i in tqdm(jobs, desc=f"synth {codec}", unit="video", disable=not progress):
        # One seed per (seed, split, class, index): splits never share a clip, and any clip can be rebuilt.
        full = CLASSES.index(names[label])
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], full, i]))
        frames, fps = render_clip(full, rng)
        rel = Path(split) / names[label] / f"{i:05d}{ext}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        encode_clip(out / rel, frames, fps, codec)
        lines[split].append(f"{rel.as_posix()} {label}")
    for split, entries in lines.items():
        (out / f"{split}.list").write_text("\n".join(entries) + "\n")
    (out / "labels.txt").write_text("".join(f"{i} {name}\n" for i, name in enumerate(names)))
    return {split: len(entries) for split, entries in lines.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--per-class", type=int, default=40, help="training videos per class (default 40)")
    parser.add_argument("--val-per-class", type=int, default=None, help="default: per-class // 4 (min 1)")
    parser.add_argument("--codec", choices=sorted(SYNTH_CODECS), default="h264")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", default=None, help="comma-separated subset of the class names")
    parser.add_argument(
        "--demo",
        action="store_true",
        help=f"the CPU demo's set: {DEMO_PER_CLASS} per class of {','.join(DEMO_CLASSES)}",
    )
    parser.add_argument("--timeline", action="store_true", help="one long video of held-out clips + segments")
    parser.add_argument("--clips", type=int, default=30, help="--timeline: clips back to back")
    parser.add_argument("--clip-seconds", type=float, default=2.0, help="--timeline: each clip's length")
    args = parser.parse_args(argv)
    classes = args.classes.split(",") if args.classes else None
    if args.timeline:
        from training.synth_timeline import make_timeline_video

        try:
            video, truth = make_timeline_video(
                args.out, clips=args.clips, clip_seconds=args.clip_seconds, classes=classes, seed=args.seed
            )
        except ValueError as exc:
            print(f"synth: {exc}", file=sys.stderr)
            return 2
        print(f"synth: {args.clips} held-out clips of {args.clip_seconds:g} s -> {video} + {truth}")
        return 0
    if args.demo:
        if args.classes or args.per_class != parser.get_default("per_class"):
            print("synth: --demo sets the classes and the per-class count itself", file=sys.stderr)
            return 2
        classes, args.per_class = list(DEMO_CLASSES), DEMO_PER_CLASS
    t0 = time.perf_counter()
    try:
        counts = make_synthetic_dataset(
            args.out, args.per_class, args.val_per_class, args.codec, args.seed, classes=classes
        )
    except ValueError as exc:
        print(f"synth: {exc}", file=sys.stderr)
        return 2
    print(
        f"synth: {counts['train']} train + {counts['val']} val videos, {len(classes or CLASSES)} classes, "
        f"{args.codec}, in {time.perf_counter() - t0:.1f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
