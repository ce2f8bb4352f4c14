"""Run state for exact resume: per-step seeding, RNG states, the run checkpoint's save and restore."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.data.datasets import step_rng
from training.modeling.checkpoint import Checkpoint, CheckpointError, load_checkpoint


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def seed_step(seed: int, *parts: int) -> None:
    """Re-seed torch's global generator (drop-path masks, dropout) from (seed, parts)."""
    torch.manual_seed(int(step_rng(seed, *parts).integers(2**62)))


def rng_states() -> dict[str, Any]:
    """torch/numpy/python RNG states in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def new_run_state() -> dict[str, Any]:
    """What, besides weights/optimizer/RNG, a resumed run needs: where it is and what it has logged."""
    return {
        "epoch": 0,
        "step_in_epoch": 0,
        "global_step": 0,
        "best_top1": -1.0,
        "history": [],
        "epoch_sums": [0.0, 0.0, 0.0],
    }


def save_run_checkpoint(
    path: Path,
    model: nn.Module,
    cfg: dict[str, Any],
    labels: list[str],
    st: dict[str, Any],
    metrics: dict[str, Any],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any = None,
) -> None:
    """A native checkpoint (atomic write) carrying the TEST-time preprocessing spec -- what serving must
    use -- and, when ``optimizer`` is given, the train_state for an exact resume."""
    from training.config import preprocess_spec
    from training.modeling.checkpoint import save_checkpoint

    ts = None
    if optimizer is not None:
        ts = {
            **st,
            "optimizer": optimizer.state_dict(),
            "scheduler": {"global_step": st["global_step"]},
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng": rng_states(),
            "sampler": {
                "epoch": st["epoch"],
                "step_in_epoch": st["step_in_epoch"],
                "consumed_global": st["step_in_epoch"] * cfg["train"]["global_batch_size"],
            },
        }
    m = unwrap(model)
    meta = {
        "epoch": st["epoch"],
        "step_in_epoch": st["step_in_epoch"],
        "global_step": st["global_step"],
        "metrics": metrics,
        "config": str(Path(cfg["output_dir"]) / "config.yaml"),
    }
    ckpt = Checkpoint(
        m.model_config, preprocess_spec(cfg, "test_preprocess"), m.state_dict(), list(labels), meta, ts
    )
    save_checkpoint(ckpt, path)


def restore_run(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any
) -> dict[str, Any]:
    """Load weights, optimizer, scaler and RNG states from ``last.pt``; returns the run state."""
    ck = load_checkpoint(path, with_train_state=True)
    ts = ck.train_state
    if not ts:
        raise CheckpointError(f"{path}: has no train_state to resume from")
    unwrap(model).load_state_dict(ck.state_dict)
    optimizer.load_state_dict(ts["optimizer"])
    if ts.get("scaler"):
        scaler.load_state_dict(ts["scaler"])
    set_rng_states(ts["rng"])
    return {k: ts[k] for k in new_run_state()}
