"""How little work the reference decode does, and that doing less never changes a pixel."""

from __future__ import annotations

import bisect
from pathlib import Path

import av
import numpy as np
import pytest

from tests.utils_video import encode_video, index_frames
from training.preprocessing import DecodeLimits, decode_clip, preprocess_video
from training.preprocessing.spec import PreprocessSpec

RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
SMALL = PreprocessSpec(num_frames=6, short_side=32, crop_size=32, crops="center", **RAW)


@pytest.fixture(scope="module")
def bframe_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 frames, keyframe every 10, x264 B-frames (decode order differs from display order)."""
    return encode_video(
        tmp_path_factory.mktemp("v") / "b.mp4", index_frames(60, step=3), "h264", fps=25, gop=10
    )


def _expected_packets(path: Path, indices: list[int]) -> int:
    """Packets from each needed keyframe interval's keyframe to its last needed packet, in decode order.

    Worked out from a plain demux, independently of the code under test: a frame depends only on packets
    before it in decode order, so this is the least a keyframe-seeking decoder can be fed.
    """
    with av.open(str(path)) as container:
        packets = [(p.pts, p.is_keyframe) for p in container.demux(video=0) if p.size]
    order = {pts: i for i, (pts, _) in enumerate(packets)}  # pts -> decode position
    display = sorted(order)
    keys = sorted(pts for pts, key in packets if key)
    assert len(keys) > 2 and any(order[a] > order[b] for a, b in zip(display, display[1:])), "no B-frames"
    last_needed: dict[int, int] = {}
    for i in sorted(set(indices)):
        pts = display[i]
        key = keys[bisect.bisect_right(keys, pts) - 1]
        last_needed[key] = max(last_needed.get(key, 0), order[pts])
    return sum(last - order[key] + 1 for key, last in last_needed.items())


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("num_frames", [1, 4, 6])
def test_seek_path_feeds_only_packets_up_to_the_last_needed_one(
    bframe_video: Path, num_frames: int, threads: int
) -> None:
    spec = SMALL.replace(num_frames=num_frames)
    limits = DecodeLimits(threads=threads)
    clip = decode_clip(bframe_video, spec, limits=limits)
    # Neither the reorder delay nor frames started by FFmpeg's frame threads cost packets any more.
    assert clip.decoded_packets == _expected_packets(bframe_video, clip.indices)
    full = decode_clip(bframe_video, spec, limits=limits, seek=False)
    assert full.decoded_packets >= clip.decoded_packets
    assert clip.indices == full.indices
    assert all(np.array_equal(a, b) for a, b in zip(clip.frames, full.frames))


def test_first_frame_alone_costs_one_packet(bframe_video: Path) -> None:
    clip = decode_clip(bframe_video, SMALL.replace(num_frames=1), limits=DecodeLimits(threads=2))
    assert clip.indices == [0] and clip.decoded_packets == 1 and clip.decoded_frames == 1


def test_thread_counts_give_identical_views(bframe_video: Path) -> None:
    views = [
        preprocess_video(bframe_video, SMALL, limits=DecodeLimits(threads=n)).views for n in (0, 1, 2, 3)
    ]
    assert all(np.array_equal(views[0], v) for v in views[1:])


@pytest.mark.parametrize("size", [(120, 160, 100), (37, 53, 17), (144, 176, 224), (256, 340, 224)])
def test_numpy_resize_matches_torch_interpolate(size: tuple[int, int, int]) -> None:
    """The torch-free resize samples the grid of torch's (and paddle's) bilinear ``F.interpolate``
    (``align_corners=False``, no antialias): down- and upscaling agree to 2e-3 on the 0..255 scale."""
    import torch
    import torch.nn.functional as F

    from training.preprocessing import resize_frames

    h, w, short = size
    frames = np.random.default_rng(0).integers(0, 256, size=(2, h, w, 3), dtype=np.uint8)
    got = resize_frames(frames, short)  # (T, 3, nh, nw)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    ref = F.interpolate(x, size=got.shape[2:], mode="bilinear", align_corners=False, antialias=False)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref.numpy(), atol=2e-3)


@pytest.mark.parametrize("shape", [(4, 120, 160), (3, 160, 120), (2, 96, 96)])
def test_frame_by_frame_views_equal_the_batched_resize(shape: tuple[int, int, int]) -> None:
    """Views are built one frame at a time (less memory); they equal resizing the whole clip at once."""
    from training.preprocessing import crop_offsets, resize_frames, views_from_frames

    t, h, w = shape
    frames = np.random.default_rng(1).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)
    spec = PreprocessSpec(num_frames=t, short_side=96, crop_size=80, crops="three", mean=(0.4, 0.5, 0.6))
    x = resize_frames(frames, 96)  # (T, 3, h, w), all frames in one call
    mean = np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
    x = (x / np.float32(255.0) - mean) / std
    c = spec.crop_size
    expected = np.stack(
        [x[:, :, y : y + c, x0 : x0 + c].transpose(1, 0, 2, 3) for y, x0 in crop_offsets(*x.shape[2:], spec)]
    )
    assert np.array_equal(views_from_frames(list(frames), spec), expected)


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv422p", "yuv444p", "yuv420p10le", "gray"])
def test_single_threaded_rgb_conversion_equals_pyav_default(pix_fmt: str, tmp_path: Path) -> None:
    """Frames are converted with one swscale thread; the pixels equal PyAV's default conversion."""
    from training.preprocessing import decode_all_frames

    frames = np.random.default_rng(2).integers(0, 256, size=(3, 47, 61, 3), dtype=np.uint8)
    path = encode_video(tmp_path / "v.mkv", frames, "ffv1", pix_fmt=pix_fmt)
    with av.open(str(path)) as container:
        default = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    ours = decode_all_frames(path)
    assert len(ours) == len(default) == 3
    assert all(np.array_equal(a, b) for a, b in zip(ours, default))


def test_keyframe_intervals_are_shared_among_decode_threads(
    bframe_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """threads=2 decodes the six needed keyframe intervals on two threads (each its own container);
    threads=1 keeps everything on the calling thread. Both give the frames of the decode-everything path."""
    import threading

    import training.preprocessing.decode as video

    calls: list[tuple[str, list[int]]] = []
    decode_groups = video._decode_groups

    def spy(container, name, groups, *args, **kwargs):  # noqa: ANN001, ANN202 -- pass-through
        calls.append((threading.current_thread().name, list(groups)))
        return decode_groups(container, name, groups, *args, **kwargs)

    monkeypatch.setattr(video, "_decode_groups", spy)
    full = decode_clip(bframe_video, SMALL, seek=False)
    for threads, expected_threads in ((1, 1), (2, 2)):
        calls.clear()
        clip = decode_clip(bframe_video, SMALL, limits=DecodeLimits(threads=threads))
        assert len({name for name, _ in calls}) == expected_threads
        keys = [k for _, groups in calls for k in groups]
        assert len(keys) == len(set(keys)) == 6  # every interval decoded once, by one thread
        assert clip.seeks == 6 and clip.indices == full.indices
        assert all(np.array_equal(a, b) for a, b in zip(clip.frames, full.frames))
