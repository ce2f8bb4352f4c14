"""Readers for every published TimeSformer weight format, turned into this project's state-dict layout.

Formats (``--format`` of ``python -m training.convert``):

* ``official``  -- facebookresearch/TimeSformer ``.pyth``: ``{'model_state': sd}`` with a ``model.`` key
  prefix (what its training code saves), ``{'state_dict': sd}`` with ``module.``, or a bare state dict.
* ``paddle``    -- PaddleVideo ``.pdparams``: a plain pickle of ``name -> numpy array`` (+ the bookkeeping key
  ``StructuredToParameterName@@``). Read without Paddle through :class:`RestrictedUnpickler`, which admits
  numpy's array reconstruction and nothing else, so a hostile file cannot run code. Paddle stores Linear
  weights as (in, out): every 2-D weight is transposed.
* ``mmaction``  -- mmaction2 ``TimeSformer`` checkpoints (``backbone.transformer_layers.layers.{i}.*``, mmcv
  transformer layers with ``nn.MultiheadAttention``; see :data:`MMACTION_BLOCK_MAP`).
* ``vit-image`` -- ImageNet ViT weights used as the starting point for video training; see
  :func:`inflate_image_weights`. timm's ``.pth``/``.safetensors`` (e.g. ``vit_base_patch16_224_in21k_miil``)
  and Paddle image ``.pdparams`` (PaddleClas's ``ViT_base_patch16_224_pretrained``, PaddleVideo's MIIL 21k
  file): the same timm-style names, but Linear weights stored (in, out) and transposed here.
* ``hf``        -- Hugging Face ``TimesformerForVideoClassification`` (``save_pretrained`` folders,
  safetensors or ``pytorch_model.bin``); see :mod:`training.modeling.hf`.

Safetensors files of any of these layouts are read with the ``safetensors`` package (no pickle).

Everything the tensors say is inferred (:func:`infer_model_config`): width, depth, patch and image size, frame
count, class count, qkv bias, MLP ratio and attention type. The head count and, for ``space_only``, the frame
count are not recorded by any tensor and come from the caller. Every inconsistency raises
:class:`ConvertError` naming the key or shape at fault.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.modeling.model import ATTENTION_TYPES, TimeSformer, resize_time_embed_nearest

FORMATS = ("official", "paddle", "mmaction", "vit-image", "hf")
PADDLE_SKIP_KEY = "StructuredToParameterName@@"
# What torch's legacy (pre-zip) serialization writes as its first pickle.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class ConvertError(ValueError):
    """A file that is not a usable checkpoint of a known format; the message names the key/shape at fault."""


# ------------------------------------------------------------------------------------------------------------
# Reading files safely
# ------------------------------------------------------------------------------------------------------------


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for PaddleVideo ``.pdparams``: admits only numpy's array/dtype/scalar reconstruction and
    ``OrderedDict``; any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen`` ...) is refused
    *before* it can be called, with an error naming it."""

    ALLOWED: frozenset[tuple[str, str]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("collections", "OrderedDict"),
            # Protocol-2 pickles (older Paddle) wrap raw array bytes as _codecs.encode(text, 'latin1').
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise ConvertError(
                f"refused pickle global {module}.{name}: a .pdparams file holds only numpy arrays "
                "(this file would run code when loaded)"
            )
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            # numpy 2 renamed numpy.core -> numpy._core; files written by either load under both.
            alt = (
                module.replace("numpy._core", "numpy.core")
                if "_core" in module
                else module.replace("numpy.core", "numpy._core")
            )
            return super().find_class(alt, name)


def restricted_pickle_load(data: bytes, source: str = "<bytes>") -> Any:
    """Load a pickle through :class:`RestrictedUnpickler`; truncated or malformed data -> ConvertError."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except ConvertError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise ConvertError(f"{source}: not a readable pickle (truncated or corrupt): {exc}") from exc


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never code. numpy scalars and
    dtypes (found in some training frameworks' metadata) are admitted as well."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "numpy" not in str(exc):
            raise ConvertError(f"{path}: refused by the safe loader: {str(exc).splitlines()[0]}") from exc
    np_globals: list[Any] = [np.dtype, np.ndarray]
    core = getattr(np, "_core", None) or np.core
    np_globals += [core.multiarray.scalar, core.multiarray._reconstruct]
    np_globals += [type(np.dtype(t)) for t in ("f2", "f4", "f8", "i4", "i8", "u1", "b1")]
    try:
        with torch.serialization.safe_globals(np_globals):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConvertError(f"{path}: refused by the safe loader: {str(exc).splitlines()[0]}") from exc


def read_checkpoint_file(path: str | Path) -> Any:
    """Load a checkpoint file of any supported kind without ever executing code from it.

    A zip file is a torch checkpoint (``torch.load(weights_only=True)``); a pickle is a ``.pdparams``
    (restricted unpickler) or a legacy torch file (recognised by its magic number); a safetensors file (an
    8-byte header length, then a JSON header) is read by the ``safetensors`` package. Anything else is
    refused.
    """
    path = Path(path)
    if not path.exists():
        raise ConvertError(f"{path}: no such file")
    if not path.is_file():
        raise ConvertError(f"{path}: not a file")
    data = path.read_bytes()
    if not data:
        raise ConvertError(f"{path}: empty file")
    if data[:4] == b"PK\x03\x04":
        if not zipfile.is_zipfile(io.BytesIO(data)):
            raise ConvertError(f"{path}: truncated or corrupt torch checkpoint (broken zip archive)")
        try:
            return _torch_load(path)
        except ConvertError:
            raise
        except Exception as exc:  # torch raises RuntimeError and friends for damaged archives
            raise ConvertError(
                f"{path}: truncated or corrupt torch checkpoint ({type(exc).__name__}: {exc})"
            ) from exc
    if data[:1] == b"\x80":  # pickle protocol >= 2
        obj = restricted_pickle_load(data, str(path))
        if obj == _TORCH_LEGACY_MAGIC:
            try:
                return _torch_load(path)
            except ConvertError:
                raise
            except Exception as exc:
                raise ConvertError(
                    f"{path}: corrupt legacy torch checkpoint ({type(exc).__name__}: {exc})"
                ) from exc
        return obj
    if len(data) > 9 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data):
        from training.modeling.hf import read_safetensors

        return read_safetensors(path)
    raise ConvertError(
        f"{path}: not a checkpoint (neither a torch zip archive nor a pickle; starts {data[:8]!r})"
    )


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
    from training.modeling.hf import is_hf_keys

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


def _to_tensor(name: str, v: Any) -> torch.Tensor:
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
    return {k: _to_tensor(k, v) for k, v in sd.items()}


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
        t = _to_tensor(k, v)
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
        out[name] = _to_tensor(k, v)
    return out


# ------------------------------------------------------------------------------------------------------------
# Inferring the model config, with shape checks that name the key at fault
# ------------------------------------------------------------------------------------------------------------

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


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
    depth_ids = {int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k))}
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
    divided = any(_BLOCK_KEY.match(k) and ".temporal_" in k for k in sd)
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
    unknown = [k for k in sd if not _BLOCK_KEY.match(k) and k not in expected]
    unknown += [k for k in sd if (m := _BLOCK_KEY.match(k)) and not _known_block_key(m.group(2), divided)]
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


# ------------------------------------------------------------------------------------------------------------
# ImageNet ViT -> TimeSformer inflation
# ------------------------------------------------------------------------------------------------------------


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
    sd = {k: _to_tensor(k, v) for k, v in sd.items() if k not in dropped}
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
    img_blocks = {int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k))}
    if img_blocks != set(range(model._config["depth"])):
        raise ConvertError(
            f"blocks.*: image weights have {len(img_blocks)} blocks (ids {sorted(img_blocks)[:3]}...), "
            f"the model {model._config['depth']}"
        )

    new: dict[str, torch.Tensor] = {}
    for name, cur in target.items():
        m = _BLOCK_KEY.match(name)
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


# ------------------------------------------------------------------------------------------------------------
# Label files
# ------------------------------------------------------------------------------------------------------------


def read_label_file(path: str | Path) -> list[str]:
    """Class names from ``id name`` lines (PaddleVideo/Kinetics, 0-based), ``classInd.txt`` (``1 Name``,
    UCF-101, 1-based) or one name per line. Ids must cover 0..n-1 or 1..n exactly once."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvertError(f"{path}: cannot read label file ({exc})") from exc
    from training.data.lists import DatasetError, parse_label_lines

    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ConvertError(f"{path}: empty label file")
    if all(len(p) == 2 and p[0].isdigit() for p in (ln.split(maxsplit=1) for ln in lines)):
        try:
            return parse_label_lines(lines, str(path))
        except DatasetError:
            pass  # ids that do not run 0..N-1 / 1..N: the lines are names that start with a number
    if len(set(lines)) != len(lines):
        dup = next(x for x in lines if lines.count(x) > 1)
        raise ConvertError(f"{path}: duplicate label {dup!r}")
    return lines
