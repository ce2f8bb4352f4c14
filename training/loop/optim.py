"""Optimizer with weight-decay groups and the per-iteration learning-rate schedules of the recipes.

The schedule is a pure function of training progress in (fractional) epochs, evaluated before every
optimizer step: nothing but the step counter needs saving to resume it exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _matches(name: str, patterns: list[str]) -> bool:
    return any(name == p or name.endswith("." + p) for p in patterns)


def param_groups(model: nn.Module, weight_decay: float, no_weight_decay: list[str]) -> list[dict[str, Any]]:
    """Two groups: decayed parameters and those named in ``no_weight_decay`` (PP-TimeSformer exempts
    cls_token, pos_embed, time_embed and the head bias). Unwraps DDP's ``module.`` prefix."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = name.removeprefix("module.")
        (no_decay if _matches(name, no_weight_decay) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, opt_cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Momentum (SGD with momentum, optionally Nesterov: Paddle's ``Momentum``), plain SGD, or AdamW.

    Weight decay is coupled L2 for the SGD family, as Paddle's ``L2Decay`` regularizer is.
    """
    groups = param_groups(model, float(opt_cfg["weight_decay"]), list(opt_cfg["no_weight_decay"]))
    lr = float(opt_cfg["lr"])
    name = opt_cfg["name"]
    if name in ("momentum", "sgd"):
        momentum = float(opt_cfg["momentum"] or 0.0)
        nesterov = bool(opt_cfg["nesterov"]) and momentum > 0
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(opt_cfg["betas"]))
    raise ValueError(f"unknown optimizer {name!r}")


class LRSchedule:
    """Learning rate as a function of fractional epoch ``e`` (``step / steps_per_epoch``).

    warmup_cosine (PaddleVideo's ``CustomWarmupCosine``, from SlowFast): the cosine runs over the whole
    schedule, ``cos_lr(e) = min_lr + (lr - min_lr) * (1 + cos(pi * e / epochs)) / 2``; during the first
    ``warmup_epochs`` the lr rises linearly from ``warmup_start_lr`` to ``cos_lr(warmup_epochs)``.
    steps: ``lr * gamma ** (number of step epochs <= e)``, with the same optional linear warmup.
    constant: ``lr``.
    """

    def __init__(self, sched_cfg: dict[str, Any], base_lr: float, epochs: int) -> None:
        self.name = sched_cfg["name"]
        self.base_lr = float(base_lr)
        self.epochs = float(epochs)
        self.warmup_epochs = float(sched_cfg["warmup_epochs"])
        self.warmup_start_lr = float(sched_cfg["warmup_start_lr"])
        self.min_lr = float(sched_cfg["min_lr"])
        self.steps = sorted(float(s) for s in sched_cfg["steps"])
        self.gamma = float(sched_cfg["gamma"])

    def _main(self, e: float) -> float:
        if self.name == "warmup_cosine":
            e = min(e, self.epochs)
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (
                1.0 + math.cos(math.pi * e / self.epochs)
            )
        if self.name == "steps":
            return self.base_lr * self.gamma ** sum(1 for s in self.steps if e >= s)
        return self.base_lr

    def __call__(self, epoch: float) -> float:
        if self.warmup_epochs > 0 and epoch < self.warmup_epochs and self.name != "constant":
            end = self._main(self.warmup_epochs)
            return self.warmup_start_lr + (end - self.warmup_start_lr) * epoch / self.warmup_epochs
        return self._main(epoch)

    def apply(self, optimizer: torch.optim.Optimizer, epoch: float) -> float:
        """Set every group's lr for the step about to be taken; returns it."""
        lr = self(epoch)
        for g in optimizer.param_groups:
            g["lr"] = lr
        return lr
