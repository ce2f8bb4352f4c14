"""Test helpers for anything that needs a model or a checkpoint: tiny, seeded, made in the test run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from training.modeling.checkpoint import Checkpoint, save_checkpoint
from training.modeling.model import TimeSformer, timesformer_tiny
from training.preprocessing.spec import PreprocessSpec

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "timesformer_divided_tiny"


def tiny_model(
    num_classes: int = 5,
    num_frames: int = 4,
    img_size: int = 32,
    seed: int = 0,
    perturb: float = 0.05,
    **kwargs: Any,
) -> TimeSformer:
    """A seeded ``timesformer_tiny`` in eval mode whose every parameter is non-trivial.

    The official init leaves ``temporal_fc``, ``time_embed``, biases and LayerNorm affines at constants, which
    would make frame order, frame count and several weights invisible to a test; ``perturb`` adds seeded
    N(0, perturb^2) noise to every parameter so that they all matter.
    """
    torch.manual_seed(seed)
    model = timesformer_tiny(num_classes=num_classes, num_frames=num_frames, img_size=img_size, **kwargs)
    if perturb:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * perturb)
    return model.eval()


def make_tiny_checkpoint(
    path: str | Path,
    num_classes: int = 5,
    num_frames: int = 4,
    img_size: int = 32,
    labels: list[str] | None = None,
    spec: PreprocessSpec | None = None,
    seed: int = 0,
    **model_kwargs: Any,
) -> Path:
    """Write a native checkpoint of a tiny random TimeSformer (divided attention unless overridden).

    The preprocessing spec defaults to ``num_frames`` frames, short side and crop ``img_size``, three crops,
    PaddleVideo normalisation; ``labels`` default to ``class_<i>`` names when omitted (stored as None).
    """
    model = tiny_model(num_classes, num_frames, img_size, seed=seed, **model_kwargs)
    if spec is None:
        spec = PreprocessSpec(num_frames=num_frames, short_side=img_size, crop_size=img_size)
    if labels is not None and len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels for num_classes={num_classes}")
    ckpt = Checkpoint(
        model_config=model.model_config,
        preprocess=spec,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        labels=list(labels) if labels is not None else None,
        meta={"source": "tests.utils_model.make_tiny_checkpoint", "seed": seed},
    )
    return save_checkpoint(ckpt, path)
