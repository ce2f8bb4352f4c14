"""Reference preprocessing: encoded video -> ``(V, 3, T, H, W)`` float32, on the CPU with PyAV (FFmpeg).

This is the implementation training, the tests and the CPU serving path use; the DALI pipeline
(``training/preprocessing/dali.py``) is held equal to it. Steps:

1. **Probe** (demux only, no decoding; :mod:`training.preprocessing.probe`): every video packet's pts and
   keyframe flag. This gives the frame count (checked against the container's claim), the presentation
   timeline and a keyframe index.
2. **Sample** indices with :func:`training.preprocessing.sampling.sample_indices`.
3. **Decode only what the indices need** (frame-level pieces: :mod:`training.preprocessing.frames`): frames
   are identified by pts and grouped by keyframe interval;
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
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from training.preprocessing.frames import (
    DecodeWork,
    check_frame_size,
    configure_decoder,
    decoded_frames,
    frame_rotation,
    interval_frames,
    to_rgb,
)
from training.preprocessing.limits import DEFAULT_LIMITS, DecodeLimits
from training.preprocessing.probe import (
    VideoDecodeError,
    VideoInfo,
    VideoSource,
    describe_source,
    open_container,
    probe_container,
    probe_video,
    source_opener,
    video_stream,
)
from training.preprocessing.sampling import sample_indices
from training.preprocessing.spec import PreprocessSpec
from training.preprocessing.transforms import views_from_frames

# Re-exported for the package's users: the probe's types are part of what decoding returns.
__all__ = [
    "DecodedClip",
    "PreprocessedClip",
    "VideoDecodeError",
    "VideoInfo",
    "VideoSource",
    "decode_all_frames",
    "decode_clip",
    "preprocess_video",
    "probe_display_rotation",
    "probe_video",
    "sample_video_indices",
]


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
# Decoding the sampled frames


def _decode_by_pts(
    container: Any,
    opener: Any,
    name: str,
    info: VideoInfo,
    needed: list[int],
    limits: DecodeLimits,
    work: DecodeWork,
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
        own = open_container(opener, name)
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
    work: DecodeWork,
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
    stream = video_stream(container, name)
    configure_decoder(stream, limits, threads)
    for k, group in groups.items():
        pending = [t for t in group if t not in out]
        if not pending:
            continue  # already taken while decoding an earlier interval
        container.seek(k, stream=stream, backward=True, any_frame=False)
        work.seek()
        floor_pts = min(k, pending[0])
        for frame in interval_frames(container, stream, work, set(pending), want):
            fp = frame.pts
            if fp is None:
                return out, rotation  # timestamps vanished: let the caller fall back
            if fp in want and fp not in out and fp >= floor_pts:
                check_frame_size(frame, name, limits)
                if not out:
                    rotation = frame_rotation(frame, stream)
                out[fp] = to_rgb(frame)
    return out, rotation


def _decode_by_order(
    opener: Any, name: str, needed: set[int], limits: DecodeLimits, work: DecodeWork
) -> tuple[dict[int, np.ndarray], int, int, bool]:
    """Decode from the start, counting frames as they come out; keep only ``needed`` ones.

    Returns (frames by index, frames counted, rotation, reached_end).
    """
    out: dict[int, np.ndarray] = {}
    rotation = 0
    last = max(needed)
    count = 0
    container = open_container(opener, name)
    try:
        stream = video_stream(container, name)
        configure_decoder(stream, limits)
        for frame in decoded_frames(container, stream, work):
            if getattr(frame, "is_corrupt", False):
                continue  # a frame the decoder itself flags as broken is not a frame of the video
            if count in needed:
                check_frame_size(frame, name, limits)
                if not out:
                    rotation = frame_rotation(frame, stream)
                out[count] = to_rgb(frame)
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
        raise VideoDecodeError(f"{describe_source(source)}: the video stream holds no frames")
    return sample_indices(info.total_frames, info.fps, spec, rng).astype(np.int32), info


def probe_display_rotation(source: VideoSource, *, limits: DecodeLimits | None = None) -> int:
    """The display rotation (counter-clockwise quarter turns in degrees, as the reference applies it).

    FFmpeg hands the display matrix to decoded frames only (PyAV exposes no stream side data), so this
    decodes the first frame the decoder gives -- one frame, not the video -- and reads it there.
    """
    limits = limits or DEFAULT_LIMITS
    opener, name = source_opener(source, limits)
    container = open_container(opener, name)
    try:
        stream = video_stream(container, name)
        configure_decoder(stream, limits, 1)
        work = DecodeWork(name, limits.max_decoded_frames)
        for frame in decoded_frames(container, stream, work):
            return frame_rotation(frame, stream)
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
    opener, name = source_opener(source, limits)
    container = open_container(opener, name)
    try:
        info = probe_container(container, name, limits)
        if info.total_frames == 0:
            raise VideoDecodeError(f"{name}: the video stream holds no frames")
        work = DecodeWork(name, limits.max_decoded_frames)
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
    opener, name = source_opener(source, limits)
    work = DecodeWork(name, limits.max_decoded_frames)
    out: list[np.ndarray] = []
    container = open_container(opener, name)
    try:
        stream = video_stream(container, name)
        configure_decoder(stream, limits)
        rotation = 0
        for frame in decoded_frames(container, stream, work):
            if getattr(frame, "is_corrupt", False):
                continue
            check_frame_size(frame, name, limits)
            if not out:
                rotation = frame_rotation(frame, stream)
            out.append(to_rgb(frame))
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
        raise VideoDecodeError(f"{describe_source(source)}: {exc}") from exc
    return PreprocessedClip(
        views=views,
        indices=clip.indices,
        total_frames=clip.total_frames,
        fps=clip.fps,
        rotation=clip.rotation,
        decoded_frames=clip.decoded_frames,
        seeks=clip.seeks,
    )
