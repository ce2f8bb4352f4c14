"""Exact resume: a run killed with SIGKILL mid-epoch and restarted with --resume ends with the same weights
as an uninterrupted run; checkpoints are never half-written.

Also home of ``video_run_config``, the tiny real-video setup the subprocess tests share.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from training.config import load_config
from training.modeling.checkpoint import load_checkpoint
from training.synth import make_synthetic_dataset
from training.train import main as train_main
from training.train import train

ROOT = Path(__file__).resolve().parents[2]


def video_run_config(tmp: Path, name: str = "run", **train_keys: object) -> Path:
    """A YAML config for the tiniest TimeSformer (4 frames of 16x16, patch 8) on 16 real synthetic
    H.264 videos (2 per class) made here; ``train_keys`` override the ``train`` section."""
    data = tmp / "synthetic"
    if not (data / "val.list").is_file():
        make_synthetic_dataset(data, per_class=2, val_per_class=1, seed=0, progress=False)
    spec = {"num_frames": 4, "crop_size": 16, "short_side": 16, "mean": [0.45] * 3, "std": [0.225] * 3}
    cfg = {
        "seed": 1,
        "output_dir": str(tmp / name),
        "model": {
            "arch": "timesformer_tiny",
            "num_frames": 4,
            "img_size": 16,
            "embed_dim": 24,
            "depth": 1,
            "num_heads": 2,
            "drop_path_rate": 0.1,
        },
        "data": {
            "root": str(data),
            "train_list": "train.list",
            "val_list": "val.list",
            "label_list": "labels.txt",
            "cache": True,
            "train_preprocess": {**spec, "sampling": "segment", "short_side_max": 20, "crops": "random"},
            "val_preprocess": {"crops": "center", "short_side": 16},
            "test_preprocess": {"short_side": 16},
        },
        "train": {
            "epochs": 3,
            "batch_size": 2,
            "global_batch_size": 4,
            "label_smoothing": 0.1,
            "checkpoint_every_steps": 1,
            "plot_every_epochs": 0,
            **train_keys,
        },
        "optimizer": {"lr": 0.05},
        "schedule": {"warmup_epochs": 1},
        "mix": {"prob": 0.5},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cmd(cfg: Path, *extra: str) -> list[str]:
    return [sys.executable, "-u", "-m", "training.train", "-c", str(cfg), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    torch.set_num_threads(1)  # the same intra-op threading as the subprocesses
    ref_cfg = load_config(video_run_config(tmp_path, "ref"))
    train(ref_cfg)
    ref = load_checkpoint(tmp_path / "ref" / "last.pt").state_dict

    cfg = video_run_config(tmp_path, "killed")
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _cmd(cfg), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    seen = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("checkpoint:"):
                seen.append(line)
            if len(seen) == 2:  # epoch 1, step 2 of 4 written: kill while step 3 runs
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and len(seen) == 2
    killed_at = load_checkpoint(out / "last.pt", with_train_state=True)  # whatever moment: last.pt loads
    assert killed_at.train_state["step_in_epoch"] >= 2 and killed_at.train_state["global_step"] < 12

    done = subprocess.run(
        _cmd(cfg, "--resume"), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = load_checkpoint(out / "last.pt", with_train_state=True)
    assert resumed.train_state["global_step"] == 12
    for k, v in ref.items():
        assert torch.allclose(resumed.state_dict[k], v, atol=1e-6, rtol=1e-5), k
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert [r["epoch"] for r in resumed.train_state["history"]] == [1, 2, 3]
    ref_hist = load_checkpoint(tmp_path / "ref" / "last.pt", with_train_state=True).train_state["history"]
    assert [r["val_top1"] for r in resumed.train_state["history"]] == [r["val_top1"] for r in ref_hist]


def test_resume_without_checkpoint_starts_fresh_and_bad_last_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = video_run_config(tmp_path, "fresh", epochs=1, checkpoint_every_steps=0)
    out = tmp_path / "fresh"
    out.mkdir()
    (out / "last.pt").write_bytes(b"truncated")
    assert train_main(["-c", str(cfg), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt" in err[0]
    (out / "last.pt").unlink()
    assert train_main(["-c", str(cfg), "--resume"]) == 0  # nothing to resume from: a fresh start
    assert load_checkpoint(out / "last.pt", with_train_state=True).train_state["epoch"] == 1
