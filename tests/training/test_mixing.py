"""VideoMix: one spatial cutmix box shared by all frames, lambda from the clipped box, soft targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data.mixing import VideoMix, cutmix_box, smooth_one_hot

B, C, T, H, W, K = 6, 3, 4, 16, 20, 5


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    # Every clip is constant and distinct (value = its index + 1), so each pixel tells whose it is.
    x = (torch.arange(B, dtype=torch.float32) + 1).view(B, 1, 1, 1, 1).expand(B, C, T, H, W).clone()
    return x, smooth_one_hot(torch.arange(B) % K, K, 0.1)


def test_smooth_one_hot() -> None:
    t = smooth_one_hot(torch.tensor([0, 3]), 4, 0.2)
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert t[0].tolist() == pytest.approx([0.85, 0.05, 0.05, 0.05])
    assert torch.equal(smooth_one_hot(torch.tensor([2]), 3), torch.tensor([[0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="labels must lie"):
        smooth_one_hot(torch.tensor([3]), 3)


@pytest.mark.parametrize("seed", range(8))
def test_cutmix_one_box_for_all_frames_and_exact_lambda(seed: int) -> None:
    x, targets = _batch()
    mix = VideoMix(prob=1.0, cutmix_prob=1.0, cutmix_alpha=1.0)
    out, mixed, info = mix(x, targets, np.random.default_rng(seed))
    assert info.mode == "cutmix" and info.box is not None
    perm = torch.tensor(info.perm)
    for b in range(B):
        from_partner = out[b] == x[perm[b]]  # (C, T, H, W)
        from_self = out[b] == x[b]
        assert bool((from_partner | from_self).all())
        if perm[b] == b:
            continue
        mask = from_partner[0]  # (T, H, W)
        # identical spatial region in every frame: the box does not cut across time
        assert all(torch.equal(mask[t], mask[0]) for t in range(T))
        area = float(mask[0].float().mean())
        assert info.lam == pytest.approx(1.0 - area)  # lambda from the pasted area, clipping included
    assert torch.allclose(mixed, info.lam * targets + (1 - info.lam) * targets[perm])
    assert torch.allclose(mixed.sum(1), torch.ones(B))


def test_cutmix_box_is_clipped_at_the_border() -> None:
    # A large box centred near a corner: the clipped area is far from 1 - lam, which is what PaddleVideo
    # would report; we recompute lambda from the clipped box instead.
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(200):
        y1, y2, x1, x2 = cutmix_box(H, W, 0.2, rng)
        assert 0 <= y1 <= y2 <= H and 0 <= x1 <= x2 <= W
        hits.append((y2 - y1) * (x2 - x1) / (H * W))
    assert min(hits) < 0.8 - 0.2  # some boxes lose a lot of area to clipping


def test_mixup_is_a_convex_combination() -> None:
    x, targets = _batch()
    out, mixed, info = VideoMix(prob=1.0, cutmix_prob=0.0, mixup_alpha=0.2)(
        x, targets, np.random.default_rng(1)
    )
    perm = torch.tensor(info.perm)
    assert info.mode == "mixup" and 0.0 <= info.lam <= 1.0
    assert torch.allclose(out, info.lam * x + (1 - info.lam) * x[perm])
    assert torch.allclose(mixed, info.lam * targets + (1 - info.lam) * targets[perm])


def test_choice_per_batch_and_determinism() -> None:
    x, targets = _batch()
    mix = VideoMix(prob=1.0, cutmix_prob=0.5)
    modes = [mix(x, targets, np.random.default_rng(s))[2].mode for s in range(200)]
    assert 60 < modes.count("cutmix") < 140 and modes.count("none") == 0
    a = mix(x, targets, np.random.default_rng(7))
    b = mix(x, targets, np.random.default_rng(7))
    assert torch.equal(a[0], b[0]) and a[2] == b[2]
    off = VideoMix(prob=0.0)
    out, t, info = off(x, targets, np.random.default_rng(0))
    assert info.mode == "none" and out is x and t is targets


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        VideoMix(prob=2.0)
    with pytest.raises(ValueError, match="\\(B, C, T, H, W\\)"):
        VideoMix()(torch.zeros(2, 3, 8, 8), torch.zeros(2, 2), np.random.default_rng(0))
