"""Frame sampling: hand-computed examples for every mode, including PaddleVideo's formula bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from training.preprocessing.sampling import paddle_clip_size, sample_indices
from training.preprocessing.spec import PreprocessSpec


def _spec(mode: str, t: int = 8) -> PreprocessSpec:
    return PreprocessSpec(num_frames=t, sampling=mode)


@pytest.mark.parametrize(
    ("total", "t", "expected"),
    [
        (10, 4, [0, 3, 6, 9]),
        (8, 3, [0, 4, 7]),  # 3.5 rounds half up
        (250, 8, [0, 36, 71, 107, 142, 178, 213, 249]),
        (2, 8, [0, 0, 0, 0, 1, 1, 1, 1]),  # short videos repeat frames
        (1, 3, [0, 0, 0]),
    ],
)
def test_uniform_examples(total: int, t: int, expected: list[int]) -> None:
    assert sample_indices(total, 25.0, _spec("uniform", t)).tolist() == expected


@pytest.mark.parametrize(
    ("total", "fps", "t", "expected"),
    [
        # clip_sz = 32*8/30*25 = 213.33; linspace(0, 212.33, 8) -> steps of 30.33, truncated
        (250, 25.0, 8, [0, 30, 60, 91, 121, 151, 182, 212]),
        # same window on a 100-frame video: clipped to L-1 = 99 (the last frame repeats)
        (100, 25.0, 8, [0, 30, 60, 91, 99, 99, 99, 99]),
        # NTSC rate: clip_sz = 255.744; steps of 36.39
        (120, 30000 / 1001, 8, [0, 36, 72, 109, 119, 119, 119, 119]),
        # 16 frames at 30 fps: clip_sz = 512, steps of 511/15 = 34.07
        (600, 30.0, 16, [0, 34, 68, 102, 136, 170, 204, 238, 272, 306, 340, 374, 408, 442, 476, 511]),
        (1, 25.0, 4, [0, 0, 0, 0]),
    ],
)
def test_paddle_examples_by_hand(total: int, fps: float, t: int, expected: list[int]) -> None:
    assert sample_indices(total, fps, _spec("paddle", t)).tolist() == expected


def test_paddle_matches_paddlevideo_expression() -> None:
    """The same numbers as PaddleVideo's own statements, evaluated here for many lengths and rates."""
    for fps in (12.0, 23.976, 25.0, 29.97, 30.0, 59.94):
        for total in (1, 7, 50, 213, 214, 600):
            for t in (8, 16):
                clip_sz = 32 * t / 30 * fps  # VideoDecoder: sampling_rate * num_seg / target_fps * fps
                start_idx, end_idx = 0.0, 0.0 + clip_sz - 1
                offsets = np.linspace(start_idx, end_idx, t)
                offsets = np.clip(offsets, 0, total - 1).astype(np.int64)
                want = [x % total for x in list(offsets)]
                got = sample_indices(total, fps, _spec("paddle", t))
                assert got.dtype == np.int64
                assert got.tolist() == want
    assert paddle_clip_size(8, 25.0) == pytest.approx(213.3333333)


def test_segment_random_within_segments_and_reproducible() -> None:
    spec = _spec("segment", 8)
    a = sample_indices(80, 25.0, spec, np.random.default_rng(3))
    b = sample_indices(80, 25.0, spec, np.random.default_rng(3))
    assert a.tolist() == b.tolist()
    for i, idx in enumerate(a):
        assert 10 * i <= idx < 10 * (i + 1)
    draws = {tuple(sample_indices(80, 25.0, spec, np.random.default_rng(s)).tolist()) for s in range(20)}
    assert len(draws) > 10  # really random across seeds


def test_segment_centre_without_rng_and_short_video() -> None:
    spec = _spec("segment", 4)
    assert sample_indices(40, 25.0, spec).tolist() == [4, 14, 24, 34]
    short = sample_indices(3, 25.0, spec, np.random.default_rng(0))
    assert short.min() >= 0 and short.max() <= 2 and len(short) == 4
    assert np.all(np.diff(short) >= 0)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        sample_indices(0, 25.0, _spec("uniform"))
    with pytest.raises(ValueError, match="frame rate"):
        sample_indices(10, 0.0, _spec("paddle"))
    with pytest.raises(ValueError, match="integer"):
        sample_indices(2.5, 25.0, _spec("uniform"))  # type: ignore[arg-type]


def _paddle_train_rule(total: int, fps: float, t: int, start: float) -> list[int]:
    """PaddleVideo's train mode written out: window of clip_sz frames from ``start``, then the sampler's
    linspace + int64 inside it (``get_start_end_idx`` hands the sampler 0 .. clip_sz-1 of the window)."""
    clip_sz = 32 * t / 30 * fps
    window = np.linspace(0, clip_sz - 1, t).astype(np.int64)
    return np.minimum(int(start) + window, total - 1).tolist()


@pytest.mark.parametrize("fps", [25.0, 29.97, 30.0])
@pytest.mark.parametrize("total", [300, 600, 214])
@pytest.mark.parametrize("t", [8, 16])
def test_paddle_train_follows_the_rule(fps: float, total: int, t: int) -> None:
    spec = _spec("paddle_train", t)
    clip_sz = paddle_clip_size(t, fps)
    delta = max(total - clip_sz, 0.0)
    starts = []
    for seed in range(200):
        # The same single uniform draw PaddleVideo makes, from a generator seeded the same way.
        s = np.random.default_rng(seed).uniform(0.0, delta)
        got = sample_indices(total, fps, spec, np.random.default_rng(seed))
        assert got.dtype == np.int64 and got.shape == (t,)
        assert got.tolist() == _paddle_train_rule(total, fps, t, s)
        assert 0 <= got[0] <= delta and got[-1] <= total - 1
        starts.append(int(got[0]))
    if delta >= 20:
        # Uniform over the whole range: both ends are reached and no start dominates.
        assert min(starts) <= delta * 0.1 and max(starts) >= delta * 0.9
        assert max(np.bincount(starts)) < 40


@pytest.mark.parametrize("total", [1, 5, 100, 213])
def test_paddle_train_short_video_is_the_test_window(total: int) -> None:
    """Shorter than the window (213.3 frames at 25 fps): start 0, last frame repeated, like ``paddle``."""
    for seed in range(20):
        got = sample_indices(total, 25.0, _spec("paddle_train"), np.random.default_rng(seed))
        assert got.tolist() == sample_indices(total, 25.0, _spec("paddle")).tolist()


def test_paddle_train_without_rng_is_the_centre_window() -> None:
    # 600 frames at 30 fps, T=8: clip_sz 256, delta 344, centre start 172.
    got = sample_indices(600, 30.0, _spec("paddle_train"))
    assert got.tolist() == [172 + int(x) for x in np.linspace(0, 255, 8)]


def test_paddle_train_needs_a_frame_rate() -> None:
    with pytest.raises(ValueError, match="frame rate"):
        sample_indices(100, 0.0, _spec("paddle_train"), np.random.default_rng(0))
