"""The from-scratch codes of frame and patch position: with ``init_codes_orthogonal`` every frame code is
orthogonal to every position code while each keeps its own geometry (the demo recipe's fix for frame order
aliasing with row/column position: docs/training.md, 'The CPU demo')."""

from __future__ import annotations

import pytest
import torch

from training.modeling.weights import build_model, orthogonal_codes

TINY = dict(
    arch="timesformer_tiny",
    num_frames=8,
    img_size=32,
    patch_size=4,
    embed_dim=64,
    depth=1,
    num_heads=4,
    time_embed_init="sincos",
    time_embed_init_scale=3.0,
    pos_embed_init_scale=1.0,
)


def _codes(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    return model.time_embed[0].detach(), model.pos_embed[0, 1:].detach()


def test_shared_sinusoids_alias_time_with_position() -> None:
    """Why the option exists: the plain sinusoids put frame and row/column codes in the same channels."""
    torch.manual_seed(0)
    t, p = _codes(build_model(TINY, 6))
    cos = torch.nn.functional.normalize(t, dim=1) @ torch.nn.functional.normalize(p, dim=1).T
    assert cos.abs().max() > 0.5


def test_orthogonal_codes_keep_each_geometry_and_remove_the_overlap() -> None:
    torch.manual_seed(0)
    plain = build_model(TINY, 6)
    t0, p0 = _codes(plain)
    torch.manual_seed(0)
    model = build_model({**TINY, "init_codes_orthogonal": True}, 6)
    t1, p1 = _codes(model)
    assert (t1 @ p1.T).abs().max() < 1e-4  # every frame code orthogonal to every patch code
    torch.testing.assert_close(t1 @ t1.T, t0 @ t0.T, atol=1e-3, rtol=1e-5)  # distances between frames kept
    torch.testing.assert_close(p1 @ p1.T, p0 @ p0.T, atol=1e-3, rtol=1e-5)
    # spread over the channels, not packed into a few of them
    assert (t1.abs().amax(0) > 1e-3).sum() > 48
    # the cls slot and every weight are the plain init's (same seed): only the two codes moved
    torch.testing.assert_close(model.pos_embed[0, 0], plain.pos_embed[0, 0])
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, plain.blocks[0].attn.qkv.weight)


def test_codes_that_cannot_fit_orthogonally_are_refused() -> None:
    with pytest.raises(ValueError, match="do not fit orthogonally in 4 channels"):
        orthogonal_codes([torch.randn(3, 4), torch.randn(3, 4)])
