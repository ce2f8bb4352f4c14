"""Readers for every published TimeSformer weight format, turned into this project's state-dict layout.

Formats (``--format`` of ``python -m training.convert``):

* ``official``  -- facebookresearch/TimeSformer ``.pyth``: ``{'model_state': sd}`` with a ``model.`` key
  prefix (what its training code saves), ``{'state_dict': sd}`` with ``module.``, or a bare state dict.
* ``paddle``    -- PaddleVideo ``.pdparams``: a plain pickle of ``name -> numpy array`` (+ the bookkeeping key
  ``StructuredToParameterName@@``). Read without Paddle through the restricted unpickler of
  :mod:`training.modeling.readers`, which admits numpy's array reconstruction and nothing else, so a
  hostile file cannot run code. Paddle stores Linear
  weights as (in, out): every 2-D weight is transposed.
* ``mmaction``  -- mmaction2 ``TimeSformer`` checkpoints (``backbone.transformer_layers.layers.{i}.*``, mmcv
  transformer layers with ``nn.MultiheadAttention``; see :data:`MMACTION_BLOCK_MAP`).
* ``vit-image`` -- ImageNet ViT weights used as the starting point for video training; see
  :mod:`training.modeling.inflate`. timm's ``.pth``/``.safetensors`` (e.g.
  ``vit_base_patch16_224_in21k_miil``) and Paddle image ``.pdparams`` (PaddleClas's
  ``ViT_base_patch16_224_pretrained``, PaddleVideo's MIIL 21k file): the same timm-style names, but
  Linear weights stored (in, out) and transposed here.
* ``hf``        -- Hugging Face ``TimesformerForVideoClassification`` (``save_pretrained`` folders,
  safetensors or ``pytorch_model.bin``); see :mod:`training.modeling.hf`.

Safetensors files of any of these layouts are read with the ``safetensors`` package (no pickle).

Files are read by :mod:`training.modeling.readers` (never executing code from them); what the tensors say
about the architecture is inferred by :mod:`training.modeling.architecture`, and image weights are inflated
by :mod:`training.modeling.inflate`. Every inconsistency raises :class:`ConvertError` naming the key or shape
at fault.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from training.modeling.hf import is_hf_keys
from training.modeling.readers import ConvertError

FORMATS = ("official", "paddle", "mmaction", "vit-image", "hf")
PADDLE_SKIP_KEY = "StructuredToParameterName@@"


# ------------------------------------------------------------------------------------------------------------
# Unwrapping containers and detecting the format
# ------------------------------------------------------------------------------------------------------------


def _strip_prefix(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items()}
    return dict(sd)


def unwrap_state_dict(obj: Any, source: str = "<checkpoint>") -> tuple[dict[str, Any], str]:
    """The weights inside a loaded checkpoint, and which container held them
    (``model_state`` | ``state_dict`` | ``model`` | ``bare``)."""
    if not isinstance(obj, Mapping):
        raise ConvertError(f"{source}: not a checkpoint (top level is a {type(obj).__name__}, not a mapping)")
    for key in ("model_state", "state_dict", "model"):
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner:
            sd, container = dict(inner), key
            break
    else:
        sd, container = dict(obj), "bare"
    sd = {k: v for k, v in sd.items() if k != PADDLE_SKIP_KEY}
    bad = [k for k in sd if not isinstance(k, str)]
    if bad:
        raise ConvertError(f"{source}: weight names must be strings, got {bad[:3]!r}")
    tensors = [k for k, v in sd.items() if isinstance(v, (torch.Tensor, np.ndarray))]
    if not tensors:
        raise ConvertError(f"{source}: not a checkpoint (no tensors under {container!r})")
    sd = _strip_prefix(sd, "module.")
    sd = _strip_prefix(sd, "model.")
    return sd, container


def detect_format(sd: Mapping[str, Any], container: str = "bare") -> str:
    """Tell the format from key names (and the container): see the module docstring.

    A bare state dict with neither ``time_embed`` nor ``temporal_*`` keys is read as ImageNet ViT weights;
    an official ``space_only`` model looks the same but is saved under ``model_state`` by the official code
    (pass ``--format official`` for a bare one).
    """
    keys = list(sd)
    if is_hf_keys(keys):
        return "hf"
    if any(k.startswith("backbone.transformer_layers.") for k in keys):
        return "mmaction"
    is_numpy = any(isinstance(v, np.ndarray) for v in sd.values())  # a Paddle pickle
    temporal = "time_embed" in sd or any(".temporal_" in k for k in keys)
    if is_numpy and not temporal and "cls_token" in sd and any(k.startswith("blocks.") for k in keys):
        return "vit-image"  # Paddle image weights (PaddleClas / PaddleVideo's ImageNet ViT)
    if is_numpy or any(k.startswith(("backbone.blocks.", "head.fc.")) for k in keys):
        return "paddle"
    if container == "model_state" or "time_embed" in sd or any(".temporal_" in k for k in keys):
        return "official"
    if "cls_token" in sd and any(k.startswith("blocks.") for k in keys):
        return "vit-image"
    raise ConvertError(
        f"cannot tell the checkpoint format from its keys (first keys: {keys[:5]}); pass --format"
    )


# ------------------------------------------------------------------------------------------------------------
# Per-format key mapping -> native keys
# ------------------------------------------------------------------------------------------------------------


def to_tensor(name: str, v: Any) -> torch.Tensor:
    if isinstance(v, np.ndarray):
        if v.dtype.kind != "f":
            raise ConvertError(f"{name}: expected a floating-point array, got dtype {v.dtype}")
        v = torch.from_numpy(np.ascontiguousarray(v))
    if not isinstance(v, torch.Tensor):
        raise ConvertError(f"{name}: expected a tensor, got {type(v).__name__}")
    if not v.is_floating_point():
        raise ConvertError(f"{name}: expected a floating-point tensor, got {v.dtype}")
    return v.detach().to(torch.float32).contiguous()


def official_to_native(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Official keys are already native (prefixes were stripped when unwrapping)."""
    return {k: to_tensor(k, v) for k, v in sd.items()}


def paddle_to_native(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``backbone.*`` -> ``*``, ``head.fc.*`` -> ``head.*``, every 2-D weight transposed from Paddle's
    (in, out) to PyTorch's (out, in). Conv and embedding tensors keep their layout."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith("backbone."):
            name = k[len("backbone.") :]
        elif k.startswith("head.fc."):
            name = "head." + k[len("head.fc.") :]
        else:
            raise ConvertError(f"{k}: unexpected key in a PaddleVideo TimeSformer checkpoint")
        t = to_tensor(k, v)
        if name.endswith(".weight") and t.ndim == 2:
            t = t.t().contiguous()  # Paddle Linear (in, out) -> torch (out, in)
        out[name] = t
    return out


# mmaction2 backbone.transformer_layers.layers.{i}.<left> -> blocks.{i}.<right>. Verified against
# mmaction/models/backbones/timesformer.py and mmaction/models/common/transformer.py (mmaction2) and mmcv's
# FFN / BaseTransformerLayer / MultiheadAttention (in_proj_* packs q|k|v like the official qkv Linear).
MMACTION_BLOCK_MAP: dict[str, dict[str, str]] = {
    "divided_space_time": {
        "attentions.0.norm.": "temporal_norm1.",
        "attentions.0.attn.in_proj_weight": "temporal_attn.qkv.weight",
        "attentions.0.attn.in_proj_bias": "temporal_attn.qkv.bias",
        "attentions.0.attn.out_proj.": "temporal_attn.proj.",
        "attentions.0.temporal_fc.": "temporal_fc.",
        "attentions.1.norm.": "norm1.",
        "attentions.1.attn.in_proj_weight": "attn.qkv.weight",
        "attentions.1.attn.in_proj_bias": "attn.qkv.bias",
        "attentions.1.attn.out_proj.": "attn.proj.",
        "ffns.0.norm.": "norm2.",
        "ffns.0.layers.0.0.": "mlp.fc1.",
        "ffns.0.layers.1.": "mlp.fc2.",
    },
    "other": {  # space_only and joint_space_time: BaseTransformerLayer(norm, self_attn, norm, ffn)
        "norms.0.": "norm1.",
        "attentions.0.attn.in_proj_weight": "attn.qkv.weight",
        "attentions.0.attn.in_proj_bias": "attn.qkv.bias",
        "attentions.0.attn.out_proj.": "attn.proj.",
        "norms.1.": "norm2.",
        "ffns.0.layers.0.0.": "mlp.fc1.",
        "ffns.0.layers.1.": "mlp.fc2.",
    },
}
_MMACTION_TOP = {
    "backbone.patch_embed.projection.": "patch_embed.proj.",
    "backbone.cls_token": "cls_token",
    "backbone.pos_embed": "pos_embed",
    "backbone.time_embed": "time_embed",
    "backbone.norm.": "norm.",
    "cls_head.fc_cls.": "head.",
}
_MMACTION_LAYER = re.compile(r"^backbone\.transformer_layers\.layers\.(\d+)\.(.+)$")


def mmaction_to_native(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """mmaction2 TimeSformer keys -> native keys (:data:`MMACTION_BLOCK_MAP`)."""
    divided = any(".attentions.1." in k or ".temporal_fc." in k for k in sd)
    table = MMACTION_BLOCK_MAP["divided_space_time" if divided else "other"]
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith("data_preprocessor."):
            continue  # normalisation buffers of mmaction's data preprocessor, not model weights
        name = None
        m = _MMACTION_LAYER.match(k)
        if m:
            idx, rest = m.groups()
            for left, right in table.items():
                if rest == left or (left.endswith(".") and rest.startswith(left)):
                    name = f"blocks.{idx}.{right}{rest[len(left) :]}"
                    break
        else:
            for left, right in _MMACTION_TOP.items():
                if k == left or (left.endswith(".") and k.startswith(left)):
                    name = right + k[len(left) :]
                    break
        if name is None:
            raise ConvertError(f"{k}: unexpected key in an mmaction2 TimeSformer checkpoint")
        out[name] = to_tensor(k, v)
    return out
