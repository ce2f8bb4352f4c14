"""Weight import: every published format round-trips, shapes are inferred, bad files get named errors."""

from __future__ import annotations

import builtins
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.utils_model import FIXTURE_DIR, tiny_model
from training.convert import import_checkpoint, main
from training.modeling.architecture import infer_model_config
from training.modeling.checkpoint import load_checkpoint
from training.modeling.inflate import inflate_image_weights
from training.modeling.model import ATTENTION_TYPES, TimeSformer
from training.modeling.readers import ConvertError, read_label_file

T, IMG, K = 4, 32, 5


def _x(b: int = 2, t: int = T, img: int = IMG) -> torch.Tensor:
    return torch.randn(b, 3, t, img, img, generator=torch.Generator().manual_seed(7))


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# ---- writers of each published layout, independent of the readers under test -----------------------------


def write_official(sd: dict[str, torch.Tensor], path: Path, container: str = "model_state") -> Path:
    if container == "model_state":  # what the official training code saves
        obj = {"epoch": 3, "model_state": {f"model.{k}": v for k, v in sd.items()}, "cfg": "TRAIN: {}\n"}
    elif container == "state_dict":
        obj = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    else:
        obj = dict(sd)
    torch.save(obj, path)
    return path


def write_pdparams(sd: dict[str, torch.Tensor], path: Path, protocol: int = 4) -> Path:
    out: dict[str, object] = {}
    names: dict[str, str] = {}
    for k, v in sd.items():
        a = v.numpy().copy()
        if k.endswith(".weight") and a.ndim == 2:
            a = a.T.copy()  # Paddle Linear weights are (in, out)
        key = "head.fc." + k[len("head.") :] if k.startswith("head.") else "backbone." + k
        out[key] = a
        names[key] = f"param_{len(names)}"
    out["StructuredToParameterName@@"] = names
    path.write_bytes(pickle.dumps(out, protocol=protocol))
    return path


def to_mmaction(sd: dict[str, torch.Tensor], divided: bool) -> dict[str, torch.Tensor]:
    """Native -> mmaction2 keys, written out from mmaction2's module tree."""
    if divided:
        table = {
            "temporal_norm1.": "attentions.0.norm.",
            "temporal_attn.qkv.weight": "attentions.0.attn.in_proj_weight",
            "temporal_attn.qkv.bias": "attentions.0.attn.in_proj_bias",
            "temporal_attn.proj.": "attentions.0.attn.out_proj.",
            "temporal_fc.": "attentions.0.temporal_fc.",
            "norm1.": "attentions.1.norm.",
            "attn.qkv.weight": "attentions.1.attn.in_proj_weight",
            "attn.qkv.bias": "attentions.1.attn.in_proj_bias",
            "attn.proj.": "attentions.1.attn.out_proj.",
            "norm2.": "ffns.0.norm.",
        }
    else:
        table = {
            "norm1.": "norms.0.",
            "attn.qkv.weight": "attentions.0.attn.in_proj_weight",
            "attn.qkv.bias": "attentions.0.attn.in_proj_bias",
            "attn.proj.": "attentions.0.attn.out_proj.",
            "norm2.": "norms.1.",
        }
    table |= {"mlp.fc1.": "ffns.0.layers.0.0.", "mlp.fc2.": "ffns.0.layers.1."}
    out = {}
    for k, v in sd.items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            left = next(a for a in table if rest.startswith(a))
            out[f"backbone.transformer_layers.layers.{i}.{table[left]}{rest[len(left) :]}"] = v
        elif k.startswith("patch_embed.proj."):
            out["backbone.patch_embed.projection." + k.split(".")[-1]] = v
        elif k.startswith("head."):
            out["cls_head.fc_cls." + k.split(".")[-1]] = v
        else:
            out["backbone." + k] = v
    return out


# ---- the official fixture through the converter -----------------------------------------------------------


def test_official_fixture_converts_and_reproduces_logits(tmp_path: Path, capsys) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{i} action {i}\n" for i in range(K)))
    dst = tmp_path / "fixture.pt"
    rc = main(
        [str(FIXTURE_DIR / "checkpoint.pyth"), "-o", str(dst), "--num-heads", "3", "--labels", str(labels)]
    )
    assert rc == 0 and "wrote" in capsys.readouterr().out
    ckpt = load_checkpoint(dst)
    assert ckpt.model_config["attention_type"] == "divided_space_time" and ckpt.model_config["num_heads"] == 3
    assert ckpt.preprocess.num_frames == T and ckpt.preprocess.crop_size == IMG
    assert ckpt.preprocess.mean == (0.45, 0.45, 0.45) and ckpt.preprocess.std == (0.225, 0.225, 0.225)
    assert ckpt.label_names()[2] == "action 2" and ckpt.meta["source_format"] == "official"
    x = torch.from_numpy(np.load(FIXTURE_DIR / "input.npy"))
    got = _logits(ckpt.build_model(), x).numpy()
    np.testing.assert_allclose(got, np.load(FIXTURE_DIR / "logits.npy"), atol=1e-4, rtol=0)


# ---- round trips ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("container", ["model_state", "state_dict", "bare"])
def test_official_round_trip(tmp_path: Path, attention_type: str, container: str) -> None:
    model = tiny_model(K, T, IMG, attention_type=attention_type)
    src = write_official(model.state_dict(), tmp_path / "m.pyth", container)
    # space_only weights have exactly an image ViT's keys: only the official model_state container tells.
    fmt = "official" if container != "model_state" and attention_type == "space_only" else "auto"
    ckpt = import_checkpoint(
        src, fmt=fmt, num_heads=3, num_frames=T if attention_type == "space_only" else None
    )
    assert ckpt.meta["source_format"] == "official"
    assert ckpt.model_config == {**model.model_config, "fused_attn": True}
    torch.testing.assert_close(_logits(ckpt.build_model(), _x()), _logits(model, _x()), atol=1e-6, rtol=0)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("protocol", [2, 4])
def test_paddle_round_trip(tmp_path: Path, attention_type: str, protocol: int) -> None:
    model = tiny_model(
        K, T, IMG, attention_type=attention_type, qkv_bias=False
    )  # PP-TimeSformer: no qkv bias
    src = write_pdparams(model.state_dict(), tmp_path / "m.pdparams", protocol)
    ckpt = import_checkpoint(src, num_heads=3, num_frames=T)
    assert ckpt.meta["source_format"] == "paddle" and ckpt.model_config["qkv_bias"] is False
    assert ckpt.preprocess.mean == (0.0, 0.0, 0.0) and ckpt.preprocess.sampling == "paddle"
    torch.testing.assert_close(_logits(ckpt.build_model(), _x()), _logits(model, _x()), atol=1e-6, rtol=0)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_mmaction_round_trip(tmp_path: Path, attention_type: str) -> None:
    model = tiny_model(K, T, IMG, attention_type=attention_type)
    sd = to_mmaction(model.state_dict(), attention_type == "divided_space_time")
    sd["data_preprocessor.mean"] = torch.tensor([127.5] * 3)
    torch.save({"meta": {"epoch": 15}, "state_dict": sd}, tmp_path / "m.pth")
    ckpt = import_checkpoint(tmp_path / "m.pth", num_heads=3, num_frames=T, mean=[0.5] * 3, std=[0.5] * 3)
    assert ckpt.meta["source_format"] == "mmaction" and ckpt.preprocess.std == (0.5, 0.5, 0.5)
    assert ckpt.model_config["attention_type"] == attention_type
    torch.testing.assert_close(_logits(ckpt.build_model(), _x()), _logits(model, _x()), atol=1e-6, rtol=0)


def test_multihead_attention_packs_qkv_like_the_official_linear() -> None:
    """mmaction2 uses nn.MultiheadAttention; its in_proj_* / out_proj must equal our qkv / proj."""
    attn = tiny_model(K, T, IMG).blocks[0].attn
    mha = torch.nn.MultiheadAttention(48, 3, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(attn.qkv.weight)
        mha.in_proj_bias.copy_(attn.qkv.bias)
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
        x = torch.randn(2, 17, 48)
        torch.testing.assert_close(mha(x, x, x, need_weights=False)[0], attn(x), atol=1e-5, rtol=0)


def test_num_frames_resizes_time_embed_like_the_runtime_rule(tmp_path: Path) -> None:
    model = tiny_model(K, T, IMG)
    src = write_official(model.state_dict(), tmp_path / "m.pyth")
    ckpt = import_checkpoint(src, num_heads=3, num_frames=6)
    assert ckpt.model_config["num_frames"] == 6 and ckpt.preprocess.num_frames == 6
    x = _x(2, 6)
    torch.testing.assert_close(_logits(ckpt.build_model(), x), _logits(model, x), atol=1e-6, rtol=0)


def test_new_head_for_another_class_count(tmp_path: Path) -> None:
    model = tiny_model(K, T, IMG)
    src = write_official(model.state_dict(), tmp_path / "m.pyth")
    ckpt = import_checkpoint(src, num_heads=3, num_classes=9)
    assert ckpt.num_classes == 9 and ckpt.build_model()(_x()).shape == (2, 9)
    assert torch.equal(
        ckpt.state_dict["blocks.1.attn.qkv.weight"], model.state_dict()["blocks.1.attn.qkv.weight"]
    )


# ---- shape inference --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(img_size=24, patch_size=4, embed_dim=32, depth=3, num_heads=2, num_frames=3, num_classes=7),
        dict(img_size=16, patch_size=8, embed_dim=24, depth=1, num_heads=4, num_frames=5, num_classes=2,
             qkv_bias=False, mlp_ratio=2.0, attention_type="joint_space_time"),
        dict(img_size=40, patch_size=8, embed_dim=16, depth=2, num_heads=1, num_frames=2, num_classes=3,
             attention_type="space_only", in_chans=1),
    ],
)  # fmt: skip
def test_infer_model_config(kwargs: dict) -> None:
    model = TimeSformer(**kwargs)
    frames = kwargs["num_frames"] if kwargs.get("attention_type") == "space_only" else None
    cfg = infer_model_config(model.state_dict(), num_heads=kwargs["num_heads"], num_frames=frames)
    assert cfg == {k: v for k, v in model.model_config.items() if k in cfg}
    assert set(cfg) >= {
        "img_size",
        "patch_size",
        "embed_dim",
        "depth",
        "num_frames",
        "num_classes",
        "qkv_bias",
    }


def _sd() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tiny_model(K, T, IMG, perturb=0.0).state_dict().items()}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda sd: sd.update({"blocks.1.attn.qkv.weight": torch.zeros(100, 48)}),
            r"blocks\.1\.attn\.qkv\.weight",
        ),
        (lambda sd: sd.update({"pos_embed": torch.zeros(1, 16, 48)}), r"pos_embed: length 16"),
        (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("blocks.0.")], r"blocks\.0\.\*: missing"),
        (lambda sd: sd.update({"blocks.3.norm1.weight": torch.ones(48)}), r"blocks\.2\.\*: missing"),
        (
            lambda sd: sd.update({"blocks.1.mlp.fc1.weight": torch.zeros(96, 48)}),
            r"blocks\.1\.mlp\.fc1\.weight",
        ),
        (
            lambda sd: sd.pop("blocks.1.temporal_attn.qkv.bias"),
            r"blocks\.1\.temporal_attn\.qkv\.bias: missing",
        ),
        (lambda sd: sd.update({"cls_token": torch.zeros(1, 1, 45)}), r"patch_embed\.proj\.weight: shape"),
        (lambda sd: sd.update({"head.weight": torch.zeros(5, 40)}), r"head\.weight: shape"),
        (
            lambda sd: sd.update({"blocks.0.attn.extra.weight": torch.zeros(2)}),
            r"blocks\.0\.attn\.extra\.weight",
        ),
        (lambda sd: sd.pop("time_embed"), r"time_embed: missing"),
    ],
)
def test_inconsistent_tensors_are_named(edit, match: str) -> None:
    sd = _sd()
    edit(sd)
    with pytest.raises(ConvertError, match=match):
        infer_model_config(sd, num_heads=3)


def test_heads_must_divide_width() -> None:
    with pytest.raises(ConvertError, match="num-heads"):
        infer_model_config(_sd(), num_heads=5)


# ---- hostile and broken files -----------------------------------------------------------------------------


class _Reduce:
    def __init__(self, fn, args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess.call"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    payload = {
        "os.system": _Reduce(os.system, (f"touch {marker}",)),
        "builtins.eval": _Reduce(builtins.eval, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.call": _Reduce(subprocess.call, (["touch", str(marker)],)),
    }[kind]
    src = tmp_path / "evil.pdparams"
    src.write_bytes(
        pickle.dumps({"backbone.cls_token": np.zeros((1, 1, 48), "f4"), "x": payload}, protocol=2)
    )
    with pytest.raises(ConvertError, match=r"refused pickle global \S*(system|eval|call)"):
        import_checkpoint(src)
    assert not marker.exists()


def test_malicious_torch_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"model_state": {"x": _Reduce(os.system, (f"touch {marker}",))}}, tmp_path / "evil.pyth")
    with pytest.raises(ConvertError, match="refused by the safe loader"):
        import_checkpoint(tmp_path / "evil.pyth")
    assert not marker.exists()


def _broken_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    sd = tiny_model(K, T, IMG).state_dict()
    good_pt = write_official(sd, tmp_path / "good.pyth")
    good_pd = write_pdparams(sd, tmp_path / "good.pdparams")
    files = {
        "truncated torch": (good_pt.read_bytes()[: good_pt.stat().st_size // 2], "truncated or corrupt"),
        "truncated pdparams": (good_pd.read_bytes()[:5000], "truncated or corrupt"),
        "garbage": (bytes(range(256)) * 4, "not a checkpoint"),
        "empty": (b"", "empty file"),
        "json": (b'{"model_state": {}}', "not a checkpoint"),
        "pickled list": (pickle.dumps([1, 2, 3]), "top level is a list"),
        "no tensors": (pickle.dumps({"epoch": 3, "lr": 0.1}), "no tensors"),
    }
    out = {}
    for name, (data, match) in files.items():
        p = tmp_path / name.replace(" ", "_")
        p.write_bytes(data)
        out[name] = (p, match)
    torch.save({"optimizer": {"lr": torch.tensor(0.1)}, "foo": torch.zeros(3)}, tmp_path / "foreign.pt")
    out["foreign torch"] = (tmp_path / "foreign.pt", "cannot tell the checkpoint format")
    out["missing"] = (tmp_path / "nope.pyth", "no such file")
    return out


def test_broken_files_get_named_errors(tmp_path: Path, capsys) -> None:
    for name, (path, match) in _broken_files(tmp_path).items():
        with pytest.raises(ConvertError, match=match):
            import_checkpoint(path)
        rc = main([str(path), "-o", str(tmp_path / "out.pt")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error:") and len(err.splitlines()) == 1, (name, err)
    assert not (tmp_path / "out.pt").exists()


def test_wrong_explicit_format_is_named(tmp_path: Path) -> None:
    src = write_official(tiny_model(K, T, IMG).state_dict(), tmp_path / "m.pyth")
    with pytest.raises(ConvertError, match="unexpected key in a PaddleVideo"):
        import_checkpoint(src, fmt="paddle", num_heads=3)


# ---- labels -----------------------------------------------------------------------------------------------


def test_label_files(tmp_path: Path) -> None:
    p = tmp_path / "l.txt"
    p.write_text("1 ApplyEyeMakeup\n3 Archery\n2 ApplyLipstick\n")  # UCF-101 classInd.txt, 1-based
    assert read_label_file(p) == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]
    p.write_text("0 abseiling\n1 air drumming\n")  # PaddleVideo/Kinetics id name
    assert read_label_file(p) == ["abseiling", "air drumming"]
    p.write_text("cat\n\ndog\n3d printing\n")  # one name per line
    assert read_label_file(p) == ["cat", "dog", "3d printing"]
    p.write_text("cat\ncat\n")
    with pytest.raises(ConvertError, match="duplicate label"):
        read_label_file(p)
    src = write_official(tiny_model(K, T, IMG).state_dict(), tmp_path / "m.pyth")
    with pytest.raises(ConvertError, match="1 labels for 5 classes"):
        import_checkpoint(src, num_heads=3, labels=["only"])


# ---- ImageNet ViT inflation -------------------------------------------------------------------------------


def reference_vit(
    sd: dict[str, torch.Tensor], img: torch.Tensor, heads: int, eps: float = 1e-6
) -> torch.Tensor:
    """A plain ViT image classifier written from scratch (timm semantics): img (B, 3, H, W) -> logits."""
    p = sd["patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    x = x.flatten(2).transpose(1, 2)  # (B, N, C)
    b, _, c = x.shape
    x = torch.cat((sd["cls_token"].expand(b, -1, -1), x), 1) + sd["pos_embed"]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        g = lambda n, i=i: sd[f"blocks.{i}.{n}"]  # noqa: E731
        h = F.layer_norm(x, (c,), g("norm1.weight"), g("norm1.bias"), eps)
        q, k, v = (
            F.linear(h, g("attn.qkv.weight"), g("attn.qkv.bias"))
            .reshape(b, -1, 3, heads, c // heads)
            .unbind(2)
        )
        a = torch.einsum("bqhd,bkhd->bhqk", q, k) / (c // heads) ** 0.5
        h = torch.einsum("bhqk,bkhd->bqhd", a.softmax(-1), v).reshape(b, -1, c)
        x = x + F.linear(h, g("attn.proj.weight"), g("attn.proj.bias"))
        h = F.layer_norm(x, (c,), g("norm2.weight"), g("norm2.bias"), eps)
        h = F.gelu(F.linear(h, g("mlp.fc1.weight"), g("mlp.fc1.bias")))
        x = x + F.linear(h, g("mlp.fc2.weight"), g("mlp.fc2.bias"))
    x = F.layer_norm(x, (c,), sd["norm.weight"], sd["norm.bias"], eps)
    return F.linear(x[:, 0], sd["head.weight"], sd["head.bias"])


def _image_sd(img: int = IMG, classes: int = K) -> dict[str, torch.Tensor]:
    # A space_only model has exactly a timm ViT's keys; its weights serve as "ImageNet" weights.
    return dict(tiny_model(classes, 1, img, attention_type="space_only", seed=3).state_dict())


# Not joint_space_time: its one sequence holds T copies of every patch against one cls token, which shifts
# the attention weights away from the image model's even on a static video.
@pytest.mark.parametrize("attention_type", ["divided_space_time", "space_only"])
def test_inflated_image_weights_reproduce_the_image_model_on_a_static_video(attention_type: str) -> None:
    image_sd = _image_sd()
    frame = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(5))
    ref = reference_vit(image_sd, frame, heads=3)
    torch.manual_seed(0)
    video_model = TimeSformer(img_size=IMG, patch_size=8, num_classes=K, embed_dim=48, depth=2, num_heads=3,
                              num_frames=T, attention_type=attention_type)  # fmt: skip
    report = inflate_image_weights({"model": image_sd}, video_model)
    assert not report.fresh and not report.resized
    if attention_type == "divided_space_time":
        assert (
            "blocks.1.temporal_attn.qkv.weight" in report.inflated
            and "blocks.0.temporal_fc.weight" in report.zeroed
        )
        assert torch.equal(video_model.blocks[1].temporal_norm1.bias, image_sd["blocks.1.norm1.bias"])
    static = frame[:, :, None].expand(-1, -1, T, -1, -1)  # (B, 3, T, H, W), every frame equal
    torch.testing.assert_close(_logits(video_model, static), ref, atol=1e-5, rtol=0)


def test_inflation_resizes_pos_embed_and_replaces_the_head(tmp_path: Path) -> None:
    image_sd = _image_sd(img=24, classes=11)  # 3x3 grid, 11 "ImageNet" classes
    torch.save({"model": image_sd}, tmp_path / "vit.pth")
    ckpt = import_checkpoint(tmp_path / "vit.pth", fmt="vit-image", num_heads=3, num_frames=T, num_classes=K,
                              img_size=IMG)  # fmt: skip
    cfg = ckpt.model_config
    assert (cfg["img_size"], cfg["num_frames"], cfg["num_classes"], cfg["attention_type"]) == (
        IMG, T, K, "divided_space_time"
    )  # fmt: skip
    assert ckpt.state_dict["pos_embed"].shape == (1, 17, 48) and any(
        "fresh head" in n for n in ckpt.meta["notes"]
    )
    # Bilinear 3x3 -> 4x4 keeps the corners' neighbourhood: the cls position is untouched.
    torch.testing.assert_close(ckpt.state_dict["pos_embed"][:, 0], image_sd["pos_embed"][:, 0])
    assert ckpt.state_dict["time_embed"].abs().sum() == 0
    assert ckpt.build_model()(_x()).shape == (2, K)


def test_inflation_rejects_weights_that_do_not_fit() -> None:
    image_sd = _image_sd()
    wide = TimeSformer(
        img_size=IMG, patch_size=8, num_classes=K, embed_dim=64, depth=2, num_heads=4, num_frames=T
    )
    with pytest.raises(ConvertError, match="cls_token: image width 48"):
        inflate_image_weights(image_sd, wide)
    deep = TimeSformer(
        img_size=IMG, patch_size=8, num_classes=K, embed_dim=48, depth=3, num_heads=3, num_frames=T
    )
    with pytest.raises(ConvertError, match="blocks"):
        inflate_image_weights(image_sd, deep)
