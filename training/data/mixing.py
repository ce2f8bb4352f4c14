"""VideoMix (mixup or cutmix per batch) and label smoothing, producing soft targets.

Cutmix has two modes (``cutmix_mode``):

``spatial`` (default)
    One spatial box, shared by every frame of a clip, is pasted from the partner clip, and lambda (the
    weight of the clip's own label) is the fraction of pixels NOT replaced: ``1 - box_h * box_w / (H * W)``,
    computed from the box after clipping to the frame, so the label mix equals the pixel mix.
``paddle``
    PaddleVideo's ``VideoMix`` / ``Cutmix`` (``loader/pipelines/mix.py``) as published, to reproduce its
    numbers: its ``rand_bbox`` reads ``size[2]``, ``size[3]`` as width and height, but its clips are
    ``(N, C, T, H, W)``, so the "box" spans frames ``t1:t2`` x rows ``y1:y2`` across the FULL width; and its
    lambda is ``1 - (t2 - t1) * (y2 - y1) / (H * W)`` -- the box's clipped size over the wrong area. The
    pixels replaced are ``(t2-t1)(y2-y1) / (T H)`` of the clip, ``W / T`` times (28 x at 8 x 224) more than
    the partner's label weight: over cutmix's Beta(1, 1) draws at 8 x 224, about 27 % of a clip is replaced
    on average while the partner label gets about 1 %.

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
    clip's label), the partner permutation and, for cutmix, the box: (y1, y2, x1, x2) in ``spatial`` mode,
    (t1, t2, y1, y2) -- frames x rows, full width -- in ``paddle`` mode."""

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


def paddle_cutmix_box(t: int, h: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """PaddleVideo's ``rand_bbox`` on an ``(N, C, T, H, W)`` batch: its ``w = size[2]`` is T and its
    ``h = size[3]`` is H. Returns ``(t1, t2, y1, y2)``, drawing ``cx`` (over T) before ``cy`` (over H)."""
    ratio = float(np.sqrt(1.0 - lam))
    cut_t, cut_h = int(t * ratio), int(h * ratio)
    ct, cy = int(rng.integers(t)), int(rng.integers(h))
    t1, t2 = int(np.clip(ct - cut_t // 2, 0, t)), int(np.clip(ct + cut_t // 2, 0, t))
    y1, y2 = int(np.clip(cy - cut_h // 2, 0, h)), int(np.clip(cy + cut_h // 2, 0, h))
    return t1, t2, y1, y2


CUTMIX_MODES = ("spatial", "paddle")


class VideoMix:
    """Per batch: with probability ``prob`` mix, choosing cutmix with ``cutmix_prob`` else mixup;
    ``cutmix_mode`` picks our spatial box or PaddleVideo's published one (module docstring).

    ``__call__(x (B, 3, T, H, W), targets (B, K), rng)`` returns the mixed clips, the mixed soft targets
    ``lam * t + (1 - lam) * t[perm]`` and a :class:`MixInfo`.
    """

    def __init__(
        self,
        prob: float = 1.0,
        cutmix_prob: float = 0.5,
        mixup_alpha: float = 0.2,
        cutmix_alpha: float = 1.0,
        cutmix_mode: str = "spatial",
    ) -> None:
        for name, v in (("prob", prob), ("cutmix_prob", cutmix_prob)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"VideoMix {name} must be in [0, 1], got {v}")
        if prob > 0 and (mixup_alpha <= 0 or cutmix_alpha <= 0):
            raise ValueError("VideoMix alphas must be positive")
        if cutmix_mode not in CUTMIX_MODES:
            raise ValueError(f"VideoMix cutmix_mode must be one of {CUTMIX_MODES}, got {cutmix_mode!r}")
        self.prob, self.cutmix_prob = prob, cutmix_prob
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.cutmix_mode = cutmix_mode

    def __call__(
        self, x: torch.Tensor, targets: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, MixInfo]:
        if x.ndim != 5:
            raise ValueError(f"VideoMix expects (B, C, T, H, W) clips, got shape {tuple(x.shape)}")
        b, _, t, h, w = x.shape
        # Draw every random number in a fixed order, whatever branch is taken, so the stream stays
        # aligned across processes and resumes.
        do_mix = rng.random() < self.prob
        use_cutmix = rng.random() < self.cutmix_prob
        perm_np = rng.permutation(b)
        if not do_mix or b < 2:
            return x, targets, MixInfo("none", 1.0)
        perm = torch.as_tensor(perm_np, device=x.device)
        if use_cutmix and self.cutmix_mode == "paddle":
            lam0 = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
            t1, t2, y1, y2 = paddle_cutmix_box(t, h, lam0, rng)
            x = x.clone()
            x[:, :, t1:t2, y1:y2, :] = x[perm][:, :, t1:t2, y1:y2, :]  # frames x rows, every column
            lam = 1.0 - (t2 - t1) * (y2 - y1) / float(h * w)  # upstream's area: not what was pasted
            info = MixInfo("cutmix", lam, tuple(perm_np.tolist()), (t1, t2, y1, y2))
        elif use_cutmix:
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
