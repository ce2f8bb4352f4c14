"""One way to load any weights.

:func:`import_checkpoint` turns a published checkpoint (official ``.pyth``, PaddleVideo ``.pdparams``,
mmaction2, Hugging Face folders, ImageNet ViT image weights from timm or Paddle) into a native
:class:`Checkpoint`; :func:`load_any_checkpoint` takes a native checkpoint or any of those;
:func:`load_pretrained` initialises a model from any of them (image weights inflated); :func:`build_model`
makes a configured model (factory + pretrained + from-scratch inits). The format readers themselves live in
:mod:`training.modeling.formats` and :mod:`training.modeling.hf`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.modeling.architecture import (
    build_and_load,
    conv_filter,
    infer_model_config,
    resize_time_embed_for,
)
from training.modeling.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from training.modeling.formats import (
    FORMATS,
    detect_format,
    mmaction_to_native,
    official_to_native,
    paddle_to_native,
    unwrap_state_dict,
)
from training.modeling.hf import hf_model_options, hf_preprocess_options, hf_to_native, read_hf
from training.modeling.inflate import image_model_config, inflate_image_weights
from training.modeling.model import TimeSformer
from training.modeling.readers import ConvertError, read_checkpoint_file, read_label_file
from training.preprocessing.spec import (
    PADDLE_MEAN,
    PADDLE_STD,
    TIMESFORMER_MEAN,
    TIMESFORMER_STD,
    PreprocessSpec,
)

_TO_NATIVE = {
    "official": official_to_native,
    "paddle": paddle_to_native,
    "mmaction": mmaction_to_native,
    "hf": lambda sd: official_to_native(hf_to_native(sd)),
}
# config.json facts that the tensors also tell: a disagreement means the folder is inconsistent.
_HF_CHECKED = ("embed_dim", "depth", "patch_size", "img_size", "num_frames", "qkv_bias", "attention_type")


def _sha256(*paths: Path) -> str:
    """One digest over the bytes of ``paths`` in order (several for sharded weights)."""
    h = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _pick(flag: Any, from_file: Any, default: Any, what: str, source: str) -> Any:
    """A setting given on the command line and/or in the checkpoint's own config: they must agree."""
    if flag is not None and from_file is not None and flag != from_file:
        raise ConvertError(f"{source}: {what} {flag!r} given, but the checkpoint's config says {from_file!r}")
    return flag if flag is not None else from_file if from_file is not None else default


def import_checkpoint(
    src: str | Path,
    *,
    fmt: str = "auto",
    num_heads: int | None = None,
    num_frames: int | None = None,
    ln_eps: float | None = None,
    labels: str | Path | Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    num_classes: int | None = None,
    attention_type: str = "divided_space_time",
    img_size: int | None = None,
    seed: int = 0,
) -> Checkpoint:
    """Read ``src`` (any supported format) and return the equivalent native :class:`Checkpoint`.

    ``num_frames`` sets the frame count of weights that carry none (space_only, image weights) and otherwise
    resizes ``time_embed`` with the official nearest rule. ``num_classes`` different from the weights' (or
    weights without a head) gives a fresh, seeded head. ``attention_type`` and ``img_size`` apply to
    ``vit-image`` only. ``num_heads`` (default 12) and ``ln_eps`` (default 1e-6) are not recorded by any
    tensor; a Hugging Face folder (``src`` a directory, or ``fmt="hf"``) states them, with the frame count,
    label names and mean/std, in its ``config.json`` / ``preprocessor_config.json``. Raises
    :class:`ConvertError` for every unusable input.
    """
    src = Path(src)
    if fmt != "auto" and fmt not in FORMATS:
        raise ConvertError(f"unknown format {fmt!r}; choose auto or one of {FORMATS}")
    if num_frames is not None and (not isinstance(num_frames, int) or num_frames < 1):
        raise ConvertError(f"num_frames must be a positive integer, got {num_frames!r}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ConvertError(f"num_classes must be a positive integer, got {num_classes!r}")
    hf_opts: dict[str, Any] = {}
    hf_pre: dict[str, Any] = {}
    sources = [src]
    if src.is_dir() and fmt not in ("auto", "hf"):
        raise ConvertError(f"{src}: a folder is read as a Hugging Face checkpoint (--format hf), not {fmt}")
    if src.is_dir():
        fmt = "hf"
    else:
        raw, container = unwrap_state_dict(read_checkpoint_file(src), str(src))
        fmt = detect_format(raw, container) if fmt == "auto" else fmt
    if fmt == "hf":
        hf = read_hf(src)
        raw, container, sources = hf.state_dict, "hf", hf.weight_files
        hf_opts = hf_model_options(hf.config, str(src))
        hf_pre = hf_preprocess_options(hf.processor, str(src))
    num_heads = _pick(num_heads, hf_opts.get("num_heads"), 12, "num_heads", str(src))
    ln_eps = _pick(ln_eps, hf_opts.get("ln_eps"), 1e-6, "ln_eps", str(src))
    notes: list[str] = []

    torch.manual_seed(seed)  # fresh tensors (new head, image-weight model init) are reproducible
    if fmt == "vit-image":
        cfg = image_model_config(
            raw,
            num_heads=num_heads,
            num_frames=num_frames or 8,
            num_classes=num_classes,
            attention_type=attention_type,
            ln_eps=ln_eps,
            img_size=img_size,
        )
        model = TimeSformer(**cfg)
        report = inflate_image_weights(raw, model)
        notes.append(f"image weights inflated: {report.summary()}")
        if report.fresh:
            notes.append(f"fresh head ({cfg['num_classes']} classes)")
    else:
        try:
            native = conv_filter(_TO_NATIVE[fmt](raw))
        except ConvertError as exc:
            raise ConvertError(f"{src}: {exc}") from exc
        cfg = infer_model_config(native, num_heads=num_heads, num_frames=num_frames, ln_eps=ln_eps)
        for key in _HF_CHECKED:
            if key in hf_opts and hf_opts[key] != cfg[key]:
                raise ConvertError(
                    f"{src}: config.json says {key} = {hf_opts[key]!r}, the weights {cfg[key]!r}"
                )
        if num_frames is not None and "time_embed" in native and num_frames != cfg["num_frames"]:
            notes.append(f"time_embed resized {cfg['num_frames']} -> {num_frames} frames (nearest)")
            native = resize_time_embed_for(native, num_frames)
            cfg["num_frames"] = num_frames
        if num_classes is not None and num_classes != cfg["num_classes"] or cfg["num_classes"] == 0:
            if num_classes is None:
                raise ConvertError(f"{src}: head.weight missing (backbone-only weights); pass --num-classes")
            notes.append(f"head replaced: {cfg['num_classes']} -> {num_classes} classes (fresh init)")
            native = {k: v for k, v in native.items() if not k.startswith("head.")}
            cfg["num_classes"] = num_classes
            fresh_head = TimeSformer(**{**cfg, "depth": 1}).head.state_dict()
            native.update({f"head.{k}": v for k, v in fresh_head.items()})
        model = build_and_load(cfg, native)

    default_mean, default_std = (
        (PADDLE_MEAN, PADDLE_STD) if fmt == "paddle" else (TIMESFORMER_MEAN, TIMESFORMER_STD)
    )
    if fmt == "mmaction":
        default_mean, default_std = _mmaction_mean_std(raw)
    default_mean, default_std = hf_pre.get("mean", default_mean), hf_pre.get("std", default_std)
    if hf_pre.get("crop_size", cfg["img_size"]) != cfg["img_size"]:
        crop, size = hf_pre["crop_size"], cfg["img_size"]
        notes.append(f"preprocessor crop {crop} ignored: the model's image size is {size}")
    short_side = max(int(hf_pre.get("short_side", cfg["img_size"])), cfg["img_size"])
    try:
        spec = PreprocessSpec(
            num_frames=cfg["num_frames"],
            sampling="paddle" if fmt == "paddle" else "uniform",
            short_side=short_side,
            crop_size=cfg["img_size"],
            crops="three",
            mean=tuple(mean) if mean is not None else default_mean,
            std=tuple(std) if std is not None else default_std,
        )
    except ValueError as exc:
        raise ConvertError(f"bad preprocessing flags: {exc}") from exc

    names: list[str] | None = None
    if labels is not None:
        names = read_label_file(labels) if isinstance(labels, (str, Path)) else [str(x) for x in labels]
        if len(names) != cfg["num_classes"]:
            raise ConvertError(f"{len(names)} labels for {cfg['num_classes']} classes in the weights")
    elif "labels" in hf_opts:
        names = hf_opts["labels"]  # id2label
        if len(names) != cfg["num_classes"]:
            notes.append(f"config.json id2label ({len(names)}) ignored for {cfg['num_classes']} classes")
            names = None

    meta: dict[str, Any] = {
        "source": str(src),
        "source_format": fmt,
        "source_container": container,
        "source_sha256": _sha256(*sources),
        "converted_by": "training.convert",
        "notes": notes,
    }
    return Checkpoint(
        model_config=model.model_config,
        preprocess=spec,
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        labels=names,
        meta=meta,
    )


# mmaction2's TimeSformer configs normalise with mean = std = 127.5 on the 0..255 scale.
MMACTION_MEAN = MMACTION_STD = (0.5, 0.5, 0.5)


def _mmaction_mean_std(raw: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """mmaction2's normalisation on the 0..1 scale: its data preprocessor's buffers when the checkpoint
    holds them (0..255 scale), else its TimeSformer configs' 127.5 / 127.5."""
    out = []
    for key, default in (("mean", MMACTION_MEAN), ("std", MMACTION_STD)):
        v = raw.get(f"data_preprocessor.{key}")
        if v is None:
            out.append(default)
            continue
        flat = torch.as_tensor(v, dtype=torch.float64).flatten()
        if flat.numel() != 3:
            raise ConvertError(f"data_preprocessor.{key}: expected 3 channel values, got {flat.numel()}")
        out.append(tuple(float(x) / 255.0 for x in flat))
    return out[0], out[1]


def load_any_checkpoint(path: str | Path) -> Checkpoint:
    """A native checkpoint, or one in another format (official .pyth, PaddleVideo .pdparams, mmaction2)
    imported through ``training.convert.import_checkpoint``."""
    path = Path(path)
    try:
        return load_checkpoint(path)
    except CheckpointError as native_error:
        if not path.exists():
            raise

        try:
            return import_checkpoint(path)
        except (ValueError, OSError) as exc:
            raise CheckpointError(
                f"{path}: neither a native checkpoint nor an importable one ({exc})"
            ) from native_error


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Initialise ``model`` in place from weights in any importable format.

    ImageNet ViT image weights are inflated as the official ``load_pretrained`` does (temporal attention
    copied from spatial, ``temporal_fc`` and ``time_embed`` zero, ``pos_embed`` resized when the grid
    differs); video weights load by name with ``time_embed`` resized to the model's frame count. A head of
    another class count is left at its fresh init (fine-tuning); any other mismatch is an error.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"model.pretrained: {path}: no such file")
    try:
        native = load_checkpoint(path).state_dict
    except CheckpointError:
        if path.is_dir():  # a Hugging Face folder
            native = load_any_checkpoint(path).state_dict
        else:
            native = _image_or_video_weights(model, path)
        if native is None:
            return
    _load_video_weights(model, native, path)


def _image_or_video_weights(model: nn.Module, path: Path) -> dict[str, torch.Tensor] | None:
    """Inflate image weights into ``model`` (returns None), or read video weights of any format."""
    raw, container = unwrap_state_dict(read_checkpoint_file(path), str(path))
    if detect_format(raw, container) == "vit-image":
        report = inflate_image_weights(raw, model)
        print(f"pretrained: {path}: {report.summary()}", flush=True)
        return None
    return load_any_checkpoint(path).state_dict


def _load_video_weights(model: nn.Module, native: dict[str, torch.Tensor], path: Path) -> None:
    """Video weights by name, ``time_embed`` resized; a head of another size keeps its fresh init."""
    own = model.state_dict()
    if "time_embed" in native and "time_embed" in own:
        native = resize_time_embed_for(dict(native), own["time_embed"].shape[1])
    keep = {k: v for k, v in native.items() if not (k.startswith("head.") and v.shape != own[k].shape)}
    bad = [k for k, v in keep.items() if k not in own or v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{path}: pretrained weights do not fit the model: {bad[:5]}")
    missing, _ = model.load_state_dict(keep, strict=False)
    lacking = [k for k in missing if not k.startswith("head.")]
    if lacking:
        raise CheckpointError(f"{path}: pretrained weights lack {lacking[:5]}")


INIT_KEYS = (
    "time_embed_init",
    "time_embed_init_std",
    "time_embed_init_scale",
    "pos_embed_init_scale",
    "init_codes_orthogonal",
    "temporal_fc_init_std",
)


def build_model(model_cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """``model.<arch>(num_classes=..., **kwargs)`` from the ``model`` config section, then the
    ``pretrained`` weights (any format training.convert imports; ImageNet ViT image weights are inflated),
    then the optional from-scratch inits: ``time_embed_init`` ``normal`` (truncated normal of std
    ``time_embed_init_std``) or ``sincos`` (sinusoids of amplitude ``time_embed_init_scale``), and
    ``pos_embed_init_scale`` (2-D sinusoids of that amplitude over the patch grid); with
    ``init_codes_orthogonal`` the time and position codes are moved into orthogonal subspaces
    (:func:`orthogonal_codes`)."""
    from training.modeling import model as model_lib

    kwargs = {k: v for k, v in model_cfg.items() if k not in ("arch", "pretrained", *INIT_KEYS)}
    kwargs["num_classes"] = num_classes
    factory = getattr(model_lib, model_cfg["arch"], None)
    if not callable(factory) or model_cfg["arch"].startswith("_"):
        raise ValueError(f"model.arch {model_cfg['arch']!r} is not a factory in training.modeling.model")
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ValueError(f"model section does not fit {model_cfg['arch']}: {exc}") from exc
    if model_cfg.get("pretrained"):
        load_pretrained(model, model_cfg["pretrained"])
    std = model_cfg.get("time_embed_init_std")
    kind = model_cfg.get("time_embed_init", "normal")
    if kind not in ("normal", "sincos"):
        raise ValueError(f"model.time_embed_init must be normal or sincos, got {kind!r}")
    with torch.no_grad():
        if hasattr(model, "time_embed") and kind == "sincos":
            # Smooth, ordered codes of frame position: from scratch, direction of motion is learnt only
            # when the time code is strong next to the patch features (a weak random one leaves the
            # model reading the axis of motion but not its direction).
            t, c = model.time_embed.shape[1:]
            model.time_embed.copy_(float(model_cfg.get("time_embed_init_scale", 1.0)) * sincos_1d(t, c)[None])
        elif std and hasattr(model, "time_embed"):
            # The official init leaves time_embed at zero; with it the network is exactly invariant to
            # reversing time, so from scratch the gradient towards direction of motion starts at zero.
            nn.init.trunc_normal_(model.time_embed, std=float(std), a=-2 * float(std), b=2 * float(std))
        scale = model_cfg.get("pos_embed_init_scale")
        if scale and hasattr(model, "pos_embed"):
            g = model.patch_embed.grid_size
            c = model.pos_embed.shape[-1]
            ys, xs = sincos_1d(g, c // 2), sincos_1d(g, c - c // 2)  # (g, c/2) each
            grid = torch.cat([ys[:, None].expand(g, g, -1), xs[None].expand(g, g, -1)], dim=-1)  # (g, g, c)
            model.pos_embed[0, 1:].copy_(float(scale) * grid.reshape(g * g, c))  # the cls slot keeps its init
        fc_std = model_cfg.get("temporal_fc_init_std")
        if fc_std:
            # The official zero temporal_fc starts every block as its image block (right when inflating
            # image weights); from scratch it silences temporal attention until temporal_fc grows.
            for blk in getattr(model, "blocks", []):
                if hasattr(blk, "temporal_fc"):
                    nn.init.trunc_normal_(blk.temporal_fc.weight, std=float(fc_std))
        if model_cfg.get("init_codes_orthogonal"):
            if not (hasattr(model, "time_embed") and hasattr(model, "pos_embed")):
                raise ValueError("model.init_codes_orthogonal needs a model with time_embed and pos_embed")
            codes = orthogonal_codes([model.time_embed[0], model.pos_embed[0, 1:]])
            model.time_embed[0].copy_(codes[0])
            model.pos_embed[0, 1:].copy_(codes[1])
    return model


def orthogonal_codes(codes: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each (n_i, C) code moved isometrically into its own subspace, the subspaces mutually orthogonal.

    Why: the sinusoidal time code and the 2-D position code are built from the same frequencies over the
    same channels, so "frame t" and "row y" / "column x" overlap (the time code's sines share the channels
    of the row code, its cosines those of the column code): a direction that reads time also reads
    position. Here each code keeps its own geometry exactly (every inner product between two frames, or
    two patches, is unchanged: ``X' X'^T = X X^T``), but every frame code is orthogonal to every position
    code. The target subspaces are spanned by a random orthonormal basis (drawn from torch's RNG, so the
    run seed decides it), so that no code is concentrated in a few channels.
    """
    ranks, bases = [], []
    for x in codes:
        _, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
        r = int((s > s.max() * 1e-6).sum()) if s.numel() and s.max() > 0 else 0
        ranks.append(r)
        bases.append(vh[:r])  # (r, C): the code's own row space
    c = codes[0].shape[-1]
    if sum(ranks) > c:
        raise ValueError(f"codes of ranks {ranks} do not fit orthogonally in {c} channels")
    q, _ = torch.linalg.qr(torch.randn(c, c, dtype=torch.float64))  # (C, C) orthonormal columns
    out, start = [], 0
    for x, r, v in zip(codes, ranks, bases):
        target = q[:, start : start + r].T  # (r, C) orthonormal rows, unused by any other code
        out.append(((x.double() @ v.T) @ target).to(x.dtype))  # coordinates in its row space, re-based
        start += r
    return out


def sincos_1d(n: int, dim: int) -> torch.Tensor:
    """(n, dim) sinusoids of positions 0..n-1 with angular frequencies from pi down to pi/n (geometric),
    so that every channel varies over a range this short -- the 10000-based ViT code barely changes
    over 8 frames."""
    half = dim // 2
    omega = math.pi * (1.0 / n) ** (torch.arange(half, dtype=torch.float32) / max(half - 1, 1))  # (half,)
    angle = torch.arange(n, dtype=torch.float32)[:, None] * omega  # (n, half)
    out = torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)  # (n, 2*half)
    return torch.cat([out, torch.zeros(n, dim - 2 * half)], dim=1)  # (n, dim)


class Renormalised(nn.Module):
    """Feeds ``model`` clips normalised with its own mean/std when the caller's differ.

    A clip normalised as ``x = (rgb - m_in) / s_in`` becomes ``(rgb - m) / s = x * s_in / s + (m_in - m) / s``
    per channel: one multiply-add, exact up to float rounding, with no need for the raw pixels.
    """

    def __init__(self, model: nn.Module, input_spec: PreprocessSpec, model_spec: PreprocessSpec) -> None:
        super().__init__()
        self.model = model
        m_in, s_in = torch.tensor(input_spec.mean), torch.tensor(input_spec.std)
        m, s = torch.tensor(model_spec.mean), torch.tensor(model_spec.std)
        self.register_buffer("scale", (s_in / s).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("shift", ((m_in - m) / s).view(1, 3, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale + self.shift)  # x (B, 3, T, H, W) -> logits (B, K)


def load_teacher(
    path: str | Path, device: torch.device, input_spec: PreprocessSpec | None = None
) -> nn.Module:
    """A frozen teacher in eval mode from any importable checkpoint.

    With ``input_spec`` (the student's training spec: how the clips it is fed are normalised), a teacher
    whose own spec has another mean/std -- the official model's 0.45/0.225 or mmaction2's 127.5 under a
    PaddleVideo student's RGB/255 -- gets each clip renormalised to its own statistics first.
    """
    ckpt = load_any_checkpoint(path)
    teacher: nn.Module = ckpt.build_model()
    for p in teacher.parameters():
        p.requires_grad_(False)
    own = ckpt.preprocess
    if input_spec is not None and (own.mean, own.std) != (input_spec.mean, input_spec.std):
        print(
            f"distill: teacher {path} expects mean {list(own.mean)} std {list(own.std)}; clips normalised "
            f"with mean {list(input_spec.mean)} std {list(input_spec.std)} are renormalised for it",
            flush=True,
        )
        teacher = Renormalised(teacher, input_spec, own)
    return teacher.to(device).eval()
