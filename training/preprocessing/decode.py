"""Reference preprocessing: encoded video -> ``(V, 3, T, H, W)`` float32, on the CPU with PyAV (FFmpeg).

This is the implementation training, the tests and the CPU serving path use; the DALI pipeline
(``training/preprocessing/dali.py``) is held equal to it. Steps:

1. **Probe** (demux only, no decoding): every video packet's pts and keyframe flag. This gives the frame
   count (checked against the container's claim), the presentation timeline and a keyframe index.
2. **Sample** indices with :func:`training.preprocessing.sampling.sample_indices`.
3. **Decode only what the indices need**: frames are identified by pts and grouped by keyframe interval;
   each interval is decoded from its keyframe up to its last needed packet (decode order), non-reference
   frames that are not needed skipped, then drained. Intervals may decode in parallel
   (``DecodeLimits.threads``). Frames that are not needed are never converted to RGB nor kept; the
   output is bit-identical whatever the thread count. When timestamps are unusable (missing/duplicated
   pts) or a needed frame does not come out of the decoder (corrupt data, a container that claims more
   frames than it holds), decoding falls back to counting frames in decode-output order from the start;
   the indices are then re-sampled over the frames that really decode.
4. **Rotate** by the display matrix (or legacy ``rotate`` tag), so portrait phone videos come out upright.
5. **Resize, crop, normalise** (:mod:`training.preprocessing.transforms`).

Every bad input raises :class:`VideoDecodeError` (a ``ValueError``) with a message naming the problem.
"""

from __future__ import annotations

import bisect
import copy
import io
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from training.preprocessing.limits import DEFAULT_LIMITS, DecodeLimits
from training.preprocessing.sampling import sample_indices
from training.preprocessing.spec import PreprocessSpec
from training.preprocessing.transforms import views_from_frames

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


@dataclass
class DecodedClip:
    """Sampled frames as decoded (uint8 RGB, rotation applied), before resizing."""

    frames: list[np.ndarray]  # T x (H, W, 3) uint8, in index order (repeats allowed)
    indices: list[int]
    total_frames: int  # frames the indices were sampled over (decodable ones if the claim was wrong)
    fps: float
    rotation: int
    decoded_frames: int  # decode work spent (frames out of the decoder)
    seeks: int
    info: VideoInfo
    decoded_packets: int = 0  # packets sent to the decoder over every pass


@dataclass
class PreprocessedClip:
    """The model-ready clip and how it was made."""

    views: np.ndarray  # (V, 3, T, H, W) float32, C-contiguous
    indices: list[int]
    total_frames: int
    fps: float
    rotation: int = 0
    decoded_frames: int = 0
    seeks: int = 0


# ----------------------------------------------------------------------------------------------------
# Opening and probing


def _describe(source: VideoSource) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return (
        f"<{len(memoryview(source).cast('B')) if not isinstance(source, np.ndarray) else source.size} bytes>"
    )


def _as_opener(source: VideoSource, limits: DecodeLimits) -> tuple[Any, str]:
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


def _open(opener: Any, name: str) -> Any:
    try:
        return opener()
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(f"{name}: not a readable video container ({exc.strerror or exc})") from exc
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise VideoDecodeError(f"{name}: cannot open ({exc})") from exc


# Demuxers that read single pictures: a PNG or JPEG is an image, not a video, and is refused.
_IMAGE_FORMATS = ("image2", "image2pipe")


def _video_stream(container: Any, name: str) -> Any:
    fmt = container.format.name
    if fmt.endswith("_pipe") or fmt in _IMAGE_FORMATS:
        raise VideoDecodeError(f"{name}: a still image ({fmt}), not a video")
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoDecodeError(f"{name}: no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # FFmpeg parsed the container but has no decoder for its codec
        raise VideoDecodeError(f"{name}: unsupported video codec (no decoder for it in this FFmpeg build)")
    return stream


def _frame_rate(stream: Any) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    return 0.0


def _probe_container(container: Any, name: str, limits: DecodeLimits) -> VideoInfo:
    stream = _video_stream(container, name)
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
        fps=_frame_rate(stream),
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
    opener, name = _as_opener(source, limits)
    container = _open(opener, name)
    try:
        return _probe_container(container, name, limits)
    finally:
        container.close()


# ----------------------------------------------------------------------------------------------------
# Decoding


class _Work:
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


def _configure(stream: Any, limits: DecodeLimits, threads: int | None = None) -> None:
    """Frame + slice threading with ``threads`` (default ``limits.threads``; 0 = FFmpeg's choice)."""
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = limits.threads if threads is None else threads


def _frames(container: Any, stream: Any, work: _Work) -> Iterator[Any]:
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


def _check_size(frame: Any, name: str, limits: DecodeLimits) -> None:
    if frame.width * frame.height > limits.max_pixels:
        raise VideoDecodeError(
            f"{name}: frame size {frame.width}x{frame.height} exceeds the limit of {limits.max_pixels} pixels"
        )


def _to_rgb(frame: Any) -> np.ndarray:
    # Any pixel format (gray, yuv420p10le, yuv444p, yuvj...) -> packed RGB8 via swscale, as PaddleVideo does.
    # One swscale thread: PyAV's default (one per core) syncs its workers on every frame, which at web
    # sizes costs more than it saves (docs/preprocessing.md) and stalls whenever a worker waits for a busy
    # core; the pixels are identical (checked on 8/10-bit, 4:2:0/4:2:2/4:4:4, gray).
    return frame.to_ndarray(format="rgb24", threads=1)  # (H, W, 3) uint8


def _frame_rotation(frame: Any, stream: Any) -> int:
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


def _decode_by_pts(
    container: Any,
    opener: Any,
    name: str,
    info: VideoInfo,
    needed: list[int],
    limits: DecodeLimits,
    work: _Work,
) -> tuple[dict[int, np.ndarray], int]:
    """Seek path: frames ``needed`` (sorted unique indices) by pts; returns what it found and the rotation.

    Needed frames are grouped by the keyframe interval they lie in; intervals decode independently of one
    another. With several decoder threads allowed and several intervals to decode, the intervals are
    shared among that many workers (longest first, each to the least loaded), each with its own
    container (``opener``) and a single-threaded decoder: whole intervals in parallel scale better than
    FFmpeg's frame threads, which sync on every frame and must refill their pipeline after every seek.
    Otherwise everything runs on ``container`` (the one the probe read: opening costs a stream-info pass,
    which may decode a frame) with ``limits.threads`` frame threads. Anything not found is left to the
    caller's decode-from-the-start fallback.
    """
    assert info.frame_pts is not None
    frame_pts = info.frame_pts
    targets = [frame_pts[i] for i in needed]  # ascending pts
    index_of = dict(zip(targets, needed))
    keys = info.keyframe_pts
    groups: dict[int, list[int]] = {}
    for t in targets:
        groups.setdefault(keys[max(bisect.bisect_right(keys, t) - 1, 0)], []).append(t)
    workers = min(_interval_workers(limits), len(groups))
    if workers <= 1:
        found, rotation = _decode_groups(container, name, groups, targets, limits, work, limits.threads)
        return {index_of[p]: a for p, a in found.items()}, rotation
    # Cost of an interval: frames from its keyframe to its last needed one (display order, a close proxy
    # for the packets fed). Longest first, each to the least loaded worker.
    cost = {
        k: bisect.bisect_left(frame_pts, g[-1]) - bisect.bisect_left(frame_pts, k) + 1
        for k, g in groups.items()
    }
    shares: list[dict[int, list[int]]] = [{} for _ in range(workers)]
    load = [0] * workers
    for k in sorted(groups, key=lambda k: -cost[k]):
        w = load.index(min(load))
        shares[w][k] = groups[k]
        load[w] += cost[k]
    shares = [dict(sorted(s.items())) for s in shares if s]  # forward seeks within a share

    def run(share: dict[int, list[int]]) -> tuple[dict[int, np.ndarray], int]:
        own = _open(opener, name)
        try:
            return _decode_groups(own, name, share, targets, limits, work, 1)
        finally:
            own.close()

    with ThreadPoolExecutor(max_workers=len(shares) - 1, thread_name_prefix="decode") as pool:
        futures = [pool.submit(run, share) for share in shares[1:]]
        results = [_decode_groups(container, name, shares[0], targets, limits, work, 1)]
        results += [f.result() for f in futures]  # re-raises a worker's VideoDecodeError
    found: dict[int, np.ndarray] = {}
    rotation, first = 0, None
    for part, rot in results:
        found.update(part)
        if part and (first is None or min(part) < first):
            first, rotation = min(part), rot  # the stream's rotation, as its earliest frame says
    return {index_of[p]: a for p, a in found.items()}, rotation


def _interval_workers(limits: DecodeLimits) -> int:
    """How many keyframe intervals may decode at once: ``limits.threads``, or one per usable core for 0."""
    if limits.threads > 0:
        return limits.threads
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _decode_groups(
    container: Any,
    name: str,
    groups: dict[int, list[int]],
    targets: list[int],
    limits: DecodeLimits,
    work: _Work,
    threads: int,
) -> tuple[dict[int, np.ndarray], int]:
    """Decode keyframe intervals ``groups`` (keyframe pts -> needed pts) on one container, by pts.

    For each interval still missing a frame: seek to its keyframe, feed packets in decode order only until
    every needed packet of the interval has been sent (a frame depends only on packets before it in
    decode order), then drain the decoder. So no packet after the interval's last needed one is decoded --
    not the reorder delay, not the frames FFmpeg's frame threads would have started. A frame with a pts
    below the keyframe it was decoded from (an open GOP's leading picture) lacks references and is never
    taken. Returns the RGB frames found by pts and the rotation.
    """
    want = set(targets)
    out: dict[int, np.ndarray] = {}
    rotation = 0
    stream = _video_stream(container, name)
    _configure(stream, limits, threads)
    for k, group in groups.items():
        pending = [t for t in group if t not in out]
        if not pending:
            continue  # already taken while decoding an earlier interval
        container.seek(k, stream=stream, backward=True, any_frame=False)
        work.seek()
        floor_pts = min(k, pending[0])
        for frame in _group_frames(container, stream, work, set(pending), want):
            fp = frame.pts
            if fp is None:
                return out, rotation  # timestamps vanished: let the caller fall back
            if fp in want and fp not in out and fp >= floor_pts:
                _check_size(frame, name, limits)
                if not out:
                    rotation = _frame_rotation(frame, stream)
                out[fp] = _to_rgb(frame)
    return out, rotation


def _group_frames(
    container: Any, stream: Any, work: _Work, pending: set[int], keep: set[int]
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


def _decode_by_order(
    opener: Any, name: str, needed: set[int], limits: DecodeLimits, work: _Work
) -> tuple[dict[int, np.ndarray], int, int, bool]:
    """Decode from the start, counting frames as they come out; keep only ``needed`` ones.

    Returns (frames by index, frames counted, rotation, reached_end).
    """
    out: dict[int, np.ndarray] = {}
    rotation = 0
    last = max(needed)
    count = 0
    container = _open(opener, name)
    try:
        stream = _video_stream(container, name)
        _configure(stream, limits)
        for frame in _frames(container, stream, work):
            if getattr(frame, "is_corrupt", False):
                continue  # a frame the decoder itself flags as broken is not a frame of the video
            if count in needed:
                _check_size(frame, name, limits)
                if not out:
                    rotation = _frame_rotation(frame, stream)
                out[count] = _to_rgb(frame)
            count += 1
            if count > last:
                return out, count, rotation, False
    finally:
        container.close()
    return out, count, rotation, True


def sample_video_indices(
    source: VideoSource,
    spec: PreprocessSpec,
    *,
    limits: DecodeLimits | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, VideoInfo]:
    """The frame indices (int32) the reference would decode, from a demux-only probe (no decoding).

    This is what a DALI pipeline is fed as ``FRAME_INDICES``. (For a container whose frame count is wrong
    the reference re-samples after decoding; a probe alone cannot know.)
    """
    limits = limits or DEFAULT_LIMITS
    info = probe_video(source, limits=limits)
    if info.total_frames == 0:
        raise VideoDecodeError(f"{_describe(source)}: the video stream holds no frames")
    return sample_indices(info.total_frames, info.fps, spec, rng).astype(np.int32), info


def probe_display_rotation(source: VideoSource, *, limits: DecodeLimits | None = None) -> int:
    """The display rotation (counter-clockwise quarter turns in degrees, as the reference applies it).

    FFmpeg hands the display matrix to decoded frames only (PyAV exposes no stream side data), so this
    decodes the first frame the decoder gives -- one frame, not the video -- and reads it there.
    """
    limits = limits or DEFAULT_LIMITS
    opener, name = _as_opener(source, limits)
    container = _open(opener, name)
    try:
        stream = _video_stream(container, name)
        _configure(stream, limits, 1)
        work = _Work(name, limits.max_decoded_frames)
        for frame in _frames(container, stream, work):
            return _frame_rotation(frame, stream)
    finally:
        container.close()
    raise VideoDecodeError(f"{name}: no frame could be decoded")


def decode_clip(
    source: VideoSource,
    spec: PreprocessSpec,
    *,
    limits: DecodeLimits | None = None,
    rng: np.random.Generator | None = None,
    seek: bool = True,
) -> DecodedClip:
    """Sample ``spec.num_frames`` indices and decode exactly those frames (uint8 RGB, upright).

    ``seek=False`` forces the decode-from-the-start path (used to check the seek path against it).
    """
    limits = limits or DEFAULT_LIMITS
    opener, name = _as_opener(source, limits)
    container = _open(opener, name)
    try:
        info = _probe_container(container, name, limits)
        if info.total_frames == 0:
            raise VideoDecodeError(f"{name}: the video stream holds no frames")
        work = _Work(name, limits.max_decoded_frames)
        rng_replay = copy.deepcopy(rng)  # re-sampling after a wrong frame count must draw the same way
        total = info.total_frames
        indices = [int(i) for i in sample_indices(total, info.fps, spec, rng)]
        needed = sorted(set(indices))
        frames: dict[int, np.ndarray] = {}
        rotation = 0
        if seek and info.seekable:
            try:
                frames, rotation = _decode_by_pts(container, opener, name, info, needed, limits, work)
            except VideoDecodeError:
                raise
            except (av.error.FFmpegError, OSError):
                work.error()  # e.g. a seek the demuxer refuses: the fallback below decides
                frames = {}
    finally:
        container.close()
    if any(i not in frames for i in needed):
        frames, count, rotation, ended = _decode_by_order(opener, name, set(needed), limits, work)
        if ended and count < total:
            # The container promised more frames than decode: sample over what really exists.
            if count == 0:
                raise VideoDecodeError(f"{name}: no frame could be decoded ({info.codec}, corrupt data?)")
            total = count
            indices = [int(i) for i in sample_indices(total, info.fps, spec, rng_replay)]
            needed = sorted(set(indices))
            if any(i not in frames for i in needed):
                frames, count, rotation, _ = _decode_by_order(opener, name, set(needed), limits, work)
        missing = [i for i in needed if i not in frames]
        if missing:
            raise VideoDecodeError(f"{name}: frames {missing[:5]} could not be decoded (corrupt data?)")
    k = rotation // 90 % 4
    picked = {i: (np.ascontiguousarray(np.rot90(a, k)) if k else a) for i, a in frames.items()}
    return DecodedClip(
        frames=[picked[i] for i in indices],
        indices=indices,
        total_frames=total,
        fps=info.fps,
        rotation=rotation,
        decoded_frames=work.frames,
        seeks=work.seeks,
        info=info,
        decoded_packets=work.packets,
    )


def decode_all_frames(source: VideoSource, *, limits: DecodeLimits | None = None) -> list[np.ndarray]:
    """Every frame as uint8 RGB (upright), in decode-output order. For small videos (caches, tests)."""
    limits = limits or DEFAULT_LIMITS
    opener, name = _as_opener(source, limits)
    work = _Work(name, limits.max_decoded_frames)
    out: list[np.ndarray] = []
    container = _open(opener, name)
    try:
        stream = _video_stream(container, name)
        _configure(stream, limits)
        rotation = 0
        for frame in _frames(container, stream, work):
            if getattr(frame, "is_corrupt", False):
                continue
            _check_size(frame, name, limits)
            if not out:
                rotation = _frame_rotation(frame, stream)
            out.append(_to_rgb(frame))
    finally:
        container.close()
    if not out:
        raise VideoDecodeError(f"{name}: no frame could be decoded")
    k = rotation // 90 % 4
    return [np.ascontiguousarray(np.rot90(a, k)) for a in out] if k else out


def preprocess_video(
    source: VideoSource,
    spec: PreprocessSpec,
    *,
    limits: DecodeLimits | None = None,
    rng: np.random.Generator | None = None,
) -> PreprocessedClip:
    """Encoded video (path, bytes or uint8 array) -> the model's input ``(V, 3, T, H, W)`` float32.

    ``rng`` drives the training randomness (``segment`` sampling, ``random`` crops, flips); without it the
    result is deterministic. Raises :class:`VideoDecodeError` naming the problem for any bad input.
    """
    clip = decode_clip(source, spec, limits=limits, rng=rng)
    try:
        views = views_from_frames(clip.frames, spec, rng)
    except ValueError as exc:
        raise VideoDecodeError(f"{_describe(source)}: {exc}") from exc
    return PreprocessedClip(
        views=views,
        indices=clip.indices,
        total_frames=clip.total_frames,
        fps=clip.fps,
        rotation=clip.rotation,
        decoded_frames=clip.decoded_frames,
        seeks=clip.seeks,
    )
