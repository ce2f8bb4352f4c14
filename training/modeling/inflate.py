"""ImageNet ViT image weights -> a TimeSformer, inflated as the official ``load_pretrained`` does.

Spatial weights load by name; ``attn`` and ``norm1`` are copied to ``temporal_attn`` and ``temporal_norm1``;
``temporal_fc`` and ``time_embed`` stay zero; ``pos_embed`` is resized to the video's patch grid. timm's
``.pth``/``.safetensors`` and Paddle image ``.pdparams`` (Linear weights stored (in, out), transposed here)
are both read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.modeling.architecture import BLOCK_KEY, conv_filter, infer_model_config
from training.modeling.formats import to_tensor, unwrap_state_dict
from training.modeling.model import ATTENTION_TYPES, TimeSformer
from training.modeling.readers import ConvertError


@dataclass
class InflationReport:
    """What :func:`inflate_image_weights` did to each model tensor."""

    copied: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)  # temporal_* copied from the spatial weights
    zeroed: list[str] = field(default_factory=list)  # time_embed, temporal_fc
    resized: list[str] = field(default_factory=list)  # pos_embed
    fresh: list[str] = field(default_factory=list)  # kept the model's own init (head of another size)
    unused: list[str] = field(default_factory=list)  # image keys with no place in the model

    def summary(self) -> str:
        return (
            f"{len(self.copied)} copied, {len(self.inflated)} inflated to temporal, "
            f"{len(self.zeroed)} zeroed, {len(self.resized)} resized, {len(self.fresh)} fresh, "
            f"{len(self.unused)} unused"
        )


def resize_pos_embed_bilinear(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, 1+P*P, C) -> (1, 1+grid*grid, C): the patch grid resized in 2-D, bilinear (align_corners=False),
    cls position kept. Used once, at import time, to move image weights to another resolution: a learned
    image position grid is smooth, and bilinear keeps neighbouring positions distinct where nearest would
    duplicate them."""
    c = pos_embed.shape[-1]
    p = math.isqrt(pos_embed.shape[1] - 1)
    if p * p + 1 != pos_embed.shape[1]:
        raise ConvertError(f"pos_embed: length {pos_embed.shape[1]} is not 1 + grid^2")
    g = pos_embed[:, 1:, :].transpose(1, 2).reshape(1, c, p, p)  # (1, C, P, P)
    g = F.interpolate(g, size=(grid, grid), mode="bilinear", align_corners=False)
    return torch.cat((pos_embed[:, :1, :], g.flatten(2).transpose(1, 2)), dim=1)


def normalize_image_state_dict(image_sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """timm/official ViT image weights -> tensors with native names; returns (weights, dropped keys).

    Paddle image weights (``.pdparams``: numpy arrays under the same timm-style names) store every Linear
    weight as (in, out); those 2-D weights are transposed to PyTorch's (out, in), as for Paddle videos.
    """
    sd, _ = unwrap_state_dict(image_sd, "image weights")
    paddle_layout = any(isinstance(v, np.ndarray) for v in sd.values())
    dropped = [k for k in sd if k.startswith("pre_logits.")]  # 21k ViT's extra head layer: not used
    sd = {k: to_tensor(k, v) for k, v in sd.items() if k not in dropped}
    if paddle_layout:
        sd = {k: v.t().contiguous() if k.endswith(".weight") and v.ndim == 2 else v for k, v in sd.items()}
    return conv_filter(sd), dropped


def inflate_image_weights(image_sd: Mapping[str, Any], model: TimeSformer) -> InflationReport:
    """Load ImageNet ViT weights into a TimeSformer, in place, as the official ``load_pretrained`` does.

    Spatial weights load by name; for divided attention ``attn``/``norm1`` are also copied into
    ``temporal_attn``/``temporal_norm1`` while ``temporal_fc`` and ``time_embed`` are zero, so every block
    starts as its image block and a static video gives exactly the image model's logits. ``pos_embed`` is
    resized (bilinear, 2-D) when the patch grid differs; the head is kept only if its class count matches.
    Raises :class:`ConvertError` when the image model's width, patch size or depth do not fit ``model``.
    """
    sd, dropped = normalize_image_state_dict(image_sd)
    report = InflationReport(unused=list(dropped))
    target = model.state_dict()
    c = model.embed_dim
    if "cls_token" not in sd:
        raise ConvertError("cls_token: missing from the image weights (not a ViT state dict)")
    if sd["cls_token"].shape[-1] != c:
        raise ConvertError(f"cls_token: image width {sd['cls_token'].shape[-1]} != model width {c}")
    img_blocks = {int(m.group(1)) for k in sd if (m := BLOCK_KEY.match(k))}
    if img_blocks != set(range(model._config["depth"])):
        raise ConvertError(
            f"blocks.*: image weights have {len(img_blocks)} blocks (ids {sorted(img_blocks)[:3]}...), "
            f"the model {model._config['depth']}"
        )

    new: dict[str, torch.Tensor] = {}
    for name, cur in target.items():
        m = BLOCK_KEY.match(name)
        if name == "time_embed" or (m and m.group(2).startswith("temporal_fc.")):
            new[name] = torch.zeros_like(cur)
            report.zeroed.append(name)
            continue
        src = name
        if m and m.group(2).startswith("temporal_attn."):
            src = name.replace("temporal_attn.", "attn.")
        elif m and m.group(2).startswith("temporal_norm1."):
            src = name.replace("temporal_norm1.", "norm1.")
        if name.startswith("head."):
            if src in sd and sd[src].shape == cur.shape:
                new[name] = sd[src]
                report.copied.append(name)
            else:
                new[name] = cur
                report.fresh.append(name)
            continue
        if src not in sd:
            raise ConvertError(f"{src}: missing from the image weights")
        t = sd[src]
        if name == "pos_embed" and t.shape != cur.shape:
            t = resize_pos_embed_bilinear(t, model.patch_embed.grid_size)
            report.resized.append(name)
        if t.shape != cur.shape:
            raise ConvertError(
                f"{src}: image shape {tuple(t.shape)} does not fit the model's {tuple(cur.shape)}"
            )
        new[name] = t
        (report.inflated if src != name else report.copied).append(name)
    used = {n.replace("temporal_attn.", "attn.").replace("temporal_norm1.", "norm1.") for n in new}
    report.unused += sorted(k for k in sd if k not in used)
    model.load_state_dict(new, strict=True)
    return report


def image_model_config(
    image_sd: Mapping[str, Any],
    *,
    num_heads: int = 12,
    num_frames: int = 8,
    num_classes: int | None = None,
    attention_type: str = "divided_space_time",
    ln_eps: float = 1e-6,
    img_size: int | None = None,
) -> dict[str, Any]:
    """TimeSformer kwargs for video training from these image weights (shapes checked as for videos)."""
    if attention_type not in ATTENTION_TYPES:
        raise ConvertError(f"attention_type must be one of {ATTENTION_TYPES}, got {attention_type!r}")
    sd, _ = normalize_image_state_dict(image_sd)
    if "fc_norm.weight" in sd and "norm.weight" not in sd:
        raise ConvertError(
            "fc_norm.weight: global-pool ViT weights are not supported (TimeSformer uses the cls token)"
        )
    vit_keys = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.", "head.")
    vit_sd = {k: v for k, v in sd.items() if k.startswith(vit_keys)}
    cfg = infer_model_config(vit_sd, num_heads=num_heads, num_frames=num_frames, ln_eps=ln_eps)
    cfg["attention_type"] = attention_type
    cfg["num_frames"] = num_frames
    if img_size is not None:
        if img_size % cfg["patch_size"]:
            raise ConvertError(f"img_size {img_size} is not a multiple of the patch size {cfg['patch_size']}")
        cfg["img_size"] = img_size
    if num_classes is not None:
        cfg["num_classes"] = num_classes
    if cfg["num_classes"] < 1:
        raise ConvertError("head.weight: the image weights carry no head; pass --num-classes")
    return cfg
