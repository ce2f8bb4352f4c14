"""Validation during training: loss and top-1/top-5 of single views, summed over processes."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from training.loop.precision import autocast


def topk_correct(probs: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many of the (B, K) rows have their label among the top-k, for each k (k capped at K)."""
    kmax = min(max(ks), probs.shape[1])
    top = probs.topk(kmax, dim=1).indices  # (B, kmax)
    hits = top == labels[:, None]  # (B, kmax)
    return [int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    desc: str = "val",
    show: bool = True,
) -> dict[str, float]:
    """Single-view accuracy: loss, top-1 and top-5 (in %), counts summed over all processes."""
    from tqdm import tqdm

    from training.loop.distributed import all_reduce_sum

    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss*n, top1, top5, n
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not show):
        x, y = x.to(device, non_blocking=True), y.to(device)  # (B, 3, T, H, W), (B,)
        with autocast(device, dtype):
            logits = model(x)  # (B, K)
        logits = logits.float()
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        t1, t5 = topk_correct(logits, y)
        sums += torch.tensor([float(loss), t1, t5, y.shape[0]], dtype=torch.float64)
    all_reduce_sum(sums)
    n = max(float(sums[3]), 1.0)
    return {
        "val_loss": float(sums[0]) / n,
        "val_top1": 100 * float(sums[1]) / n,
        "val_top5": 100 * float(sums[2]) / n,
        "val_count": int(sums[3]),
    }
