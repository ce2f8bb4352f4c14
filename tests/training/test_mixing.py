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


def _upstream_cutmix(
    imgs: np.ndarray, alpha: float, rs: np.random.RandomState
) -> tuple[np.ndarray, float, list]:
    """PaddleVideo's ``Cutmix.__call__`` transcribed statement by statement (``loader/pipelines/mix.py``),
    with ``np.random`` replaced by ``rs``; ``imgs`` (N, C, T, H, W) as its PP-TimeSformer pipeline makes."""
    bs = len(imgs)
    idx = rs.permutation(bs)
    lam = rs.beta(alpha, alpha)
    w, h = imgs.shape[2], imgs.shape[3]  # rand_bbox(size, lam): w = size[2], h = size[3]
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(w * cut_rat), int(h * cut_rat)
    cx, cy = rs.randint(w), rs.randint(h)
    bbx1, bby1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cy - cut_h // 2, 0, h)
    bbx2, bby2 = np.clip(cx + cut_w // 2, 0, w), np.clip(cy + cut_h // 2, 0, h)
    imgs = imgs.copy()
    imgs[:, :, bbx1:bbx2, bby1:bby2] = imgs[idx, :, bbx1:bbx2, bby1:bby2]
    lam = 1 - (float(bbx2 - bbx1) * (bby2 - bby1) / (imgs.shape[-2] * imgs.shape[-1]))
    return imgs, lam, idx.tolist()


class _SameDraws:
    """A numpy Generator look-alike that replays a RandomState's draws in VideoMix's order (random,
    random, permutation, beta, integers, integers), so the two implementations see the same numbers."""

    def __init__(self, rs: np.random.RandomState) -> None:
        self.rs = rs

    def random(self) -> float:
        return 0.0  # mix, and choose cutmix

    def permutation(self, n: int) -> np.ndarray:
        return self.rs.permutation(n)

    def beta(self, a: float, b: float) -> float:
        return self.rs.beta(a, b)

    def integers(self, n: int) -> int:
        return self.rs.randint(n)


@pytest.mark.parametrize("seed", range(10))
def test_paddle_cutmix_mode_is_upstream_bit_for_bit(seed: int) -> None:
    x = torch.randn(B, C, T, H, W, generator=torch.Generator().manual_seed(seed))
    targets = smooth_one_hot(torch.arange(B) % K, K, 0.1)
    want, want_lam, want_idx = _upstream_cutmix(x.numpy(), 1.0, np.random.RandomState(seed))
    mix = VideoMix(prob=1.0, cutmix_prob=1.0, cutmix_alpha=1.0, cutmix_mode="paddle")
    out, mixed, info = mix(x, targets, _SameDraws(np.random.RandomState(seed)))  # type: ignore[arg-type]
    assert list(info.perm) == want_idx and info.lam == pytest.approx(want_lam, abs=1e-12)
    assert torch.equal(out, torch.from_numpy(want))
    perm = torch.tensor(info.perm)
    assert torch.allclose(mixed, info.lam * targets + (1 - info.lam) * targets[perm])


def test_paddle_cutmix_cuts_time_and_rows_and_underweights_the_partner() -> None:
    """At 8 x 224 x 224 the published cutmix replaces ~27 % of a clip but gives the partner ~1 %."""
    replaced, partner = [], []
    mix = VideoMix(prob=1.0, cutmix_prob=1.0, cutmix_alpha=1.0, cutmix_mode="paddle")
    x = (torch.arange(2, dtype=torch.float32) + 1).view(2, 1, 1, 1, 1).expand(2, 1, 8, 224, 224).clone()
    targets = smooth_one_hot(torch.arange(2), 2)
    for seed in range(300):
        out, _, info = mix(x, targets, np.random.default_rng(seed))
        t1, t2, y1, y2 = info.box
        changed = out[0] != x[0]  # (1, T, H, W)
        if info.perm[0] != 0:
            # whole rows of whole frames: every column of a cut row changes, nothing else
            assert int(changed.sum()) == (t2 - t1) * (y2 - y1) * 224
            assert bool(changed[0, t1:t2, y1:y2, :].all())
            replaced.append(float(changed.float().mean()))
            partner.append(1.0 - info.lam)
    assert 0.22 < np.mean(replaced) < 0.32
    assert 0.005 < np.mean(partner) < 0.02
    assert np.mean(replaced) / np.mean(partner) == pytest.approx(224 / 8, rel=1e-6)


def test_spatial_is_the_default_and_bad_mode_is_named() -> None:
    assert VideoMix().cutmix_mode == "spatial"
    with pytest.raises(ValueError, match="cutmix_mode"):
        VideoMix(cutmix_mode="temporal")
