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
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from training.synth_clips import CLASSES, DEMO_CLASSES, DEMO_PER_CLASS, render_clip

SPLITS = {"train": 0, "val": 1}  # split -> its own seed stream
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
