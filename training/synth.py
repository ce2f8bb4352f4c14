"""A synthetic motion dataset: classes that only motion and temporal order tell apart.

Eight classes -- moving left / right / up / down, growing / shrinking, rotating clockwise / anticlockwise --
each a textured object over a textured background, with random colours, textures, sizes, speeds,
positions, lengths, resolutions and frame rates, encoded as real videos (H.264 by default) with a keyframe
every 2 s like web video.

Design rules that make it a test of *temporal* modelling:

* the first frame alone says nothing about the class: start positions are uniform over the frame
  (translation wraps around the borders), start sizes and angles share one distribution for the paired
  classes;
* every class played backwards is its paired class (left <-> right, grow <-> shrink, cw <-> ccw);
* motion is large over the clip (the object travels 40-70% of the frame, sizes change 2x, rotations turn
  120-200 degrees), so 8 sampled frames always show it unambiguously.

Writes ``DIR/{train,val}/<class>/<n>.<ext>``, ``train.list`` / ``val.list`` (``relative/path label``,
Kinetics style) and ``labels.txt`` (``id name``). Deterministic for a seed (the same bytes with the same
FFmpeg build); the validation split uses its own seeds.

    python -m training.synth --out data/synthetic [--per-class 40] [--codec h264|vp9|mjpeg] [--seed 0]
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
    """One random clip of class ``label``: ((T, H, W, 3) uint8 RGB frames, fps)."""
    name = CLASSES[label]
    w, h = SIZES[int(rng.integers(len(SIZES)))]
    fps = int(FRAME_RATES[int(rng.integers(len(FRAME_RATES)))])
    n = max(8, int(round(rng.uniform(1.5, 3.0) * fps)))
    background = _texture(rng, h, w, 0, 110)
    short = min(h, w)
    tex = _texture(rng, 64, 64, 140, 255)
    tex[:, 48:] = np.clip(tex[:, 48:].astype(int) + 60, 0, 255)  # a bright end: orientation is visible
    aspect = 3.0 if name.startswith("rotating") else float(rng.uniform(0.8, 1.25))
    base = rng.uniform(0.22, 0.4) * short  # object height in pixels (at the first frame)
    cx0, cy0 = rng.uniform(0, w), rng.uniform(0, h)
    angle0 = rng.uniform(0, 2 * math.pi) if name.startswith("rotating") else 0.0
    s = np.linspace(0.0, 1.0, n)  # (T,) normalised time
    cx = np.full(n, cx0)
    cy = np.full(n, cy0)
    scale = np.ones(n)
    angle = np.full(n, angle0)
    travel = rng.uniform(0.4, 0.7)
    if name == "moving_left":
        cx = cx0 - travel * w * s
    elif name == "moving_right":
        cx = cx0 + travel * w * s
    elif name == "moving_up":
        cy = cy0 - travel * h * s
    elif name == "moving_down":
        cy = cy0 + travel * h * s
    elif name in ("growing", "shrinking"):
        ratio = rng.uniform(1.8, 2.4)
        # Both start from the same size distribution (`base`); only the direction of change differs.
        scale = np.exp(math.log(ratio) * s * (1 if name == "growing" else -1))
        cx = np.full(n, rng.uniform(0.35, 0.65) * w)
        cy = np.full(n, rng.uniform(0.35, 0.65) * h)
    else:
        turn = math.radians(rng.uniform(120, 200))
        # Image y points down, so a clockwise turn on screen is a growing angle here.
        angle = angle0 + turn * s * (1 if name == "rotating_clockwise" else -1)
        cx = np.full(n, rng.uniform(0.4, 0.6) * w)
        cy = np.full(n, rng.uniform(0.4, 0.6) * h)

    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        # Offsets from the object centre, wrapped so an object leaving one border enters the other.
        dx = (xs - cx[i] + w / 2) % w - w / 2
        dy = (ys - cy[i] + h / 2) % h - h / 2
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
) -> dict[str, int]:
    """Write the dataset under ``out``; returns the number of videos per split."""
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
        (split, label, i) for split in SPLITS for label in range(len(CLASSES)) for i in range(counts[split])
    ]
    lines: dict[str, list[str]] = {split: [] for split in SPLITS}
    for split, label, i in tqdm(jobs, desc=f"synth {codec}", unit="video", disable=not progress):
        # One seed per (seed, split, class, index): splits never share a clip, and any clip can be rebuilt.
        rng = np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], label, i]))
        frames, fps = render_clip(label, rng)
        rel = Path(split) / CLASSES[label] / f"{i:05d}{ext}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        encode_clip(out / rel, frames, fps, codec)
        lines[split].append(f"{rel.as_posix()} {label}")
    for split, entries in lines.items():
        (out / f"{split}.list").write_text("\n".join(entries) + "\n")
    (out / "labels.txt").write_text("".join(f"{i} {name}\n" for i, name in enumerate(CLASSES)))
    return {split: len(entries) for split, entries in lines.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--per-class", type=int, default=40, help="training videos per class (default 40)")
    parser.add_argument("--val-per-class", type=int, default=None, help="default: per-class // 4 (min 1)")
    parser.add_argument("--codec", choices=sorted(SYNTH_CODECS), default="h264")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        counts = make_synthetic_dataset(args.out, args.per_class, args.val_per_class, args.codec, args.seed)
    except ValueError as exc:
        print(f"synth: {exc}", file=sys.stderr)
        return 2
    print(
        f"synth: {counts['train']} train + {counts['val']} val videos, {len(CLASSES)} classes, "
        f"{args.codec}, in {time.perf_counter() - t0:.1f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
