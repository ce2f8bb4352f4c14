"""The TimeSformer model: official maths, attention paths, runtime resizing, gradients, init, factories."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.utils_model import FIXTURE_DIR, tiny_model
from training.modeling import model as M
from training.modeling.model import ATTENTION_TYPES, TimeSformer

T, IMG, K = 4, 32, 5


def _x(b: int = 2, t: int = T, img: int = IMG, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, t, img, img, generator=torch.Generator().manual_seed(seed))


def test_official_fixture_logits() -> None:
    """The official code's checkpoint, loaded by key name alone, reproduces its logits."""
    cfg = json.loads((FIXTURE_DIR / "config.json").read_text())["constructor_args"]
    sd = torch.load(FIXTURE_DIR / "checkpoint.pyth", weights_only=True)["model_state"]
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    keep = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "num_heads")
    model = TimeSformer(**{k: cfg[k] for k in keep}, num_frames=cfg["num_frames"], qkv_bias=cfg["qkv_bias"])
    assert set(model.state_dict()) == set(sd)  # exactly the official key names
    model.load_state_dict(sd, strict=True)
    x = torch.from_numpy(np.load(FIXTURE_DIR / "input.npy"))
    ref = np.load(FIXTURE_DIR / "logits.npy")
    for fused in (True, False):
        model.set_fused_attn(fused)
        with torch.no_grad():
            got = model.eval()(x).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_shapes_and_fused_equals_plain(attention_type: str) -> None:
    model = tiny_model(K, T, IMG, attention_type=attention_type)
    x = _x()
    with torch.no_grad():
        fused = model(x)
        model.set_fused_attn(False)
        plain = model(x)
    assert fused.shape == (2, K) and torch.isfinite(fused).all()
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=0)
    assert model.model_config["fused_attn"] is False


def test_batch_rows_independent_and_frame_order_matters() -> None:
    model = tiny_model(K, T, IMG)
    x = _x(3)
    with torch.no_grad():
        full = model(x)
        one = model(x[1:2])
        shuffled = model(x[:, :, [2, 0, 3, 1]])
    torch.testing.assert_close(full[1:2], one, atol=1e-5, rtol=0)
    assert (full - shuffled).abs().max() > 1e-3  # time_embed and temporal attention see the order


def test_model_config_rebuilds_the_same_model() -> None:
    model = tiny_model(
        K, T, IMG, attention_type="joint_space_time", qkv_bias=False, mlp_ratio=2.0, ln_eps=1e-5
    )
    clone = TimeSformer(**model.model_config)
    clone.load_state_dict(model.state_dict(), strict=True)
    assert clone.model_config == model.model_config
    json.dumps(model.model_config)  # plain data, storable in a checkpoint
    with torch.no_grad():
        torch.testing.assert_close(clone.eval()(_x()), model(_x()))


def _nearest_index(n_out: int, n_in: int) -> list[int]:
    # PyTorch's 'nearest' (legacy) rule, written out independently: src = floor(dst * in / out).
    return [min(int(np.floor(i * n_in / n_out)), n_in - 1) for i in range(n_out)]


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize(("t_new", "img_new"), [(6, IMG), (2, IMG), (T, 48), (3, 16)])
def test_runtime_resize_matches_pre_resized_model(attention_type: str, t_new: int, img_new: int) -> None:
    """A different frame count / image size at run time equals a model built at that size whose embeddings
    were resized beforehand with the official nearest rule (computed here by explicit indexing)."""
    model = tiny_model(K, T, IMG, attention_type=attention_type)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    grid0, grid1 = IMG // 8, img_new // 8
    rows = _nearest_index(grid1, grid0)
    patch = sd["pos_embed"][0, 1:].reshape(grid0, grid0, -1)[rows][:, rows].reshape(grid1 * grid1, -1)
    sd["pos_embed"] = torch.cat((sd["pos_embed"][:, :1], patch[None]), dim=1)
    if attention_type != "space_only":
        sd["time_embed"] = sd["time_embed"][:, _nearest_index(t_new, T)]
    ref_model = TimeSformer(**{**model.model_config, "num_frames": t_new, "img_size": img_new})
    ref_model.load_state_dict(sd, strict=True)
    x = _x(2, t_new, img_new, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref_model.eval()(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_gradients_reach_every_parameter(attention_type: str) -> None:
    model = tiny_model(K, T, IMG, attention_type=attention_type, drop_path_rate=0.1).train()
    torch.manual_seed(0)
    loss = torch.nn.functional.cross_entropy(model(_x()), torch.tensor([1, 3]))
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


def test_drop_path_is_identity_in_eval_and_random_in_train() -> None:
    model = tiny_model(K, T, IMG, drop_path_rate=0.5, drop_rate=0.2, attn_drop_rate=0.2)
    ref = TimeSformer(
        **{**model.model_config, "drop_path_rate": 0.0, "drop_rate": 0.0, "attn_drop_rate": 0.0}
    )
    ref.load_state_dict(model.state_dict())
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), ref.eval()(x))
        model.train()
        assert (model(x) - model(x)).abs().max() > 1e-4


def test_official_init() -> None:
    torch.manual_seed(0)
    model = TimeSformer(
        img_size=64, patch_size=8, num_classes=10, embed_dim=96, depth=3, num_heads=4, num_frames=4
    )
    # trunc_normal_(std=.02) truncates at +-2 (absolute), as timm's and the official code's.
    # The official loop also counts the ModuleList itself, so every block's temporal_fc starts at zero.
    for blk in model.blocks:
        assert blk.temporal_fc.weight.abs().sum() == 0 and blk.temporal_fc.bias.abs().sum() == 0
        assert torch.equal(blk.norm1.weight, torch.ones(96)) and blk.attn.qkv.bias.abs().sum() == 0
        assert 0.015 < float(blk.mlp.fc1.weight.detach().std()) < 0.025
    assert model.time_embed.abs().sum() == 0
    assert 0.015 < float(model.pos_embed.detach().std()) < 0.025
    assert model.no_weight_decay() == {"pos_embed", "cls_token", "time_embed"}


@pytest.mark.parametrize(
    ("factory", "frames", "img", "qkv_bias", "params_m"),
    [
        (M.timesformer_base_8x224, 8, 224, True, 121.57),
        (M.pptimesformer_base_8x224, 8, 224, False, 121.51),
        (M.pptimesformer_base_16x224, 16, 224, False, 121.52),
        (M.timesformer_hr_16x448, 16, 448, True, 122.02),
        (M.timesformer_l_96x224, 96, 224, True, 121.64),
    ],
)
def test_factories(factory, frames: int, img: int, qkv_bias: bool, params_m: float) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = factory(num_classes=400)
    cfg = model.model_config
    assert (cfg["num_frames"], cfg["img_size"], cfg["qkv_bias"]) == (frames, img, qkv_bias)
    assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["patch_size"]) == (768, 12, 12, 16)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, abs=0.01)
    with torch.device("meta"):
        assert factory(num_classes=7, attention_type="space_only").model_config["num_classes"] == 7


def test_tiny_factory_and_bad_arguments() -> None:
    model = M.timesformer_tiny(num_classes=3, num_frames=2, img_size=16)
    assert model.model_config["embed_dim"] == 48 and model(_x(1, 2, 16)).shape == (1, 3)
    with pytest.raises(ValueError, match="attention_type"):
        TimeSformer(attention_type="divided")
    with pytest.raises(ValueError, match="divisible"):
        M.timesformer_tiny(num_heads=5)
    with pytest.raises(ValueError, match="img_size"):
        M.timesformer_tiny(img_size=4)
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.zeros(1, 3, 16, 16))
