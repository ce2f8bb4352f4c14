"""The training loop on random-tensor clips: outputs, checkpoints, accumulation, sampler, SWA.

Also home of the small helpers the other training tests import (``RandomClips``, ``tiny_cfg``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from training.config import load_config
from training.loop.distributed import ResumableSampler
from training.modeling.checkpoint import load_checkpoint
from training.train import train

FRAMES, SIZE = 4, 32


class RandomClips:
    """Clips (3, T, H, W) = a per-class random pattern + per-clip noise, with a random brightness offset
    drawn from the ``rng`` the loop passes in (stands in for random crops/sampling)."""

    def __init__(self, n: int, num_classes: int, seed: int = 0, noise: float = 0.5) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % num_classes
        patterns = torch.randn(
            num_classes, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(99)
        )
        self.clips = patterns[self.labels] + noise * torch.randn(n, 3, FRAMES, SIZE, SIZE, generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        return self.clips[index] + 0.1 * float(rng.normal()), int(self.labels[index])


def tiny_cfg(
    out: Path, epochs: int = 2, batch: int = 4, global_batch: int = 8, extra: list[str] | None = None
) -> dict:
    """A config for ``timesformer_tiny`` on 4x32x32 clips, AdamW, fp32, no mixing, no smoothing."""
    return load_config(
        None,
        [
            "model={arch: timesformer_tiny, num_frames: 4, img_size: 32}",
            f"output_dir={out}",
            f"train.epochs={epochs}",
            f"train.batch_size={batch}",
            f"train.global_batch_size={global_batch}",
            "train.label_smoothing=0.0",
            # AdamW: SGD needs far more than these few steps to move a transformer from its init
            "optimizer={name: adamw, lr: 0.003, weight_decay: 0.0}",
            "schedule.warmup_epochs=0.5",
            "schedule.warmup_start_lr=0.0003",
            "data.train_preprocess={num_frames: 4, crop_size: 32, sampling: segment, crops: random}",
            "data.test_preprocess={short_side: 32}",
            *(extra or []),
        ],
    )


def _sd(path: Path) -> dict[str, Any]:
    return load_checkpoint(path).state_dict


def test_loop_writes_checkpoints_logs_and_learns(tmp_path: Path) -> None:
    data = (RandomClips(48, 3, seed=1), RandomClips(24, 3, seed=2), ["a", "b", "c"])
    cfg = tiny_cfg(tmp_path / "run", epochs=3, extra=["mix.prob=0.5", "train.label_smoothing=0.1"])
    m = train(cfg, datasets=data)
    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} >= {"best.pt", "last.pt", "config.yaml", "log.csv", "curves.png"}
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    best = load_checkpoint(out / "best.pt")
    # best.pt carries what serving needs: the test-time spec, labels, model config, provenance
    assert best.preprocess.sampling == "uniform" and best.preprocess.crops == "three"
    assert (best.preprocess.num_frames, best.preprocess.crop_size, best.preprocess.short_side) == (4, 32, 32)
    assert best.labels == ["a", "b", "c"] and best.model_config["num_classes"] == 3
    assert best.meta["metrics"]["val_top1"] == max(
        float(r["val_top1"]) for r in csv.DictReader((out / "log.csv").open())
    )
    last = load_checkpoint(out / "last.pt", with_train_state=True)
    assert last.train_state["epoch"] == 3 and last.train_state["global_step"] == 18
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(out / "config.yaml") == cfg
    assert m["val_top1"] > 60.0  # three separable classes: chance is 33%


def test_gradient_accumulation_matches_one_big_batch(tmp_path: Path) -> None:
    data = (RandomClips(32, 3, seed=1), RandomClips(6, 3, seed=2), ["a", "b", "c"])
    # Momentum SGD: Adam's first steps divide by |g| and so magnify rounding noise in tiny gradients
    sgd = ["optimizer={name: momentum, lr: 0.05, weight_decay: 0.0001}", "train.clip_grad_norm=0"]
    train(tiny_cfg(tmp_path / "big", epochs=1, batch=8, global_batch=8, extra=sgd), datasets=data)
    train(tiny_cfg(tmp_path / "acc", epochs=1, batch=2, global_batch=8, extra=sgd), datasets=data)
    a, b = _sd(tmp_path / "big" / "last.pt"), _sd(tmp_path / "acc" / "last.pt")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5), k


def test_resumable_sampler_shards_and_skips() -> None:
    full = list(ResumableSampler(40, seed=3, global_batch=8))
    assert len(full) == 40 and len({i for i, _ in full}) == 40
    s = ResumableSampler(40, seed=3, global_batch=8)
    s.set_epoch(0)
    s.set_start(12)
    assert list(s) == full[12:]
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in full] and all(e == 1 for _, e in s)
    # two ranks with batch 4 see, step by step, the same global batches of 8 as one process
    r0 = [i for i, _ in ResumableSampler(42, rank=0, world_size=2, seed=3, global_batch=8)]
    r1 = [i for i, _ in ResumableSampler(42, rank=1, world_size=2, seed=3, global_batch=8)]
    one = [i for i, _ in ResumableSampler(42, seed=3, global_batch=8)]
    assert len(one) == 40  # truncated to whole global batches
    for step in range(5):
        assert sorted(r0[4 * step : 4 * step + 4] + r1[4 * step : 4 * step + 4]) == sorted(
            one[8 * step : 8 * step + 8]
        )
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableSampler(5, global_batch=8)


def test_swa_of_the_last_epochs(tmp_path: Path) -> None:
    data = (RandomClips(16, 3, seed=1), RandomClips(6, 3, seed=2), ["a", "b", "c"])
    train(tiny_cfg(tmp_path / "run", epochs=3, extra=["swa.last_k_epochs=2"]), datasets=data)
    kept = sorted((tmp_path / "run" / "swa_epochs").glob("*.pt"))
    assert [p.name for p in kept] == ["epoch_0002.pt", "epoch_0003.pt"]
    e2, e3, swa = _sd(kept[0]), _sd(kept[1]), load_checkpoint(tmp_path / "run" / "swa.pt")
    for k in e2:
        assert torch.allclose(swa.state_dict[k], (e2[k] + e3[k]) / 2, atol=1e-7)
    assert swa.meta["swa"]["epochs"] == [2, 3]
    assert torch.equal(e3["head.weight"], _sd(tmp_path / "run" / "last.pt")["head.weight"])


def test_bad_data_sizes_are_named(tmp_path: Path) -> None:
    data = (RandomClips(4, 2), RandomClips(2, 2), ["a", "b"])
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(tiny_cfg(tmp_path / "r"), datasets=data)
