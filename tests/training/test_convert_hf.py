"""Hugging Face TimeSformer folders, written by transformers' own ``save_pretrained``, convert and give
transformers' logits; what the folder's JSON says reaches the native checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from training.convert import main  # noqa: E402
from training.modeling.checkpoint import load_checkpoint  # noqa: E402
from training.modeling.formats import detect_format  # noqa: E402
from training.modeling.readers import ConvertError  # noqa: E402
from training.modeling.weights import import_checkpoint, load_any_checkpoint, load_pretrained  # noqa: E402

T, IMG, K = 4, 32, 5
LABELS = ["archery", "bowling", "cooking", "dancing", "eating"]


def hf_model(
    attention_type: str, *, qkv_bias: bool = True, eps: float = 1e-6, seed: int = 0
) -> torch.nn.Module:
    """A tiny ``TimesformerForVideoClassification`` with every weight random (not its zero/one init, which
    would hide swapped LayerNorms or biases)."""
    cfg = transformers.TimesformerConfig(
        image_size=IMG,
        patch_size=8,
        num_frames=T,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        attention_type=attention_type,
        qkv_bias=qkv_bias,
        layer_norm_eps=eps,
        num_labels=K,
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    model = transformers.TimesformerForVideoClassification(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "layernorm" in name and name.endswith("weight") else 0.0
            p.copy_(base + 0.3 * torch.randn(p.shape, generator=g))
    return model


def _clip(b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, T, IMG, IMG, generator=torch.Generator().manual_seed(11))  # (B, C, T, H, W)


def hf_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=x.permute(0, 2, 1, 3, 4)).logits  # transformers takes (B, T, C, H, W)


def _processor(folder: Path, **kw: object) -> None:
    proc = {
        "image_processor_type": "VideoMAEImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 40},
        "do_center_crop": True,
        "crop_size": {"height": IMG, "width": IMG},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        **kw,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(proc))


@pytest.mark.parametrize(
    ("attention_type", "qkv_bias", "eps"),
    [
        ("divided_space_time", True, 1e-6),
        ("divided_space_time", False, 1e-5),
        ("joint_space_time", True, 1e-6),
    ],
)
def test_save_pretrained_folder_converts_and_reproduces_logits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], attention_type: str, qkv_bias: bool, eps: float
) -> None:
    model = hf_model(attention_type, qkv_bias=qkv_bias, eps=eps)
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    _processor(folder)
    assert (folder / "model.safetensors").is_file()

    assert main([str(folder), "-o", str(tmp_path / "x.pt")]) == 0
    out = capsys.readouterr().out
    assert f"hf -> {attention_type}" in out
    ckpt = load_checkpoint(tmp_path / "x.pt")
    c = ckpt.model_config
    got = (c["num_heads"], c["ln_eps"], c["num_frames"], c["img_size"], c["qkv_bias"])
    assert got == (3, eps, T, IMG, qkv_bias)
    assert ckpt.labels == LABELS
    assert ckpt.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    assert ckpt.preprocess.std == pytest.approx((0.229, 0.224, 0.225))
    assert (ckpt.preprocess.short_side, ckpt.preprocess.crop_size) == (40, IMG)
    assert ckpt.meta["source_format"] == "hf"

    x = _clip()
    with torch.no_grad():
        ours = ckpt.build_model()(x)
    torch.testing.assert_close(ours, hf_logits(model, x), atol=1e-4, rtol=0)


def test_weights_file_sharded_and_pytorch_bin_read_the_same(tmp_path: Path) -> None:
    model = hf_model("divided_space_time", seed=1)
    x = _clip()
    want = hf_logits(model, x)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="50KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    binary = tmp_path / "bin"
    binary.mkdir()
    torch.save(model.state_dict(), binary / "pytorch_model.bin")  # what older transformers wrote
    shutil.copy(sharded / "config.json", binary / "config.json")
    single = tmp_path / "single"
    model.save_pretrained(single)
    for src in (sharded, binary, single / "model.safetensors", binary / "pytorch_model.bin"):
        ckpt = import_checkpoint(src)  # format detected from the folder or the keys
        assert ckpt.labels == LABELS, src
        with torch.no_grad():
            torch.testing.assert_close(ckpt.build_model()(x), want, atol=1e-4, rtol=0)
    # No config.json: the tensors still tell everything but heads (flag) and labels.
    (binary / "config.json").unlink()
    ckpt = import_checkpoint(binary, num_heads=3)
    assert ckpt.labels is None
    with torch.no_grad():
        torch.testing.assert_close(ckpt.build_model()(x), want, atol=1e-4, rtol=0)


def test_hf_folder_as_pretrained_teacher_and_any_checkpoint(tmp_path: Path) -> None:
    model = hf_model("divided_space_time", seed=2)
    model.save_pretrained(tmp_path / "hf")
    ckpt = load_any_checkpoint(tmp_path / "hf")
    fresh = ckpt.build_model()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_pretrained(fresh, tmp_path / "hf")
    x = _clip()
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), hf_logits(model, x), atol=1e-4, rtol=0)


def test_space_only_is_refused_with_the_reason(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    model = hf_model("space_only")
    model.save_pretrained(tmp_path / "hf")
    with torch.no_grad():  # what transformers returns: one row per frame, not per video
        assert hf_logits(model, _clip()).shape == (2 * T, K)
    assert main([str(tmp_path / "hf"), "-o", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "space_only" in err and "per frame" in err
    assert not (tmp_path / "x.pt").exists()


def test_inconsistent_folder_and_flags_are_named(tmp_path: Path) -> None:
    model = hf_model("divided_space_time")
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(ConvertError, match="num_heads 4 given, but the checkpoint's config says 3"):
        import_checkpoint(tmp_path / "hf", num_heads=4)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "num_frames": 16}))
    with pytest.raises(ConvertError, match="num_frames = 16, the weights 4"):
        import_checkpoint(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "hidden_act": "gelu_new"}))
    with pytest.raises(ConvertError, match="hidden_act 'gelu_new'"):
        import_checkpoint(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(ConvertError, match="safetensors"):
        import_checkpoint(tmp_path / "hf")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConvertError, match="needs one of model.safetensors"):
        import_checkpoint(empty)


def test_processor_without_rescale_maps_mean_std_to_the_unit_scale(tmp_path: Path) -> None:
    """mmaction-style 0..255 statistics with do_rescale false become 0.5 / 0.5 on the 0..1 scale."""
    hf_model("divided_space_time").save_pretrained(tmp_path / "hf")
    _processor(tmp_path / "hf", do_rescale=False, image_mean=[127.5] * 3, image_std=[127.5] * 3)
    spec = import_checkpoint(tmp_path / "hf").preprocess
    assert spec.mean == pytest.approx((0.5,) * 3) and spec.std == pytest.approx((0.5,) * 3)


def test_keys_are_detected_as_hf() -> None:
    sd = hf_model("divided_space_time").state_dict()
    assert detect_format(sd) == "hf"
