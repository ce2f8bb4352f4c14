"""Long videos as a timeline of windows: the window arithmetic and a streaming decoder.

A *window* is a span ``[start, end)`` of the video's presentation time, in seconds from its first frame.
Windows start every ``stride`` seconds and last ``window`` seconds; the last one stops at the end of the
video (it may be shorter). Each window is treated exactly as a clip of that span would be: its frames are
the ones on screen during the span, :func:`~training.preprocessing.sampling.sample_indices` picks
``spec.num_frames`` of them (so a short window repeats frames as the spec's sampling pads any short clip),
and :func:`~training.preprocessing.transforms.views_from_frames` makes the model's views.

The streaming decoder (:class:`TimelineDecoder`) reads the file once, forward:

1. a demux-only probe (no decoding) learns every frame's timestamp and the keyframes, so the whole
   window plan -- and every frame each window samples -- is known before a frame is decoded;
2. the needed frames are decoded in one forward pass, interval by keyframe interval (a seek to the
   interval's keyframe, decoding up to its last needed frame): intervals no window samples are never
   decoded, which is what makes ``stride > window`` or sparse sampling cheap;
3. a window is handed out as soon as its last frame is decoded, and each frame is dropped as soon as the
   last window that uses it has been handed out.

So the memory a request holds is the encoded file plus the frames of the windows in flight (a few frames,
whatever the video's length), never the decoded video. Times come from the stream's timestamps, so
variable frame rate videos are cut where their frames really are; a stream without usable timestamps
falls back to ``index / fps``. Everything here is torch-free (serving imports it).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

# The reference decoder's building blocks (same package): opening with limits, the demux-only probe,
# per-interval decoding with non-reference frames skipped, RGB conversion and rotation.
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
    open_container,
    probe_container,
    source_opener,
    video_stream,
)
from training.preprocessing.sampling import paddle_clip_size, sample_indices
from training.preprocessing.spec import PreprocessSpec
from training.preprocessing.transforms import views_from_frames

MAX_WINDOWS = 100_000
"""Windows one request may ask for (an hour at a 36 ms stride): bounds the plan and the response count."""
EPS = 1e-6
"""Seconds: timestamps and window edges closer than this are equal (``3 * 2.4`` vs a pts of 7.2 s)."""


def default_window_seconds(spec: PreprocessSpec) -> float:
    """The span one clip of this spec covers: ``32 * T / 30`` seconds (8.53 s for T=8).

    That is exactly what ``paddle`` sampling reads (``32*T/30*fps`` frames), and the clip a Kinetics
    recipe (sampling rate 32 at 30 fps) trains ``uniform``/``segment`` checkpoints on; a model trained on
    other clip lengths (the synthetic demo's 1.5-3 s) is given its window per request or at build time.
    """
    return paddle_clip_size(spec.num_frames, 1.0)


def check_window_args(window: Any, stride: Any) -> tuple[float, float]:
    """``(window, stride)`` as positive finite floats; stride defaults to the window. ``ValueError`` names
    the bad value."""
    out = []
    for name, value in (
        ("WINDOW_SECONDS", window),
        ("STRIDE_SECONDS", stride if stride is not None else window),
    ):
        try:
            v = float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a number of seconds, got {value!r}") from exc
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {v}")
        out.append(v)
    return out[0], out[1]


def window_spans(
    duration: float, window: float, stride: float, tolerance: float = EPS
) -> list[tuple[float, float]]:
    """``[(start, end), ...]`` covering ``[0, duration)``: starts every ``stride`` seconds, each ``window``
    long, the last clipped at ``duration``.

    With ``stride <= window`` the windows stop at the first one that reaches the end (no window lies
    entirely inside the one before); with ``stride > window`` the gaps between windows are not covered
    (that is what such a stride asks for) and windows continue while they start before the end. Edges
    within ``tolerance`` seconds of the end count as the end (the decoder passes half a frame, so the
    rounding of the last frame's display time never makes a sliver window).
    """
    window, stride = check_window_args(window, stride)
    if not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"a timeline needs a video with a positive duration, got {duration} s")
    count = _window_count(duration, window, stride, max(EPS, tolerance))
    if count > MAX_WINDOWS:
        raise ValueError(
            f"{count} windows of {window} s every {stride} s over {duration:.1f} s exceed the limit of "
            f"{MAX_WINDOWS} windows per request (use a longer STRIDE_SECONDS)"
        )
    spans = []
    for k in range(count):
        start = k * stride
        spans.append((start, min(start + window, duration)))
    return spans


def _window_count(duration: float, window: float, stride: float, tol: float) -> int:
    # The last window starts before the end, and (for stride <= window) the one before it had not
    # reached the end yet: k-th start = k*stride; smallest k with k*stride + window >= duration.
    by_start = math.ceil((duration - tol) / stride)  # windows that start before the end
    if stride > window:
        return max(1, by_start)
    by_end = max(0, math.ceil((duration - window - tol) / stride)) + 1
    return max(1, min(by_start, by_end))


def frames_in_span(times: Sequence[float] | np.ndarray, start: float, end: float) -> tuple[int, int]:
    """``(first, last)`` (inclusive) indices of the frames on screen during ``[start, end)``.

    A frame is on screen from its timestamp to the next one's, so the window starts with the frame shown
    at ``start`` (the last one with ``t <= start``) and ends with the last one that starts before
    ``end``. A span that falls inside one long frame (a timestamp gap) gets that frame alone.
    """
    times = np.asarray(times, dtype=np.float64)
    first = max(int(np.searchsorted(times, start + EPS, side="right")) - 1, 0)
    last = int(np.searchsorted(times, end - EPS, side="left")) - 1
    return first, max(first, last)


@dataclass(frozen=True)
class Window:
    """One window of the plan: its span in seconds and the frames (presentation indices) it samples."""

    index: int
    start: float
    end: float
    first: int  # first frame on screen in the span
    last: int  # last frame on screen in the span (inclusive)
    indices: tuple[int, ...]  # the spec's num_frames sampled indices, clip order (repeats allowed)


def plan_windows(
    times: Sequence[float] | np.ndarray,
    duration: float,
    fps: float,
    spec: PreprocessSpec,
    window: float,
    stride: float,
) -> list[Window]:
    """Every window of a video whose frames are shown at ``times`` (seconds, ascending, from 0).

    Each window's frames are sampled as a clip of ``last - first + 1`` frames would be by ``spec``
    (``paddle`` sampling uses ``fps``), deterministically (no random crops or segments). The end of the
    video is known to half a frame (:func:`stream_duration` estimates the last frame's display time).
    """
    times = np.asarray(times, dtype=np.float64)
    if times.size == 0:
        raise ValueError("a timeline needs at least one frame")
    half_frame = 0.5 * float(np.median(np.diff(times))) if times.size >= 2 else EPS
    out = []
    for k, (start, end) in enumerate(window_spans(duration, window, stride, half_frame)):
        first, last = frames_in_span(times, start, end)
        local = sample_indices(last - first + 1, fps, spec)  # (T,) within the window's frames
        out.append(Window(k, start, end, first, last, tuple(int(first + i) for i in local)))
    return out


def stream_times(pts: Sequence[int], time_base: Fraction) -> np.ndarray:
    """Seconds from the first frame for presentation-ordered ``pts`` (exact rational maths, then float)."""
    if not pts:
        return np.zeros(0, dtype=np.float64)
    p0 = pts[0]
    return np.asarray([float((p - p0) * time_base) for p in pts], dtype=np.float64)


def stream_duration(times: np.ndarray, fps: float) -> float:
    """The video's length: the last frame's timestamp plus its display time (the last gap between
    timestamps, which follows a variable frame rate; ``1/fps`` for a one-frame video)."""
    if times.size >= 2:
        return float(times[-1] + (times[-1] - times[-2]))
    return float(times[-1] if times.size else 0.0) + (1.0 / fps if fps > 0 else 1.0)


@dataclass
class WindowClip:
    """A window ready for the classifier."""

    window: Window
    views: np.ndarray  # (V, 3, T, H, W) float32


class _Missing(Exception):
    """The seek path did not produce a needed frame (corrupt data, a seek that overshot)."""


class TimelineDecoder:
    """A video opened as a timeline: :attr:`windows` after construction (probe only), then :meth:`clips`.

    ::

        with TimelineDecoder(data, spec, window=2.0, stride=2.0) as tl:
            print(len(tl.windows), tl.duration)
            for clip in tl.clips():          # in time order, one forward pass over the file
                classify(clip.views)

    Construction raises :class:`VideoDecodeError` (a ``ValueError``) for a bad video and ``ValueError``
    for bad window arguments, before anything is decoded. ``window``/``stride`` default to
    :func:`default_window_seconds` (the stride to the window).
    """

    def __init__(
        self,
        source: VideoSource,
        spec: PreprocessSpec,
        window: float | None = None,
        stride: float | None = None,
        *,
        limits: DecodeLimits | None = None,
    ) -> None:
        self.spec = spec
        self.limits = limits or DEFAULT_LIMITS
        window = default_window_seconds(spec) if window is None else window
        self.window_seconds, self.stride_seconds = check_window_args(window, stride)
        self._opener, self.name = source_opener(source, self.limits)
        self._container = open_container(self._opener, self.name)
        try:
            self.info: VideoInfo = probe_container(self._container, self.name, self.limits)
            if self.info.total_frames == 0:
                raise VideoDecodeError(f"{self.name}: the video stream holds no frames")
            stream = video_stream(self._container, self.name)
            if self.info.frame_pts is not None and stream.time_base is not None:
                self.times = stream_times(self.info.frame_pts, Fraction(stream.time_base))
            elif self.info.fps > 0:  # no usable timestamps: frames are 1/fps apart
                self.times = np.arange(self.info.total_frames, dtype=np.float64) / self.info.fps
            else:
                raise VideoDecodeError(f"{self.name}: neither usable timestamps nor a frame rate")
            self.duration = stream_duration(self.times, self.info.fps)
            self.windows = plan_windows(
                self.times, self.duration, self.info.fps, spec, self.window_seconds, self.stride_seconds
            )
        except BaseException:
            self.close()
            raise
        self.decoded_frames = 0  # decode work spent so far (frames out of the decoder)
        self.max_held_frames = 0  # most decoded frames held at once (the memory bound, in frames)

    def __enter__(self) -> TimelineDecoder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the container (idempotent); a generator from :meth:`clips` then stops."""
        if self._container is not None:
            self._container.close()
            self._container = None

    # ------------------------------------------------------------------------------------------------

    def clips(self) -> Iterator[WindowClip]:
        """Every window's views, in time order, each as soon as its frames are decoded."""
        windows = self.windows
        needed = sorted({i for w in windows for i in w.indices})
        last_use: dict[int, int] = {}
        for w in windows:
            for i in w.indices:
                last_use[i] = w.index
        held: dict[int, np.ndarray] = {}
        nxt = 0  # next window to hand out
        # Decode work: the whole video at most once, plus an open GOP's leading frames per seek.
        work = DecodeWork(self.name, 2 * self.info.total_frames + 64)
        source = self._seek_frames(needed, work) if self.info.seekable else None
        if source is None:
            source = self._ordered_frames(needed, work)
        rotation: int | None = None
        while nxt < len(windows):
            try:
                index, frame, rot = next(source)
            except StopIteration:
                break
            except _Missing:
                # Fall back to counting frames from the start for what is still missing.
                still = [i for i in needed if i not in held and last_use[i] >= nxt]
                source = self._ordered_frames(still, work)
                continue
            if rotation is None:
                rotation = rot  # the stream's rotation, as its first decoded frame says
            if last_use.get(index, -1) < nxt or index in held:
                continue
            k = rotation // 90 % 4
            held[index] = np.ascontiguousarray(np.rot90(frame, k)) if k else frame
            self.max_held_frames = max(self.max_held_frames, len(held))
            self.decoded_frames = work.frames
            while nxt < len(windows) and all(i in held for i in windows[nxt].indices):
                w = windows[nxt]
                try:
                    views = views_from_frames([held[i] for i in w.indices], self.spec)
                except ValueError as exc:
                    raise VideoDecodeError(f"{self.name}: {exc}") from exc
                for i in set(w.indices):
                    if last_use[i] == w.index:
                        del held[i]  # no later window samples it
                nxt += 1
                yield WindowClip(w, views)
        self.decoded_frames = work.frames
        if nxt < len(windows):
            missing = [i for i in windows[nxt].indices if i not in held]
            raise VideoDecodeError(
                f"{self.name}: frames {missing[:5]} of window {nxt} "
                f"({windows[nxt].start:.2f}-{windows[nxt].end:.2f} s) could not be decoded (corrupt data?)"
            )

    def _seek_frames(self, needed: list[int], work: DecodeWork) -> Iterator[tuple[int, np.ndarray, int]]:
        """``(index, rgb, rotation)`` of the needed frames by keyframe interval, in presentation order.

        One container, moving forward: each interval holding a needed frame is sought to its keyframe and
        decoded up to its last needed packet; intervals without one are skipped. Raises :class:`_Missing`
        when an interval did not yield all its frames.
        """
        info = self.info
        assert info.frame_pts is not None
        frame_pts = info.frame_pts
        keys = info.keyframe_pts
        groups: dict[int, list[int]] = {}
        for i in needed:
            pts = frame_pts[i]
            groups.setdefault(keys[max(bisect.bisect_right(keys, pts) - 1, 0)], []).append(pts)
        index_of = {frame_pts[i]: i for i in needed}
        container = self._container
        if container is None:
            return
        stream = video_stream(container, self.name)
        configure_decoder(stream, self.limits, 1)
        rotation = 0
        first = True
        for k, group in groups.items():
            try:
                container.seek(k, stream=stream, backward=True, any_frame=False)
            except (av.error.FFmpegError, OSError) as exc:
                raise _Missing(str(exc)) from exc
            work.seek()
            want = set(group)
            floor_pts = min(k, group[0])
            got: set[int] = set()
            for frame in interval_frames(container, stream, work, set(group), want):
                fp = frame.pts
                if fp is None:
                    raise _Missing("timestamps vanished")
                if fp in want and fp not in got and fp >= floor_pts:
                    check_frame_size(frame, self.name, self.limits)
                    if first:
                        rotation, first = frame_rotation(frame, stream), False
                    got.add(fp)
                    yield index_of[fp], to_rgb(frame), rotation
            if len(got) < len(group):
                raise _Missing(f"{len(group) - len(got)} frames of the interval at pts {k}")

    def _ordered_frames(self, needed: list[int], work: DecodeWork) -> Iterator[tuple[int, np.ndarray, int]]:
        """``(index, rgb, rotation)`` of the needed frames, counting frames as they come out of a decoder
        started at the beginning (for streams without usable timestamps, or when seeking failed)."""
        if not needed:
            return
        want = set(needed)
        last = max(needed)
        container = open_container(self._opener, self.name)
        try:
            stream = video_stream(container, self.name)
            configure_decoder(stream, self.limits, 1)
            rotation: int | None = None
            count = 0
            for frame in decoded_frames(container, stream, work):
                if getattr(frame, "is_corrupt", False):
                    continue
                if count in want:
                    check_frame_size(frame, self.name, self.limits)
                    if rotation is None:
                        rotation = frame_rotation(frame, stream)
                    yield count, to_rgb(frame), rotation
                count += 1
                if count > last:
                    return
        finally:
            container.close()
