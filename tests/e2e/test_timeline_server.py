"""``video_timeline`` on a real tritonserver over gRPC streaming: the windows equal the in-process
reference, the harness-style inputs work, bad input is one clear error, and clients that leave mid-stream
(politely or killed) leave the server healthy."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from build_engines.export_onnx import ONNX_INPUT, ONNX_OUTPUT, export_onnx
from clients.core import ClientError, infer_probs, make_client, read_video_bytes
from clients.timeline import stream_timeline
from tests.utils_server import build_tiny_repository, running_server
from tests.utils_video import encode_video, moving_square_frames
from training.modeling.checkpoint import load_checkpoint
from training.preprocessing.windows import TimelineDecoder
from triton_models import contract

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("timeline_server")
    repo, ckpt = build_tiny_repository(work)
    with running_server(repo, log_file=work / "tritonserver.log") as server:
        yield server, ckpt, work


@pytest.fixture(scope="module")
def video(served) -> Path:
    # 12 s at 10 fps, a keyframe every 2 s.
    frames = np.concatenate([moving_square_frames(40, 48, 64, dx=d, seed=d + 3) for d in (3, -3, 2)])
    return encode_video(served[2] / "long.mp4", frames, "h264", fps=10, gop=20)


def test_windows_match_the_in_process_reference(served, video: Path) -> None:
    server, ckpt_path, work = served
    ckpt = load_checkpoint(ckpt_path)
    sess = ort.InferenceSession(
        str(export_onnx(ckpt, work / "plain.onnx")), providers=["CPUExecutionProvider"]
    )
    got = list(stream_timeline(server.grpc_url, read_video_bytes(video), 3.0, 2.0))
    with TimelineDecoder(video, ckpt.preprocess, 3.0, 2.0) as tl:
        expect = []
        for clip in tl.clips():
            logits = sess.run([ONNX_OUTPUT], {ONNX_INPUT: clip.views})[0]  # (V, K)
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            expect.append(
                (clip.window.start, clip.window.end, (e / e.sum(axis=1, keepdims=True)).mean(axis=0))
            )
    assert len(got) == len(expect) == 6  # starts 0, 2, .. 10 s; the last one reaches 12 s
    assert [w.start for w in got] == sorted(w.start for w in got)
    for w, (start, end, probs) in zip(got, expect):
        assert (w.start, w.end) == pytest.approx((start, end), abs=1e-5)
        np.testing.assert_allclose(w.probs, probs, atol=1e-5)
        assert w.probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert got[0].arrived_s < got[-1].arrived_s


def test_raw_grpc_stream_as_an_outside_harness_sends_it(served, video: Path) -> None:
    """Plain tritonclient: [1, n] VIDEO, [1, 1] WINDOW_SECONDS/STRIDE_SECONDS, WINDOW/PROBS per response."""
    server = served[0]
    results: list = []
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.append((result, error)))
    data = read_video_bytes(video).reshape(1, -1)
    inputs = [grpcclient.InferInput(contract.VIDEO, list(data.shape), "UINT8")]
    inputs[0].set_data_from_numpy(data)
    for name, value in ((contract.WINDOW_SECONDS, 4.0), (contract.STRIDE_SECONDS, 4.0)):
        t = grpcclient.InferInput(name, [1, 1], "FP32")
        t.set_data_from_numpy(np.asarray([[value]], np.float32))
        inputs.append(t)
    client.async_stream_infer(contract.TIMELINE, inputs, enable_empty_final_response=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(
        r is not None and r.get_response().parameters["triton_final_response"].bool_param for r, _ in results
    ):
        time.sleep(0.05)
    client.stop_stream()
    windows = [
        r.as_numpy(contract.WINDOW)
        for r, e in results
        if e is None and r.as_numpy(contract.WINDOW) is not None
    ]
    assert [w.reshape(-1).tolist() for w in windows] == [[0.0, 4.0], [4.0, 8.0], [8.0, 12.0]]
    probs = [r.as_numpy(contract.PROBS) for r, _ in results if r.as_numpy(contract.PROBS) is not None]
    assert all(p.shape == (1, 5) for p in probs)


def test_bad_video_is_one_clear_error(served) -> None:
    with pytest.raises(ClientError, match="not a readable video container"):
        list(stream_timeline(served[0].grpc_url, np.zeros(5000, np.uint8)))
    with pytest.raises(ClientError, match="STRIDE_SECONDS must be a positive"):
        list(stream_timeline(served[0].grpc_url, np.frombuffer(b"x" * 100, np.uint8), 1.0, -1.0))


_KILLED_CLIENT = """
import sys, time, numpy as np
from clients.timeline import stream_timeline
data = np.fromfile(sys.argv[2], dtype=np.uint8)
for w in stream_timeline(sys.argv[1], data, 0.2, 0.2):
    print(w.index, flush=True)
    time.sleep(0.2)  # a slow reader: the server is still streaming when the client dies
"""


def test_clients_that_leave_mid_stream_leave_the_server_healthy(served, video: Path) -> None:
    server = served[0]
    data = read_video_bytes(video)
    # Politely: the loop stops after two windows, the request is cancelled.
    for i, _ in enumerate(stream_timeline(server.grpc_url, data, 0.2)):
        if i == 1:
            break
    # Rudely: a client process killed while windows are still coming.
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CLIENT, server.grpc_url, str(video)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "0"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # The server answers both models in full afterwards.
    assert make_client(server.grpc_url).is_server_ready()
    windows = list(stream_timeline(server.grpc_url, data, 6.0))
    assert [round(w.end, 3) for w in windows] == [6.0, 12.0]
    assert infer_probs(make_client(server.grpc_url), data).sum() == pytest.approx(1.0, abs=1e-5)
