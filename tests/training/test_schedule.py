"""Per-iteration learning-rate schedules and the weight-decay parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from training.config import load_config
from training.loop.optim import LRSchedule, build_optimizer, param_groups
from training.modeling.weights import build_model


def _sched(**kw: object) -> dict:
    base = {
        "name": "warmup_cosine",
        "warmup_epochs": 2.0,
        "warmup_start_lr": 2.5e-4,
        "min_lr": 0.0,
        "steps": [],
        "gamma": 0.1,
    }
    return {**base, **kw}


def test_pptimesformer_warmup_cosine() -> None:
    s = LRSchedule(_sched(), base_lr=2.5e-3, epochs=20)
    cos = lambda e: 2.5e-3 * 0.5 * (1 + math.cos(math.pi * e / 20))  # noqa: E731
    assert s(0.0) == pytest.approx(2.5e-4)
    assert s(1.0) == pytest.approx(2.5e-4 + (cos(2.0) - 2.5e-4) / 2)  # linear: half-way at one epoch
    assert s(2.0) == pytest.approx(cos(2.0))  # continuous where the warmup ends
    assert s(10.0) == pytest.approx(2.5e-3 / 2)
    assert s(20.0) == pytest.approx(0.0, abs=1e-12)
    lrs = [s(i / 100) for i in range(2000)]
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert peak == 200  # rises over the warmup (per iteration), then only falls
    assert all(a < b for a, b in zip(lrs[:200], lrs[1:201]))
    assert all(a >= b for a, b in zip(lrs[200:], lrs[201:]))


def test_step_schedule_original_timesformer() -> None:
    s = LRSchedule(_sched(name="steps", warmup_epochs=0.0, steps=[11, 14]), base_lr=0.005, epochs=15)
    assert [s(e) for e in (0, 10.99, 11, 13.5, 14, 14.9)] == pytest.approx(
        [0.005, 0.005, 5e-4, 5e-4, 5e-5, 5e-5]
    )


def test_schedule_sets_every_group() -> None:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias]}], lr=1.0)
    lr = LRSchedule(_sched(name="constant"), 0.3, 5).apply(opt, 2.5)
    assert lr == 0.3 and [g["lr"] for g in opt.param_groups] == [0.3, 0.3]


def test_weight_decay_groups_exempt_embeddings_and_head_bias() -> None:
    cfg = load_config(None, ["model.arch=timesformer_tiny"])
    model = build_model(cfg["model"], 4)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 7e-5, cfg["optimizer"]["no_weight_decay"])
    exempt = {names[id(p)] for p in groups[1]["params"]}
    assert exempt == {"cls_token", "pos_embed", "time_embed", "head.bias"}
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 7e-5
    assert "head.weight" in {names[id(p)] for p in groups[0]["params"]}
    opt = build_optimizer(model, cfg["optimizer"])
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
