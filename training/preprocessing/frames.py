"""Frame-level decoding with PyAV: the building blocks clip decoding and the timeline decoder share.

Work accounting with the ``max_decoded_frames`` limit (:class:`DecodeWork`), decoder threading, decoding a
stream in output order, decoding one keyframe interval with non-reference frames skipped
(:func:`interval_frames`), RGB conversion and the display rotation of a frame.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import av
import numpy as np

from training.preprocessing.limits import DecodeLimits
from training.preprocessing.probe import VideoDecodeError


class DecodeWork:
    """Counts decoder output across passes (and worker threads) and enforces ``max_decoded_frames``."""

    def __init__(self, name: str, limit: int) -> None:
        self.name, self.limit, self.frames, self.seeks, self.errors = name, limit, 0, 0, 0
        self.packets = 0  # packets sent to the decoder (skipped non-reference ones included)
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self.frames += 1
            over = self.frames > self.limit
        if over:
            raise VideoDecodeError(
                f"{self.name}: decoding would need more than {self.limit} frames (max_decoded_frames)"
            )

    def packet(self) -> None:
        with self._lock:
            self.packets += 1

    def seek(self) -> None:
        with self._lock:
            self.seeks += 1

    def error(self) -> None:
        with self._lock:
            self.errors += 1


def configure_decoder(stream: Any, limits: DecodeLimits, threads: int | None = None) -> None:
    """Frame + slice threading with ``threads`` (default ``limits.threads``; 0 = FFmpeg's choice)."""
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = limits.threads if threads is None else threads


def decoded_frames(container: Any, stream: Any, work: DecodeWork) -> Iterator[Any]:
    """Every decoded frame in output (presentation) order; a packet that fails to decode is skipped."""
    try:
        for packet in container.demux(stream):
            work.packet()
            try:
                out = packet.decode()
            except av.error.FFmpegError:
                work.error()  # corrupt packet: keep going, what is sound still decodes
                continue
            for frame in out:
                work.tick()
                yield frame
    except av.error.FFmpegError:
        work.error()  # demuxer gave up (truncated data): drain what the decoder still holds
        try:
            for frame in stream.codec_context.decode(None):
                work.tick()
                yield frame
        except av.error.FFmpegError:
            return


def check_frame_size(frame: Any, name: str, limits: DecodeLimits) -> None:
    if frame.width * frame.height > limits.max_pixels:
        raise VideoDecodeError(
            f"{name}: frame size {frame.width}x{frame.height} exceeds the limit of {limits.max_pixels} pixels"
        )


def to_rgb(frame: Any) -> np.ndarray:
    # Any pixel format (gray, yuv420p10le, yuv444p, yuvj...) -> packed RGB8 via swscale, as PaddleVideo does.
    # One swscale thread: PyAV's default (one per core) syncs its workers on every frame, which at web
    # sizes costs more than it saves (docs/preprocessing.md) and stalls whenever a worker waits for a busy
    # core; the pixels are identical (checked on 8/10-bit, 4:2:0/4:2:2/4:4:4, gray).
    return frame.to_ndarray(format="rgb24", threads=1)  # (H, W, 3) uint8


def frame_rotation(frame: Any, stream: Any) -> int:
    try:
        rot = int(round(frame.rotation or 0))
    except (AttributeError, ValueError, TypeError):
        rot = 0
    if rot == 0:
        # Legacy files: a clockwise 'rotate' tag instead of a display matrix.
        tag = stream.metadata.get("rotate") if stream.metadata else None
        if tag:
            try:
                rot = -int(float(tag))
            except ValueError:
                rot = 0
    if rot % 90:
        return 0  # only quarter turns are meaningful for a pixel grid
    rot %= 360
    return rot - 360 if rot > 180 else rot  # (-180, 180]


def interval_frames(
    container: Any, stream: Any, work: DecodeWork, pending: set[int], keep: set[int]
) -> Iterator[Any]:
    """Frames decoded from the current (just sought) position until the ``pending`` pts have all been fed.

    Packets whose pts is not in ``keep`` go with ``skip_frame='NONREF'``: a frame no other frame
    references is then dropped unseen, while every reference frame (and every needed frame) decodes
    exactly as usual -- needed pixels never change. The setting travels with each packet into FFmpeg's
    frame threads. (``NONKEY`` or ``NONINTRA`` would drop reference frames, so they cannot help.) Stops early
    when the demuxer lands past the group (a second keyframe beyond every pending pts: an open GOP's
    leading pictures come at most one keyframe late), or the first packet lies after a pending pts (the
    seek overshot); then drains what the decoder holds.
    """
    cc = stream.codec_context
    last = max(pending)
    first = True
    late_keys = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            pts = packet.pts
            if first:
                first = False
                if pts is not None and pts > min(pending):
                    return  # the seek landed after a needed frame
            if packet.is_keyframe and pts is not None and pts > last:
                late_keys += 1
                if late_keys > 1:
                    break
            mode = "DEFAULT" if pts is None or pts in keep else "NONREF"
            if cc.skip_frame != mode:
                cc.skip_frame = mode
            work.packet()
            try:
                out = packet.decode()
            except av.error.FFmpegError:
                work.error()
                out = []
            for frame in out:
                work.tick()
                yield frame
            pending.discard(pts)
            if not pending:
                break
    except av.error.FFmpegError:
        work.error()  # the demuxer gave up (truncated data): drain what the decoder still holds
    try:
        for frame in cc.decode(None):
            work.tick()
            yield frame
    except av.error.FFmpegError:
        work.error()
