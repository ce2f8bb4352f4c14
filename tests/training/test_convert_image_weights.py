"""ImageNet ViT image weights in Paddle's layout (``.pdparams``: PaddleClas's ViT_base_patch16_224, the MIIL
21k file PaddleVideo loads) inflate exactly like their timm twin; timm safetensors read without pickle."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from tests.training.test_convert import IMG, K, T, _x, reference_vit
from tests.utils_model import tiny_model
from training.modeling.formats import detect_format, unwrap_state_dict
from training.modeling.readers import read_checkpoint_file
from training.modeling.weights import build_model, import_checkpoint


def image_sd(qkv_bias: bool) -> dict[str, torch.Tensor]:
    """timm-named ViT image weights (a space_only model has exactly a ViT's keys)."""
    sd = tiny_model(K, 1, IMG, attention_type="space_only", seed=4, qkv_bias=qkv_bias).state_dict()
    return {k: v.clone() for k, v in sd.items()}


def write_paddle_image(sd: dict[str, torch.Tensor], path: Path) -> Path:
    """What ``paddle.save(model.state_dict())`` writes for a Paddle ViT: timm-style names, numpy arrays,
    every Linear weight (in, out), plus Paddle's bookkeeping key. Written here without Paddle."""
    out: dict[str, object] = {}
    for k, v in sd.items():
        a = v.numpy().copy()
        out[k] = a.T.copy() if k.endswith(".weight") and a.ndim == 2 else a
    out["StructuredToParameterName@@"] = {k: f"linear_{i}.w_0" for i, k in enumerate(sd)}
    path.write_bytes(pickle.dumps(out, protocol=4))
    return path


@pytest.mark.parametrize("qkv_bias", [True, False])  # PaddleClas's ViT has a qkv bias, the MIIL 21k one none
def test_paddle_image_pdparams_inflates_like_its_timm_twin(tmp_path: Path, qkv_bias: bool) -> None:
    sd = image_sd(qkv_bias)
    pd = write_paddle_image(sd, tmp_path / "ViT_base_patch16_224_pretrained.pdparams")
    torch.save(sd, tmp_path / "vit_base_patch16_224_in21k_miil.pth")
    raw, container = unwrap_state_dict(read_checkpoint_file(pd), str(pd))
    assert detect_format(raw, container) == "vit-image"
    kw = dict(num_heads=3, num_frames=T)
    from_paddle = import_checkpoint(pd, **kw)
    from_timm = import_checkpoint(tmp_path / "vit_base_patch16_224_in21k_miil.pth", **kw)
    assert from_paddle.model_config == from_timm.model_config
    assert from_paddle.model_config["qkv_bias"] is qkv_bias
    for k, v in from_timm.state_dict.items():
        assert torch.equal(from_paddle.state_dict[k], v), k
    # And it is the image model: a static video gives the image classifier's logits.
    frame = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(2))
    static = frame[:, :, None].expand(-1, -1, T, -1, -1)
    with torch.no_grad():
        got = from_paddle.build_model()(static)
    c = sd["cls_token"].shape[-1]
    ref_sd = {**{f"blocks.{i}.attn.qkv.bias": torch.zeros(3 * c) for i in range(2)}, **sd}  # no bias = 0
    torch.testing.assert_close(got, reference_vit(ref_sd, frame, heads=3), atol=1e-5, rtol=0)


def test_paddle_image_pdparams_as_model_pretrained(tmp_path: Path) -> None:
    """The training config's ``model.pretrained`` takes the .pdparams the PaddleVideo recipe names."""
    sd = image_sd(qkv_bias=False)
    pd = write_paddle_image(sd, tmp_path / "ViT_base_patch16_224_miil_21k.pdparams")
    torch.save(sd, tmp_path / "twin.pth")
    arch = dict(arch="timesformer_tiny", img_size=IMG, num_frames=T, qkv_bias=False)
    torch.manual_seed(0)
    a = build_model({**arch, "pretrained": str(pd)}, num_classes=7)  # head of another size: fresh
    torch.manual_seed(0)
    b = build_model({**arch, "pretrained": str(tmp_path / "twin.pth")}, num_classes=7)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), atol=0, rtol=0)
    assert torch.equal(a.blocks[0].temporal_attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])


def test_timm_safetensors_image_weights_read_without_pickle(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = image_sd(qkv_bias=True)
    save_file(sd, tmp_path / "model.safetensors")  # how timm ships weights on the Hub
    ckpt = import_checkpoint(tmp_path / "model.safetensors", num_heads=3, num_frames=T)
    assert ckpt.meta["source_format"] == "vit-image"
    assert torch.equal(ckpt.state_dict["blocks.1.temporal_attn.qkv.weight"], sd["blocks.1.attn.qkv.weight"])


def test_video_pdparams_are_still_paddle() -> None:
    sd = {("backbone." + k): v.numpy() for k, v in tiny_model(K, T, IMG).state_dict().items()}
    assert detect_format(sd) == "paddle"
