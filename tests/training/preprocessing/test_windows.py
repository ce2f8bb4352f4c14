"""Window arithmetic and the streaming timeline decoder, on real encoded videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.utils_video import encode_video, frame_level, index_frames, level_to_index, png_bytes
from training.preprocessing.decode import VideoDecodeError
from training.preprocessing.sampling import sample_indices
from training.preprocessing.spec import PreprocessSpec
from training.preprocessing.windows import (
    MAX_WINDOWS,
    TimelineDecoder,
    check_window_args,
    default_window_seconds,
    frames_in_span,
    plan_windows,
    window_spans,
)
from training.synth_timeline import write_timed_video

# Centre crop of the whole (square) frame, no normalisation: a view's pixel is the frame's value / 255.
SPEC = PreprocessSpec(num_frames=4, sampling="uniform", short_side=32, crop_size=32, crops="center")


# --- window arithmetic --------------------------------------------------------------------------------


def test_spans_tile_the_video_and_the_last_one_is_shorter() -> None:
    assert window_spans(10.0, 4.0, 4.0) == [(0.0, 4.0), (4.0, 8.0), (8.0, 10.0)]
    assert window_spans(8.0, 4.0, 4.0) == [(0.0, 4.0), (4.0, 8.0)]  # exact fit: no empty window


def test_overlapping_spans_stop_at_the_first_window_that_reaches_the_end() -> None:
    assert window_spans(10.0, 4.0, 2.0) == [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (6.0, 10.0)]
    assert window_spans(9.0, 4.0, 2.0)[-1] == (6.0, 9.0)


def test_stride_longer_than_window_leaves_gaps_and_reaches_the_end() -> None:
    assert window_spans(10.0, 1.0, 3.0) == [(0.0, 1.0), (3.0, 4.0), (6.0, 7.0), (9.0, 10.0)]


def test_video_shorter_than_one_window_is_one_window() -> None:
    assert window_spans(0.5, 8.0, 8.0) == [(0.0, 0.5)]


def test_edges_within_tolerance_count_as_the_end() -> None:
    # 3 * 2.4 is 7.199999999999999 in floats; a pts-derived end of 7.2 must not add a sliver window.
    assert len(window_spans(7.2, 2.4, 2.4)) == 3
    assert len(window_spans(6.00001, 2.0, 2.0, tolerance=0.02)) == 3
    assert len(window_spans(6.00001, 2.0, 2.0)) == 4


@pytest.mark.parametrize(
    ("window", "stride", "message"),
    [
        (0, None, "WINDOW_SECONDS"),
        (-1, 1, "WINDOW_SECONDS"),
        (1, 0, "STRIDE_SECONDS"),
        (float("nan"), 1, "WINDOW"),
    ],
)
def test_bad_window_arguments_name_the_input(window: float, stride: float | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_window_args(window, stride)


def test_too_many_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="limit of"):
        window_spans(MAX_WINDOWS * 0.1 + 10, 0.1, 0.1)


def test_default_window_is_the_paddle_clip_span() -> None:
    assert default_window_seconds(PreprocessSpec(num_frames=8)) == pytest.approx(32 * 8 / 30)


def test_frames_in_span_follow_timestamps_of_a_variable_frame_rate() -> None:
    times = np.array([0.0, 0.5, 1.0, 1.1, 1.2, 1.3, 3.0, 3.1])  # 2 fps, then 10 fps, then a gap
    assert frames_in_span(times, 0.0, 1.0) == (0, 1)
    assert frames_in_span(times, 1.0, 2.0) == (2, 5)
    assert frames_in_span(times, 2.0, 2.5) == (5, 5)  # inside the gap: the frame on screen
    assert frames_in_span(times, 2.5, 3.05) == (5, 6)


def test_each_window_is_sampled_as_a_clip_of_its_frames() -> None:
    times = np.arange(100) / 25.0  # 4 s at 25 fps
    plan = plan_windows(times, 4.0, 25.0, SPEC, 1.5, 1.5)
    assert [(w.start, w.end) for w in plan] == [(0.0, 1.5), (1.5, 3.0), (3.0, 4.0)]
    for w in plan:
        expect = w.first + sample_indices(w.last - w.first + 1, 25.0, SPEC)
        assert list(w.indices) == list(expect)
    assert plan[-1].last == 99 and plan[-1].first == 75  # the short last window still samples 4 frames


def test_a_window_with_fewer_frames_than_the_spec_repeats_frames() -> None:
    plan = plan_windows(np.arange(10) / 5.0, 2.0, 5.0, SPEC.replace(num_frames=8), 0.4, 0.4)
    assert plan[0].indices == (
        0,
        0,
        0,
        0,
        1,
        1,
        1,
        1,
    )  # uniform sampling over 2 frames, as for a 2-frame clip


# --- the streaming decoder ------------------------------------------------------------------------------


def _levels(views: np.ndarray, num: int) -> list[int]:
    """Frame indices read back from the index-coded brightness of each sampled frame."""
    return [
        level_to_index(frame_level(views[0, :, t].transpose(1, 2, 0) * 255.0), num)
        for t in range(views.shape[2])
    ]


@pytest.fixture(scope="module")
def coded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 s at 10 fps, 32x32, brightness = frame index, a keyframe every 10 frames."""
    path = tmp_path_factory.mktemp("windows") / "coded.mp4"
    return encode_video(path, index_frames(50, 32, 32), "h264", fps=10, gop=10, crf=0)


def test_streamed_windows_hold_the_planned_frames(coded: Path) -> None:
    with TimelineDecoder(coded, SPEC, 1.5, 1.5) as tl:
        spans = [x for w in tl.windows for x in (w.start, w.end)]
        assert spans == pytest.approx([0.0, 1.5, 1.5, 3.0, 3.0, 4.5, 4.5, 5.0])
        clips = list(tl.clips())
    assert [c.window.index for c in clips] == [0, 1, 2, 3]
    for c in clips:
        assert c.views.shape == SPEC.output_shape
        got = [level_to_index(frame_level(c.views[0, :, t].transpose(1, 2, 0) * 255.0), 50) for t in range(4)]
        assert got == list(c.window.indices)


def test_overlapping_windows_share_frames_and_release_them(coded: Path) -> None:
    with TimelineDecoder(coded, SPEC, 2.0, 0.5) as tl:
        clips = list(tl.clips())
        assert len(clips) == 7  # starts 0..3 s, the last reaching 5 s
        # Each frame is dropped after its last window: held frames are bounded by the windows that overlap
        # (window / stride = 4) times the frames each samples, whatever the video's length.
        assert tl.max_held_frames <= 4 * SPEC.num_frames
        assert tl.decoded_frames <= 50


def test_windows_that_skip_frames_seek_past_them(coded: Path) -> None:
    # 0.5 s windows every 2 s: frames 0-4, 20-24, 40-44 are needed; keyframes every 10 frames, so the
    # intervals 10-19 and 30-39 are never decoded.
    with TimelineDecoder(coded, SPEC, 0.5, 2.0) as tl:
        clips = list(tl.clips())
        assert [c.window.start for c in clips] == [0.0, 2.0, 4.0]
        assert tl.decoded_frames <= 3 * 5 + 6  # each needed interval decoded up to its last needed frame
    got = [level_to_index(frame_level(c.views[0, :, -1].transpose(1, 2, 0) * 255.0), 50) for c in clips]
    assert got == [c.window.indices[-1] for c in clips]


def test_variable_frame_rate_windows_follow_the_timestamps(tmp_path: Path) -> None:
    # 1 s at 5 fps, then 1 s at 20 fps: a 1 s window holds 5 frames, the next 20.
    frames = index_frames(25, 32, 32, step=8)
    times = [i / 5 for i in range(5)] + [1.0 + i / 20 for i in range(20)]
    path = write_timed_video(tmp_path / "vfr.mp4", zip(frames, times), size=32, gop=10, options={"crf": "0"})
    with TimelineDecoder(path, SPEC, 1.0) as tl:
        assert [(w.first, w.last) for w in tl.windows] == [(0, 4), (5, 24)]
        assert tl.duration == pytest.approx(2.0, abs=1e-3)
        clips = list(tl.clips())
    got = [
        level_to_index(frame_level(clips[1].views[0, :, t].transpose(1, 2, 0) * 255.0), 25, 8)
        for t in range(4)
    ]
    assert got == list(clips[1].window.indices)


def test_a_long_video_holds_a_window_of_frames_not_the_video(tmp_path: Path) -> None:
    path = encode_video(tmp_path / "long.mp4", index_frames(1500, 32, 32), "h264", fps=25, gop=250)
    with TimelineDecoder(path, SPEC, 2.0) as tl:
        assert len(tl.windows) == 30
        n = sum(1 for _ in tl.clips())
        assert n == 30
        assert tl.max_held_frames <= SPEC.num_frames


@pytest.mark.parametrize(
    ("payload", "message"),
    [(b"", "empty"), (b"\x00" * 4096, "not a readable video"), (png_bytes(), "still image")],
)
def test_bad_videos_are_refused_before_decoding(payload: bytes, message: str) -> None:
    with pytest.raises(VideoDecodeError, match=message):
        TimelineDecoder(payload, SPEC, 1.0)


def test_bad_window_arguments_are_refused(coded: Path) -> None:
    with pytest.raises(ValueError, match="STRIDE_SECONDS"):
        TimelineDecoder(coded, SPEC, 1.0, -2.0)
