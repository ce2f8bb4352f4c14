"""Multi-view test CLI: softmax once per view then averaged, top-k, per-class accuracy, confusion PNG,
metrics JSON, frame-count override through the time_embed resize, and reversed-frame evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.utils_model import make_tiny_checkpoint
from tests.utils_video import encode_video, moving_square_frames
from training.data.datasets import VideoDataset, VideoEntry
from training.modeling.checkpoint import load_checkpoint
from training.modeling.views import predict_views
from training.test import SHORT_KEYS, main


@pytest.fixture(scope="module")
def video_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four real H.264 videos (two per direction) with a Kinetics-style list and a label list."""
    root = tmp_path_factory.mktemp("videos")
    lines = []
    for i, (dx, label) in enumerate([(3, 0), (-3, 1), (2, 0), (-2, 1)]):
        name = f"v{i}.mp4"
        encode_video(root / name, moving_square_frames(num=12, height=40, width=48, size=12, dx=dx, seed=i))
        lines.append(f"{name} {label}")
    (root / "test.list").write_text("\n".join(lines) + "\n")
    (root / "labels.txt").write_text("0 right\n1 left\n")
    return root


def _config(tmp: Path, root: Path) -> Path:
    cfg = tmp / "c.yaml"
    cfg.write_text(f"data: {{root: {root}, test_list: test.list, label_list: labels.txt}}\n")
    return cfg


def test_softmax_once_per_view_then_mean() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, 5))
    views = torch.randn(2, 3, 3, 2, 4, 4)  # (B, V, 3, T, H, W)
    probs = predict_views(model, views)
    logits = model(views.flatten(0, 1)).view(2, 3, 5)
    assert torch.allclose(probs, logits.softmax(-1).mean(1))
    assert torch.allclose(probs.sum(-1), torch.ones(2))
    assert not torch.allclose(probs, logits.mean(1).softmax(-1))  # not the softmax of mean logits
    assert not torch.allclose(probs, probs.softmax(-1))  # and no second softmax


def test_cli_writes_metrics_and_confusion(tmp_path: Path, video_set: Path) -> None:
    ckpt = make_tiny_checkpoint(
        tmp_path / "m.pt", num_classes=2, num_frames=4, img_size=32, labels=["r", "l"]
    )
    out = tmp_path / "out"
    assert main(["-c", str(_config(tmp_path, video_set)), "-w", str(ckpt), "-o", f"output_dir={out}"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["count"] == 4 and m["top5"] == 100.0  # two classes: top-5 is always right
    assert np.asarray(m["confusion"]).sum() == 4 and len(m["per_class_top1"]) == 2
    correct = np.trace(np.asarray(m["confusion"]))
    assert m["top1"] == pytest.approx(100 * correct / 4)
    assert m["spec"]["crops"] == "three" and m["spec"]["num_frames"] == 4 and m["labels"] == ["r", "l"]
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_frame_count_override_and_reverse(tmp_path: Path, video_set: Path) -> None:
    ckpt = make_tiny_checkpoint(tmp_path / "m.pt", num_classes=2, num_frames=4, img_size=32)
    cfg = str(_config(tmp_path, video_set))
    out8 = tmp_path / "o8"
    args = [
        "-c",
        cfg,
        "-w",
        str(ckpt),
        "-o",
        "num_frames=8",
        "-o",
        "sampling=paddle",
        "-o",
        f"output_dir={out8}",
    ]
    assert main(args) == 0
    spec = json.loads((out8 / "metrics.json").read_text())["spec"]
    assert spec["num_frames"] == 8 and spec["sampling"] == "paddle"
    outr = tmp_path / "rev"
    assert main(["-c", cfg, "-w", str(ckpt), "-o", "reverse_frames=true", "-o", f"output_dir={outr}"]) == 0
    assert json.loads((outr / "metrics.json").read_text())["reverse_frames"] is True
    assert {"num_frames", "sampling", "crops", "reverse_frames"} <= set(SHORT_KEYS)


def test_reversed_views_are_the_same_frames_backwards(video_set: Path, tmp_path: Path) -> None:
    spec = load_checkpoint(make_tiny_checkpoint(tmp_path / "m.pt", num_frames=4)).preprocess
    sample = [VideoEntry("v0.mp4", 0)]
    fwd, _ = VideoDataset(sample, video_set, spec, train=False)[0]
    rev, _ = VideoDataset(sample, video_set, spec, train=False, reverse=True)[0]
    assert fwd.shape == (3, 3, 4, 32, 32)  # (V, 3, T, H, W)
    assert torch.equal(rev, fwd.flip(2)) and not torch.equal(rev, fwd)


def test_bad_inputs_exit_with_one_line(
    tmp_path: Path, video_set: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = str(_config(tmp_path, video_set))
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 64)
    assert main(["-c", cfg, "-w", str(tmp_path / "junk.pt")]) == 2
    ckpt = make_tiny_checkpoint(tmp_path / "m.pt", num_classes=2)
    assert main(["-c", cfg, "-w", str(ckpt), "-o", "crops=diagonal"]) == 2
    (video_set / "bad.list").write_text("v0.mp4 zero\n")
    assert main(["-c", cfg, "-w", str(ckpt), "-o", "data.test_list=bad.list"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "junk.pt" in err[0] and "crops" in err[1] and "bad.list:1" in err[2]
