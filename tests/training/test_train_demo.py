"""A small, honest version of the CPU demo (``python -m training.demo_check`` is the full one): a tiny
TimeSformer trained for seconds on real H.264 videos of a square moving horizontally or vertically must
clearly beat chance, and the reversed-frame evaluation must run end to end. Motion direction (left vs
right) needs far more training than a unit test can afford, so the axis of motion is the task here; it does
not depend on frame order, so the reversed-frame accuracy is only reported, not bounded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.utils_video import encode_video, moving_square_frames
from training.config import load_config
from training.test import main as eval_cli
from training.train import train


def _videos(root: Path, split: str, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(per_class * 2):
        label = i % 2  # 0: horizontal motion, 1: vertical motion
        speed = int(rng.integers(2, 4)) * int(rng.choice([-1, 1]))
        dx, dy = (speed, 0) if label == 0 else (0, speed)
        frames = moving_square_frames(
            num=12, height=36, width=36, size=10, dx=dx, dy=dy, seed=int(rng.integers(1 << 30))
        )
        name = f"{split}/{i:03d}.mp4"
        (root / split).mkdir(parents=True, exist_ok=True)
        encode_video(root / name, frames, fps=12)
        lines.append(f"{name} {label}")
    (root / f"{split}.list").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_tiny_run_beats_chance_and_reversed_evaluation_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _videos(data, "train", 16, seed=0)
    _videos(data, "val", 6, seed=1)
    (data / "labels.txt").write_text("0 horizontal\n1 vertical\n")
    spec = {"num_frames": 4, "crop_size": 16, "short_side": 16, "mean": [0.45] * 3, "std": [0.225] * 3}
    cfg = {
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "model": {
            "arch": "timesformer_tiny",
            "num_frames": 4,
            "img_size": 16,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 2,
            "patch_size": 4,
            "time_embed_init_std": 0.5,
        },
        "data": {
            "root": str(data),
            "train_list": "train.list",
            "val_list": "val.list",
            "label_list": "labels.txt",
            "cache": True,
            "train_preprocess": {**spec, "sampling": "segment", "crops": "random", "short_side_max": 18},
            "val_preprocess": {"crops": "center", "short_side": 16},
            "test_preprocess": {"short_side": 16},
        },
        "train": {"epochs": 15, "batch_size": 4, "global_batch_size": 4, "plot_every_epochs": 0},
        "optimizer": {"name": "adamw", "lr": 0.004, "weight_decay": 0.01},
        "schedule": {"warmup_epochs": 1, "warmup_start_lr": 0.0004},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    m = train(load_config(path))
    assert m["val_top1"] >= 75.0, m  # chance: 50 %
    best = str(tmp_path / "run" / "best.pt")
    out_f, out_r = tmp_path / "fwd", tmp_path / "rev"
    assert eval_cli(["-c", str(path), "-w", best, "-o", f"output_dir={out_f}"]) == 0
    assert (
        eval_cli(["-c", str(path), "-w", best, "-o", "reverse_frames=true", "-o", f"output_dir={out_r}"]) == 0
    )
    fwd = json.loads((out_f / "metrics.json").read_text())
    rev = json.loads((out_r / "metrics.json").read_text())
    assert fwd["top1"] >= 75.0 and fwd["count"] == rev["count"] == 12
    assert rev["reverse_frames"] is True and not fwd["reverse_frames"]
