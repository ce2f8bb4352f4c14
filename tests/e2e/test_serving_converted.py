"""A checkpoint converted from the official TimeSformer format serves through the same commands:
``training.convert`` -> ``build_engines.build`` -> a real server -> ``clients.classify``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clients.core import infer_probs, make_client, read_video_bytes
from tests.utils_model import FIXTURE_DIR
from tests.utils_server import running_server
from tests.utils_video import encode_video, moving_square_frames
from training.modeling.checkpoint import load_checkpoint
from training.preprocessing import preprocess_video

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, f"{args[0]} failed: {r.stderr}"
    return r


def test_official_checkpoint_serves_through_the_same_commands(tmp_path: Path) -> None:
    src = FIXTURE_DIR / "checkpoint.pyth"
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{i} action_{i}\n" for i in range(5)))
    ckpt_path = tmp_path / "converted.pt"
    _run("training.convert", str(src), "-o", str(ckpt_path), "--num-heads", "3",
         "--labels", str(labels))  # fmt: skip
    repo = tmp_path / "repo"
    _run("build_engines.build", "--checkpoint", str(ckpt_path), "--target", "cpu", "-o", str(repo))
    video = encode_video(tmp_path / "clip.mp4", moving_square_frames(24, 48, 64, seed=7), "h264")

    ckpt = load_checkpoint(ckpt_path)
    model = ckpt.build_model()
    views = torch.from_numpy(preprocess_video(video, ckpt.preprocess).views)  # (V, 3, T, H, W)
    with torch.no_grad():
        want = model(views).softmax(-1).mean(0).numpy()  # (K,)

    with running_server(repo, log_file=tmp_path / "tritonserver.log") as server:
        got = infer_probs(make_client(server.grpc_url, "grpc"), read_video_bytes(video))
        np.testing.assert_allclose(got, want, atol=1e-4)
        r = _run("clients.classify", str(video), "--url", server.http_url, "--protocol", "http", "--json")
    (doc,) = json.loads(r.stdout)
    assert doc["top1_class"] == int(np.argmax(want))
    assert doc["top1_label"] == f"action_{int(np.argmax(want))}"
    assert abs(doc["top1_score"] - float(want.max())) < 1e-4
