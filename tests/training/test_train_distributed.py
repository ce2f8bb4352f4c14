"""torchrun with 2 CPU processes (gloo) gives the same weights as one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_resume import ROOT, video_run_config

from training.config import load_config
from training.modeling.checkpoint import load_checkpoint
from training.modeling.weights import build_model
from training.train import train

# Mixing and drop-path draw per-process random streams, so they are off here; everything else (sampler
# shards, gradient averaging, accumulation, clipping, the schedule, validation sums) is compared.
SAME = ["mix.prob=0", "model.drop_path_rate=0", "train.epochs=2", "train.checkpoint_every_steps=0"]


@pytest.mark.slow
def test_torchrun_two_cpu_processes_match_one(tmp_path: Path) -> None:
    cfg = video_run_config(tmp_path, "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.train", "-c", str(cfg), *[a for o in SAME for a in ("-o", o)]]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("done:") == 1  # only rank 0 reports and writes

    torch.set_num_threads(1)
    one = load_config(cfg, [*SAME, f"output_dir={tmp_path / 'one'}"])  # batch 2, accumulation 2
    train(one)
    a = load_checkpoint(tmp_path / "ddp" / "last.pt", with_train_state=True)
    b = load_checkpoint(tmp_path / "one" / "last.pt", with_train_state=True)
    assert a.train_state["global_step"] == b.train_state["global_step"] == 8
    for k, v in b.state_dict.items():
        assert torch.allclose(a.state_dict[k], v, atol=1e-5, rtol=1e-4), k
    torch.manual_seed(one["seed"])  # the run's initial weights: training moved them well beyond the tolerance
    init = build_model(one["model"], 8).state_dict()
    assert max(float((init[k] - v).abs().max()) for k, v in b.state_dict.items()) > 1e-2
    ha, hb = a.train_state["history"], b.train_state["history"]
    assert [h["val_count"] for h in ha] == [h["val_count"] for h in hb] == [8, 8]
    for x, y in zip(ha, hb):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-4)
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-4)
