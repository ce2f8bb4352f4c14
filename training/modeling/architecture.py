"""What a native-keyed state dict says about the architecture, checked tensor by tensor.

Everything the tensors say is inferred (:func:`infer_model_config`): width, depth, patch and image size,
frame count, class count, qkv bias, MLP ratio and attention type. The head count and, for ``space_only``,
the frame count are not recorded by any tensor and come from the caller. Every inconsistency raises
:class:`~training.modeling.readers.ConvertError` naming the key or shape at fault.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from training.modeling.model import TimeSformer, resize_time_embed_nearest
from training.modeling.readers import ConvertError

BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _expect(sd: Mapping[str, torch.Tensor], key: str, shape: tuple[int, ...], what: str = "") -> None:
    if key not in sd:
        raise ConvertError(f"{key}: missing{' (' + what + ')' if what else ''}")
    got = tuple(sd[key].shape)
    if got != shape:
        raise ConvertError(f"{key}: shape {got}, expected {shape}{' (' + what + ')' if what else ''}")


def conv_filter(sd: dict[str, torch.Tensor], in_chans: int = 3) -> dict[str, torch.Tensor]:
    """Patch embeddings stored as a Linear over flattened patches (C, in*p*p) become the Conv2d weight
    (C, in, p, p), as the official ``_conv_filter`` does."""
    w = sd.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 2:
        p2 = w.shape[1] // in_chans
        p = math.isqrt(p2)
        if p * p * in_chans != w.shape[1]:
            raise ConvertError(f"patch_embed.proj.weight: shape {tuple(w.shape)} is not (C, {in_chans}*p*p)")
        sd = {**sd, "patch_embed.proj.weight": w.reshape(w.shape[0], in_chans, p, p)}
    return sd


def _embeddings(sd: Mapping[str, torch.Tensor], num_heads: int) -> tuple[int, int, int, int]:
    """Width, input channels, patch size and image size from cls_token, patch_embed and pos_embed."""
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ConvertError(f"num_heads must be a positive integer, got {num_heads!r}")
    if "cls_token" not in sd:
        raise ConvertError("cls_token: missing (not a TimeSformer/ViT state dict)")
    cls = sd["cls_token"]
    if cls.ndim != 3 or cls.shape[:2] != (1, 1):
        raise ConvertError(f"cls_token: shape {tuple(cls.shape)}, expected (1, 1, C)")
    c = int(cls.shape[2])
    if c % num_heads:
        raise ConvertError(
            f"width {c} (cls_token) is not divisible by num_heads={num_heads}; pass --num-heads"
        )
    w = sd.get("patch_embed.proj.weight")
    if w is None:
        raise ConvertError("patch_embed.proj.weight: missing")
    if w.ndim != 4 or w.shape[0] != c or w.shape[2] != w.shape[3]:
        raise ConvertError(f"patch_embed.proj.weight: shape {tuple(w.shape)}, expected ({c}, in_chans, p, p)")
    in_chans, patch = int(w.shape[1]), int(w.shape[2])
    _expect(sd, "patch_embed.proj.bias", (c,))
    pos = sd.get("pos_embed")
    if pos is None:
        raise ConvertError("pos_embed: missing")
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != c:
        raise ConvertError(f"pos_embed: shape {tuple(pos.shape)}, expected (1, 1+grid^2, {c})")
    grid = math.isqrt(int(pos.shape[1]) - 1)
    if grid < 1 or grid * grid + 1 != pos.shape[1]:
        raise ConvertError(f"pos_embed: length {pos.shape[1]} is not 1 + grid^2 for a square patch grid")
    return c, in_chans, patch, grid * patch


def _depth(sd: Mapping[str, torch.Tensor]) -> int:
    """Number of transformer blocks; every index below it must be present."""
    depth_ids = {int(m.group(1)) for k in sd if (m := BLOCK_KEY.match(k))}
    if not depth_ids:
        raise ConvertError("blocks.0.*: no transformer blocks found")
    depth = max(depth_ids) + 1
    missing_ids = sorted(set(range(depth)) - depth_ids)
    if missing_ids:
        raise ConvertError(f"blocks.{missing_ids[0]}.*: missing (blocks found: {sorted(depth_ids)})")
    return depth


def _attention(sd: Mapping[str, torch.Tensor], c: int, num_frames: int | None) -> tuple[str, int]:
    """Attention type (temporal keys -> divided, a time_embed alone -> joint, neither -> space_only) and
    frame count (time_embed's length; ``num_frames`` or 8 for space_only)."""
    divided = any(BLOCK_KEY.match(k) and ".temporal_" in k for k in sd)
    has_time = "time_embed" in sd
    if divided and not has_time:
        raise ConvertError("time_embed: missing (divided space-time weights always carry one)")
    if not has_time:
        return "space_only", int(num_frames) if num_frames is not None else 8
    te = sd["time_embed"]
    if te.ndim != 3 or te.shape[0] != 1 or te.shape[2] != c:
        raise ConvertError(f"time_embed: shape {tuple(te.shape)}, expected (1, T, {c})")
    return ("divided_space_time" if divided else "joint_space_time"), int(te.shape[1])


def _check_blocks(sd: Mapping[str, torch.Tensor], depth: int, c: int, divided: bool) -> tuple[int, bool]:
    """Every block's shapes against blocks.0 and the width; returns (MLP hidden width, qkv_bias)."""
    qkv_bias = "blocks.0.attn.qkv.bias" in sd
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if fc1 is None or fc1.ndim != 2:
        raise ConvertError("blocks.0.mlp.fc1.weight: missing or not 2-D")
    hidden = int(fc1.shape[0])
    prefixes = ["attn."] + (["temporal_attn."] if divided else [])
    for i in range(depth):
        b = f"blocks.{i}."
        norms = ["norm1", "norm2"] + (["temporal_norm1"] if divided else [])
        for n in norms:
            _expect(sd, f"{b}{n}.weight", (c,), "LayerNorm")
            _expect(sd, f"{b}{n}.bias", (c,), "LayerNorm")
        for p in prefixes:
            _expect(sd, f"{b}{p}qkv.weight", (3 * c, c), "packed q|k|v must be 3C x C")
            if (f"{b}{p}qkv.bias" in sd) != qkv_bias:
                raise ConvertError(
                    f"{b}{p}qkv.bias: {'missing' if qkv_bias else 'present'}, unlike blocks.0.attn"
                )
            if qkv_bias:
                _expect(sd, f"{b}{p}qkv.bias", (3 * c,))
            _expect(sd, f"{b}{p}proj.weight", (c, c))
            _expect(sd, f"{b}{p}proj.bias", (c,))
        if divided:
            _expect(sd, f"{b}temporal_fc.weight", (c, c))
            _expect(sd, f"{b}temporal_fc.bias", (c,))
        _expect(sd, f"{b}mlp.fc1.weight", (hidden, c), "MLP width must match blocks.0")
        _expect(sd, f"{b}mlp.fc1.bias", (hidden,))
        _expect(sd, f"{b}mlp.fc2.weight", (c, hidden))
        _expect(sd, f"{b}mlp.fc2.bias", (c,))
    _expect(sd, "norm.weight", (c,), "final LayerNorm")
    _expect(sd, "norm.bias", (c,), "final LayerNorm")
    return hidden, qkv_bias


def _num_classes(sd: Mapping[str, torch.Tensor], c: int) -> int:
    """The head's class count (0 for a headless backbone)."""
    head = sd.get("head.weight")
    if head is None:
        return 0
    if head.ndim != 2 or head.shape[1] != c:
        raise ConvertError(f"head.weight: shape {tuple(head.shape)}, expected (num_classes, {c})")
    _expect(sd, "head.bias", (int(head.shape[0]),))
    return int(head.shape[0])


def infer_model_config(
    sd: Mapping[str, torch.Tensor],
    *,
    num_heads: int = 12,
    num_frames: int | None = None,
    ln_eps: float = 1e-6,
) -> dict[str, Any]:
    """The :class:`~training.modeling.model.TimeSformer` kwargs these native-keyed weights describe.

    Checks every tensor's shape against the others (width, depth, qkv 3C x C, pos_embed 1 + grid^2, ...)
    and raises :class:`ConvertError` naming the first key that does not fit. ``num_frames`` is used only
    for ``space_only`` weights (which carry no time_embed); default 8.
    """
    c, in_chans, patch, img_size = _embeddings(sd, num_heads)
    depth = _depth(sd)
    attention_type, frames = _attention(sd, c, num_frames)
    divided = attention_type == "divided_space_time"
    hidden, qkv_bias = _check_blocks(sd, depth, c, divided)
    num_classes = _num_classes(sd, c)
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"}
    expected |= {"norm.weight", "norm.bias"} | ({"time_embed"} if attention_type != "space_only" else set())
    expected |= {"head.weight", "head.bias"} if num_classes else set()
    unknown = [k for k in sd if not BLOCK_KEY.match(k) and k not in expected]
    unknown += [k for k in sd if (m := BLOCK_KEY.match(k)) and not _known_block_key(m.group(2), divided)]
    if unknown:
        raise ConvertError(
            f"{sorted(unknown)[0]}: unexpected key for a {attention_type} TimeSformer ({len(unknown)} such)"
        )
    return dict(
        img_size=img_size,
        patch_size=patch,
        in_chans=in_chans,
        num_classes=num_classes,
        embed_dim=c,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=hidden / c,
        qkv_bias=qkv_bias,
        ln_eps=float(ln_eps),
        num_frames=frames,
        attention_type=attention_type,
    )


_BLOCK_PARTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
_TEMPORAL_PARTS = ("temporal_norm1", "temporal_attn.qkv", "temporal_attn.proj", "temporal_fc")


def _known_block_key(rest: str, divided: bool) -> bool:
    part, _, leaf = rest.rpartition(".")
    return part in _BLOCK_PARTS + (_TEMPORAL_PARTS if divided else ()) and leaf in ("weight", "bias")


def build_and_load(cfg: dict[str, Any], sd: Mapping[str, torch.Tensor]) -> TimeSformer:
    """The model for ``cfg`` with ``sd`` loaded strictly; a mismatch is a ConvertError."""
    model = TimeSformer(**cfg)
    try:
        model.load_state_dict(dict(sd), strict=True)
    except RuntimeError as exc:
        raise ConvertError(f"weights do not fit the inferred model: {str(exc).splitlines()[0]}") from exc
    return model.eval()


def resize_time_embed_for(sd: dict[str, torch.Tensor], num_frames: int) -> dict[str, torch.Tensor]:
    """Resize ``time_embed`` to ``num_frames`` with the official runtime rule (nearest along T), so the
    converted model gives what the source model gives when fed that many frames."""
    te = sd["time_embed"]
    if te.shape[1] == num_frames:
        return sd
    return {**sd, "time_embed": resize_time_embed_nearest(te, num_frames).contiguous()}
