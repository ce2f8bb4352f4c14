"""Several views of one video -> one answer: softmax per view, then the mean over the views.

Used by evaluation (``python -m training.test``) and by serving (the exported ``VIEWS -> PROBS`` graph that
ONNX Runtime and TensorRT run), so both compute the same probabilities. Averaging probabilities, not logits,
is what PaddleVideo and mmaction2 (``average_clips='prob'``) do; softmax is applied exactly once, so the
result sums to one (PaddleVideo's predict tool applies a second softmax over the average, which flattens
the scores).
"""

from __future__ import annotations

import torch
from torch import nn


def average_view_probs(logits: torch.Tensor, num_views: int) -> torch.Tensor:
    """``(B*V, K)`` logits, views of one video adjacent -> ``(B, K)`` view-averaged probabilities."""
    probs = logits.softmax(dim=-1)  # (B*V, K)
    return probs.reshape(-1, int(num_views), probs.shape[-1]).mean(dim=1)  # (B, K)


class ViewAveragedClassifier(nn.Module):
    """A video classifier over views: ``(B, V, 3, T, H, W)`` -> ``(B, K)`` probabilities.

    ``V`` is fixed (static in an exported graph), ``B`` may vary.
    """

    def __init__(self, model: nn.Module, num_views: int) -> None:
        super().__init__()
        self.model = model
        self.num_views = int(num_views)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape((-1, *x.shape[2:]))  # (B*V, 3, T, H, W)
        return average_view_probs(self.model(flat).float(), self.num_views)  # (B, K)


@torch.no_grad()
def predict_views(model: nn.Module, views: torch.Tensor) -> torch.Tensor:
    """``(B, V, 3, T, H, W)`` views -> ``(B, K)`` probabilities with ``model`` in its current mode."""
    return ViewAveragedClassifier(model, views.shape[1])(views)
