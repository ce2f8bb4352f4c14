"""Long synthetic videos for the timeline: held-out motion clips back to back, with their ground truth.

Each clip of :mod:`training.synth` (drawn from seeds no training or validation clip uses) is cut to its
frame's central square -- what the demo's centre crop sees -- scaled to ``size`` x ``size`` and played for
exactly ``clip_seconds``: its frames are spread evenly over that span (the container keeps each frame's
timestamp, so clips of different frame rates make a variable frame rate file). A window of
``clip_seconds`` aligned with the clips therefore holds exactly one clip's frames, and classifying it is
classifying that clip.

Writes ``VIDEO.mp4`` and ``VIDEO.segments.json``::

    {"video": "timeline.mp4", "duration": 60.0, "labels": [...],
     "segments": [{"start": 0.0, "end": 2.0, "class_id": 3, "label": "moving_down"}, ...]}

    python -m training.synth --timeline --out data/timeline [--clips 30] [--clip-seconds 2] [--seed 0]
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from tqdm import tqdm

from training.preprocessing.transforms import resize_frame

TIME_BASE = Fraction(1, 90_000)  # MPEG's clock: exact for every common frame rate
TIMELINE_SPLIT = 2  # seed space of held-out clips (training uses 0, validation 1)


def square_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) uint8: the central square, scaled (bilinear)."""
    _, h, w, _ = frames.shape
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, f in enumerate(frames):
        out[i] = np.clip(resize_frame(f[y : y + side, x : x + side], size, size) + 0.5, 0, 255).astype(
            np.uint8
        )
    return out


def write_timed_video(
    path: str | Path,
    frames: Iterable[tuple[np.ndarray, float]],
    *,
    size: int,
    codec: str = "libx264",
    gop: int = 250,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode ``(frame, seconds)`` pairs (uint8 (size, size, 3), ascending times) with those timestamps.

    ``gop`` is the keyframe interval in frames (long GOPs make hour-long files cheap to write and make
    keyframe seeking matter).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opts = {"preset": "veryfast", "threads": "1", "crf": "20"} if codec == "libx264" else {}
    opts.update(options or {})
    last_pts = -1
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=30, options=opts)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = TIME_BASE
        stream.time_base = TIME_BASE
        stream.codec_context.gop_size = gop
        stream.codec_context.thread_count = 1
        for image, seconds in frames:
            pts = int(round(seconds / TIME_BASE))
            if pts <= last_pts:
                raise ValueError(f"frame times must increase, got {seconds} s after pts {last_pts}")
            last_pts = pts
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(
                format="yuv420p"
            )
            frame.pts, frame.time_base = pts, TIME_BASE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def clip_frame_times(start: float, seconds: float, n: int) -> list[float]:
    """``n`` frames spread evenly over ``[start, start + seconds)`` (the first at ``start``)."""
    return [start + seconds * i / n for i in range(n)]


def held_out_clips(
    classes: Sequence[str], count: int, seed: int, size: int
) -> Iterator[tuple[int, np.ndarray]]:
    """``(label, frames)`` for ``count`` clips, classes in a seeded random order, from seeds no training or
    validation clip of :mod:`training.synth` uses."""
    from training.synth_clips import CLASSES, render_clip

    order = np.random.default_rng(np.random.SeedSequence([seed, TIMELINE_SPLIT])).integers(
        0, len(classes), count
    )
    for i, label in enumerate(order):
        full = CLASSES.index(classes[int(label)])
        rng = np.random.default_rng(np.random.SeedSequence([seed, TIMELINE_SPLIT, full, i]))
        frames, _ = render_clip(full, rng)
        yield int(label), square_frames(frames, size)


def make_timeline_video(
    out: str | Path,
    *,
    clips: int = 30,
    clip_seconds: float = 2.0,
    classes: Sequence[str] | None = None,
    size: int = 64,
    seed: int = 0,
    name: str = "timeline",
    progress: bool = True,
) -> tuple[Path, Path]:
    """Write ``out/NAME.mp4`` (held-out clips back to back) and ``out/NAME.segments.json``."""
    from training.synth_clips import DEMO_CLASSES

    names = list(classes or DEMO_CLASSES)
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    if not (clip_seconds > 0 and math.isfinite(clip_seconds)):
        raise ValueError(f"clip_seconds must be positive, got {clip_seconds}")
    out = Path(out)
    segments: list[dict[str, Any]] = []

    def frames() -> Iterator[tuple[np.ndarray, float]]:
        it = held_out_clips(names, clips, seed, size)
        for k, (label, clip) in enumerate(tqdm(it, total=clips, desc="timeline", disable=not progress)):
            start = k * clip_seconds
            segments.append(
                {"start": start, "end": start + clip_seconds, "class_id": label, "label": names[label]}
            )
            yield from zip(clip, clip_frame_times(start, clip_seconds, len(clip)))

    video = write_timed_video(out / f"{name}.mp4", frames(), size=size, gop=120)
    truth = out / f"{name}.segments.json"
    record = {"video": video.name, "duration": clips * clip_seconds, "labels": names, "segments": segments}
    truth.write_text(json.dumps(record, indent=1) + "\n")
    return video, truth


def read_segments(path: str | Path) -> dict[str, Any]:
    """A ``.segments.json`` file; ``ValueError`` naming a malformed one."""
    try:
        d = json.loads(Path(path).read_text())
        for s in d["segments"]:
            float(s["start"]), float(s["end"]), int(s["class_id"])
        return d
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a segments file ({type(exc).__name__}: {exc})") from exc


def make_long_video(
    path: str | Path, minutes: float, *, fps: int = 10, size: int = 48, gop: int = 300, seed: int = 0
) -> Path:
    """A long, cheap file for memory and latency measurements: a few rendered clips cycled for ``minutes``
    at ``fps`` (low resolution, long GOP: an hour encodes in about a minute on one core)."""
    from training.synth_clips import DEMO_CLASSES

    pool = [clip for _, clip in held_out_clips(DEMO_CLASSES, 6, seed, size)]
    total = int(round(minutes * 60 * fps))

    def frames() -> Iterator[tuple[np.ndarray, float]]:
        flat = [f for clip in pool for f in clip]
        for i in range(total):
            yield flat[i % len(flat)], i / fps

    return write_timed_video(path, frames(), size=size, gop=gop)
