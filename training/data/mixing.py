"""VideoMix (mixup or cutmix per batch) and label smoothing, producing soft targets.

Fixes two defects of PaddleVideo's ``VideoMix``: its cutmix box is cut on the (T, H) axes of an
``(N, C, T, H, W)`` batch, i.e. across time rather than as one spatial box, and its lambda comes from the
unclipped box. Here one spatial box is shared by every frame of a clip and lambda is recomputed from the
area actually pasted after clipping to the frame.

All randomness comes from the ``numpy.random.Generator`` passed in, so a caller that derives it from
(seed, epoch, step) gets the same mixing after a resume and on any number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) int64 -> (B, K) float32: ``(1 - smoothing) * onehot + smoothing / K``."""
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D class indices, got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.tolist()}")
    out = torch.full((labels.shape[0], num_classes), smoothing / num_classes, device=labels.device)
    out.scatter_(1, labels[:, None], 1.0 - smoothing + smoothing / num_classes)  # (B, K)
    return out


@dataclass(frozen=True)
class MixInfo:
    """What was done to a batch: mode none|mixup|cutmix, the effective lambda (weight of the original
    clip), the partner permutation and, for cutmix, the box (y1, y2, x1, x2)."""

    mode: str
    lam: float
    perm: tuple[int, ...] = ()
    box: tuple[int, int, int, int] | None = None


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box covering about ``1 - lam`` of an h x w frame, centred uniformly, clipped to the frame."""
    ratio = float(np.sqrt(1.0 - lam))
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y1, y2 = int(np.clip(cy - cut_h // 2, 0, h)), int(np.clip(cy + cut_h // 2, 0, h))
    x1, x2 = int(np.clip(cx - cut_w // 2, 0, w)), int(np.clip(cx + cut_w // 2, 0, w))
    return y1, y2, x1, x2


class VideoMix:
    """Per batch: with probability ``prob`` mix, choosing cutmix with ``cutmix_prob`` else mixup.

    ``__call__(x (B, 3, T, H, W), targets (B, K), rng)`` returns the mixed clips, the mixed soft targets
    ``lam * t + (1 - lam) * t[perm]`` and a :class:`MixInfo`.
    """

    def __init__(
        self, prob: float = 1.0, cutmix_prob: float = 0.5, mixup_alpha: float = 0.2, cutmix_alpha: float = 1.0
    ) -> None:
        for name, v in (("prob", prob), ("cutmix_prob", cutmix_prob)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"VideoMix {name} must be in [0, 1], got {v}")
        if prob > 0 and (mixup_alpha <= 0 or cutmix_alpha <= 0):
            raise ValueError("VideoMix alphas must be positive")
        self.prob, self.cutmix_prob = prob, cutmix_prob
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha

    def __call__(
        self, x: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, MixInfo]:
        if x.ndim != 5:
            raise ValueError(f"VideoMix expects (B, C, T, H, W) clips, got shape {tuple(x.shape)}")
        b, _, _, h, w = x.shape
        # Draw every random number in a fixed order, whatever branch is taken, so the stream stays
        # aligned across processes and resumes.
        do_mix = rng.random() < self.prob
        use_cutmix = rng.random() < self.cutmix_prob
        perm_np = rng.permutation(b)
        if not do_mix or b < 2:
            return x, targets, MixInfo("none", 1.0)
        perm = torch.as_tensor(perm_np, device=x.device)
        if use_cutmix:
            lam0 = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
            y1, y2, x1, x2 = cutmix_box(h, w, lam0, rng)
            x = x.clone()
            # One spatial box for all T frames: (B, C, T, y2-y1, x2-x1).
            x[:, :, :, y1:y2, x1:x2] = x[perm][:, :, :, y1:y2, x1:x2]
            lam = 1.0 - (y2 - y1) * (x2 - x1) / float(h * w)  # from the clipped box actually pasted
            info = MixInfo("cutmix", lam, tuple(perm_np.tolist()), (y1, y2, x1, x2))
        else:
            lam = float(rng.beta(self.mixup_alpha, self.mixup_alpha))
            x = lam * x + (1.0 - lam) * x[perm]  # (B, C, T, H, W)
            info = MixInfo("mixup", lam, tuple(perm_np.tolist()))
        mixed = lam * targets + (1.0 - lam) * targets[perm]  # (B, K)
        return x, mixed, info
