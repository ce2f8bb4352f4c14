"""The DALI pipeline the gpu repository serves, run the way Triton's dali backend runs it.

The ``mixed`` pipeline needs a GPU; its CPU twin is the same graph (same operators, arguments and edges --
checked here) with DALI's CPU decoder, which handles VP8, VP9 and MJPEG. The twin runs under the dali
backend's executor settings (legacy executor, pipelined, async, prefetch depth 1) at the repository's
``max_batch_size``, on ragged batches of real encoded videos, and is compared with the reference
implementation.

Tolerance, in 8-bit levels (the outputs are on the 0..1 scale, so ``* 255``): mean < 3, 99th percentile
< 12, max < 24. Resizing, cropping and normalising agree to float error on the same decoded frames
(< 0.002 levels); what remains is YUV->RGB conversion: libswscale (reference) and DALI upsample 4:2:0
chroma differently, which moves a few levels on average and up to ~15 levels on one-pixel borders of
saturated colour edges (these videos are made of such edges). The tolerance still tells frames apart:
other frames of the same video differ far more (checked).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.utils_video import encode_video, moving_square_frames
from training.preprocessing import preprocess_video
from training.preprocessing.decode import VideoDecodeError
from training.preprocessing.nvdec import StreamFacts, nvdec_refusal, plan_gpu_decode
from training.preprocessing.spec import PreprocessSpec

dali = pytest.importorskip("nvidia.dali")

from nvidia.dali import fn, pipeline_def, types  # noqa: E402

from training.preprocessing.dali import (  # noqa: E402
    build_pipeline,
    gpu_to_cpu_edges,
    graph_signature,
    run_pipeline,
    serialize_pipeline,
)

SPEC = PreprocessSpec(num_frames=4, short_side=40, crop_size=32)


def _close_to_reference(out: np.ndarray, ref: np.ndarray) -> float:
    assert out.shape == ref.shape and out.dtype == np.float32
    diff = np.abs(out - ref) * 255  # in 8-bit levels
    assert diff.mean() < 3.0, diff.mean()
    assert np.percentile(diff, 99) < 12.0
    assert diff.max() < 24.0
    return float(diff.mean())


@pytest.mark.parametrize("crops", ["three", "center"])
def test_served_graph_has_no_gpu_to_cpu_edge_and_the_twin_is_the_same_graph(crops: str) -> None:
    spec = SPEC.replace(crops=crops)
    # Building under the legacy executor is what the dali backend does: a GPU->CPU read fails right here.
    mixed = build_pipeline(spec, device="mixed", batch_size=4)
    twin = build_pipeline(spec, device="cpu", batch_size=4)
    assert gpu_to_cpu_edges(mixed) == []
    assert graph_signature(mixed) == graph_signature(twin)
    assert len(graph_signature(mixed)) > 10
    # The signature does see arguments and edges: another spec is another graph.
    assert graph_signature(build_pipeline(spec.replace(crop_size=24), device="cpu")) != graph_signature(twin)


def test_the_legacy_executor_refuses_reading_decoder_output_on_the_cpu() -> None:
    """What the old pipeline did (``frames.shape()`` on the mixed decoder's output): the dali backend's
    executor refuses it, and so does every pipeline built by :func:`build_pipeline`."""

    @pipeline_def(batch_size=2, num_threads=1, device_id=None, exec_dynamic=False, prefetch_queue_depth=1)
    def reads_gpu_shape():  # noqa: ANN202
        video = fn.external_source(name="VIDEO", dtype=types.UINT8, ndim=1)
        frames = fn.decoders.video(video, device="mixed")
        shape = frames.shape(dtype=types.INT64)
        return fn.resize(frames, size=fn.cast(fn.stack(shape[1], shape[2]), dtype=types.FLOAT))

    with pytest.raises(RuntimeError, match="transition from GPU to CPU"):
        reads_gpu_shape()


def test_the_repository_ships_the_twin_s_graph(tmp_path: Path) -> None:
    """``preprocess/1/model.dali`` of a built gpu repository is byte for byte the mixed pipeline whose
    graph the twin tests hold (serialization is deterministic: checked by serializing twice)."""
    from tests.utils_server import build_tiny_repository
    from training.modeling.checkpoint import load_checkpoint
    from triton_models import contract

    repo, ckpt = build_tiny_repository(tmp_path, target="gpu")
    spec = load_checkpoint(ckpt).preprocess
    shipped = (repo / contract.PREPROCESS / "1" / contract.DALI_FILE).read_bytes()
    a = serialize_pipeline(spec, tmp_path / "a.dali", device="mixed", max_batch_size=4).read_bytes()
    b = serialize_pipeline(spec, tmp_path / "b.dali", device="mixed", max_batch_size=4).read_bytes()
    assert a == b == shipped
    assert b"_Shape" not in shipped and b"Shapes" not in shipped


def _ragged_batch(tmp_path: Path) -> list[Path]:
    """Four real videos of three CPU-decodable codecs, different sizes, lengths and orientations."""
    return [
        encode_video(tmp_path / "a.webm", moving_square_frames(24, 128, 176, seed=1), "vp9", gop=6),
        encode_video(tmp_path / "b.webm", moving_square_frames(17, 96, 80, seed=2), "vp8", gop=5),
        encode_video(tmp_path / "c.avi", moving_square_frames(30, 72, 120, seed=3), "mjpeg"),
        encode_video(tmp_path / "d.webm", moving_square_frames(12, 160, 128, seed=4), "vp9", gop=4),
    ]


def test_twin_on_a_ragged_batch_under_the_backend_executor_matches_the_reference(tmp_path: Path) -> None:
    paths = _ragged_batch(tmp_path)
    plans = [plan_gpu_decode(p.read_bytes(), SPEC) for p in paths]
    refs = [preprocess_video(p, SPEC) for p in paths]
    for (indices, _), ref in zip(plans, refs):
        assert indices.tolist() == ref.indices
    pipe = build_pipeline(SPEC, device="cpu", batch_size=len(paths))  # the repository's max_batch_size
    videos = [p.read_bytes() for p in paths]
    for _ in range(2):  # the pipelined executor keeps state between runs: a second batch must agree too
        outs = run_pipeline(pipe, videos, [i for i, _ in plans], [g for _, g in plans])
        means = [_close_to_reference(o, r.views) for o, r in zip(outs, refs)]
    # Frames are told apart: reversed indices give a clearly worse match.
    (wrong,) = run_pipeline(
        build_pipeline(SPEC, device="cpu"), [videos[0]], [plans[0][0][::-1].copy()], [plans[0][1]]
    )
    assert (np.abs(wrong - refs[0].views) * 255).mean() > 2 * means[0]


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_twin_applies_the_display_rotation_as_the_reference(rotation: int, tmp_path: Path) -> None:
    path = encode_video(
        tmp_path / "r.mp4", moving_square_frames(16, 128, 192, seed=7), "vp9", gop=4, rotation=rotation
    )
    ref = preprocess_video(path, SPEC)
    assert ref.rotation == rotation
    indices, geometry = plan_gpu_decode(path.read_bytes(), SPEC)
    assert geometry[0] == rotation
    (out,) = run_pipeline(build_pipeline(SPEC, device="cpu"), [path.read_bytes()], [indices], [geometry])
    _close_to_reference(out, ref.views)
    # Without the rotation the twin would be far off (the old GPU path ignored it).
    flat = geometry.copy()
    flat[0] = 0
    if rotation != 180:
        flat[1], flat[2] = geometry[2], geometry[1]
        flat[3:] = 0
    (unrotated,) = run_pipeline(build_pipeline(SPEC, device="cpu"), [path.read_bytes()], [indices], [flat])
    assert (np.abs(unrotated - ref.views) * 255).mean() > 10


def test_a_container_frame_count_that_is_wrong_is_refused_clearly(tmp_path: Path) -> None:
    """A truncated MP4 with its index up front claims frames it no longer holds: the reference re-samples
    after decoding, a GPU decoder would count its own way, so the GPU path refuses it by name."""
    full = encode_video(
        tmp_path / "f.mp4", moving_square_frames(40, 128, 160, seed=9), "vp9", gop=5, faststart=True
    )
    data = full.read_bytes()
    cut = data[: int(len(data) * 0.6)]
    with pytest.raises(VideoDecodeError, match="not servable on the GPU path") as err:
        plan_gpu_decode(cut, SPEC)
    assert "claims" in str(err.value) or "truncated" in str(err.value)
    plan_gpu_decode(data, SPEC)  # the whole file is fine


@pytest.mark.parametrize(
    ("facts", "word"),
    [
        (StreamFacts("h264", 1920, 1080, "yuv420p10le", "High 10"), "profile"),
        (StreamFacts("hevc", 1920, 1080, "yuv422p", "Main"), "pixel format"),
        (StreamFacts("h264", 1920, 1080, "yuv444p", "High"), "pixel format"),
        (StreamFacts("vp9", 64, 64, "yuv420p"), "frame size"),
        (StreamFacts("h264", 7680, 4320, "yuv420p", "High"), "frame size"),
        (StreamFacts("ffv1", 640, 480, "yuv420p"), "codec ffv1"),
    ],
)
def test_nvdec_screen_names_the_reason(facts: StreamFacts, word: str) -> None:
    reason = nvdec_refusal(facts)
    assert reason is not None and word in reason
    assert nvdec_refusal(StreamFacts("h264", 1920, 1080, "yuv420p", "High")) is None


def test_dali_refuses_training_specs() -> None:
    with pytest.raises(ValueError, match="evaluation crops"):
        build_pipeline(PreprocessSpec(crops="random"))
    with pytest.raises(ValueError, match="device"):
        build_pipeline(PreprocessSpec(), device="gpu")
