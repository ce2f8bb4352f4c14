"""Opening a video and the demux-only probe: what a stream holds before anything is decoded.

The first step of the reference implementation (:mod:`training.preprocessing.decode`), of the timeline
decoder (:mod:`training.preprocessing.windows`) and of the GPU path's screen
(:mod:`training.preprocessing.nvdec`): open any source (path, bytes, uint8 array) within the limits, refuse
what is not a video, and list every video packet's pts and keyframe flag (the frame count, the presentation
timeline and a keyframe index). Every bad input raises :class:`VideoDecodeError` naming the problem.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from training.preprocessing.limits import DEFAULT_LIMITS, DecodeLimits

VideoSource = str | Path | bytes | bytearray | memoryview | np.ndarray


class VideoDecodeError(ValueError):
    """A video that cannot be turned into a clip; the message names the source and the problem."""


@dataclass
class VideoInfo:
    """What the demux-only probe learnt about a video stream."""

    width: int
    height: int
    fps: float
    total_frames: int  # video packets with data (= frames for every common codec)
    claimed_frames: int  # the container's own count (stream.frames), 0 when it has none
    codec: str
    pix_fmt: str | None
    frame_pts: list[int] | None  # presentation-ordered pts, None when timestamps are unusable
    keyframe_pts: list[int] = field(default_factory=list)  # sorted pts of keyframe packets
    truncated: bool = False  # the demuxer stopped on an error before the end of the data
    profile: str | None = None  # codec profile as FFmpeg names it ("High", "Main 10", ...)
    negative_pts: int = 0  # packets presented before time 0 (edit-list pre-roll), counted in total_frames

    @property
    def seekable(self) -> bool:
        return self.frame_pts is not None and len(self.keyframe_pts) > 0


def describe_source(source: VideoSource) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return (
        f"<{len(memoryview(source).cast('B')) if not isinstance(source, np.ndarray) else source.size} bytes>"
    )


def source_opener(source: VideoSource, limits: DecodeLimits) -> tuple[Any, str]:
    """A zero-argument callable that opens a fresh container, and a name for error messages."""
    if isinstance(source, (str, Path, os.PathLike)):
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise VideoDecodeError(f"{name}: no such file")
        size = path.stat().st_size
        if size == 0:
            raise VideoDecodeError(f"{name}: empty file")
        if size > limits.max_bytes:
            raise VideoDecodeError(f"{name}: {size} bytes exceeds the limit of {limits.max_bytes} bytes")
        return (lambda: av.open(name, mode="r", metadata_errors="ignore")), name
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8:
            raise VideoDecodeError(f"encoded video array must be uint8, got {source.dtype}")
        data = source.reshape(-1).tobytes()
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        raise VideoDecodeError(f"unsupported video source type {type(source).__name__}")
    name = f"<{len(data)} bytes>"
    if len(data) == 0:
        raise VideoDecodeError("empty video payload (0 bytes)")
    if len(data) > limits.max_bytes:
        raise VideoDecodeError(f"{name}: exceeds the limit of {limits.max_bytes} bytes")
    return (lambda: av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")), name


def open_container(opener: Any, name: str) -> Any:
    try:
        return opener()
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"{name}: not a readable video container ({exc.strerror or exc})") from exc
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise VideoDecodeError(f"{name}: cannot open ({exc})") from exc


# Demuxers that read single pictures: a PNG or JPEG is an image, not a video, and is refused.
IMAGE_FORMATS = ("image2", "image2pipe")


def video_stream(container: Any, name: str) -> Any:
    fmt = container.format.name
    if fmt.endswith("_pipe") or fmt in IMAGE_FORMATS:
        raise VideoDecodeError(f"{name}: a still image ({fmt}), not a video")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoDecodeError(f"{name}: no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # FFmpeg parsed the container but has no decoder for its codec
        raise VideoDecodeError(f"{name}: unsupported video codec (no decoder for it in this FFmpeg build)")
    return stream


def frame_rate(stream: Any) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    return 0.0


def probe_container(container: Any, name: str, limits: DecodeLimits) -> VideoInfo:
    stream = video_stream(container, name)
    cc = stream.codec_context
    width, height = int(cc.width or 0), int(cc.height or 0)
    if width * height > limits.max_pixels:
        raise VideoDecodeError(
            f"{name}: frame size {width}x{height} exceeds the limit of {limits.max_pixels} pixels"
        )
    pts: list[int | None] = []
    keys: list[int] = []
    truncated = False
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the end-of-stream flush marker
                continue
            pts.append(packet.pts)
            if packet.is_keyframe and packet.pts is not None:
                keys.append(packet.pts)
            if len(pts) > limits.max_packets:
                raise VideoDecodeError(f"{name}: more than {limits.max_packets} video packets")
    except av.error.FFmpegError:
        truncated = True  # decode what was demuxed; the decoder decides what is sound
    frame_pts: list[int] | None = None
    negative = sum(1 for p in pts if p is not None and p < 0)
    if pts and all(p is not None for p in pts):
        ordered = sorted(pts)  # type: ignore[type-var]
        if len(set(ordered)) == len(ordered):
            frame_pts = ordered  # type: ignore[assignment]
    return VideoInfo(
        width=width,
        height=height,
        fps=frame_rate(stream),
        total_frames=len(pts),
        claimed_frames=int(stream.frames or 0),
        codec=cc.name,
        pix_fmt=cc.pix_fmt,
        frame_pts=frame_pts,
        keyframe_pts=sorted(keys),
        truncated=truncated,
        profile=stream.profile,
        negative_pts=negative,
    )


def probe_video(source: VideoSource, *, limits: DecodeLimits | None = None) -> VideoInfo:
    """Demux-only look at a video: size, frame rate, frame count, keyframes. Decodes nothing."""
    limits = limits or DEFAULT_LIMITS
    opener, name = source_opener(source, limits)
    container = open_container(opener, name)
    try:
        return probe_container(container, name, limits)
    finally:
        container.close()
