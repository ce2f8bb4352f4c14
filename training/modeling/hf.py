"""Hugging Face ``TimesformerForVideoClassification`` checkpoints (``--format hf``).

What ``save_pretrained`` writes: a folder with ``config.json`` and ``model.safetensors`` (sharded as
``model-0000X-of-0000N.safetensors`` + ``model.safetensors.index.json`` when large; older versions wrote
``pytorch_model.bin``), often next to a ``preprocessor_config.json`` from the image processor. Safetensors
files are read with the ``safetensors`` package (a JSON header and raw tensor bytes: nothing to unpickle);
``pytorch_model.bin`` goes through the same ``torch.load(weights_only=True)`` as every other torch file.

Keys map one to one onto the official layout (``timesformer.`` prefix dropped; ``L`` = ``encoder.layer.{i}``):

* ``embeddings.cls_token`` / ``position_embeddings`` / ``time_embeddings`` -> ``cls_token`` /
  ``pos_embed`` / ``time_embed``; ``embeddings.patch_embeddings.projection`` -> ``patch_embed.proj``
* ``L.attention.attention.qkv`` / ``L.attention.output.dense`` -> ``blocks.{i}.attn.qkv`` / ``attn.proj``
* ``L.temporal_attention.attention.qkv`` / ``.output.dense`` -> ``temporal_attn.qkv`` / ``temporal_attn.proj``
* ``L.temporal_dense`` / ``L.temporal_layernorm`` -> ``temporal_fc`` / ``temporal_norm1``
* ``L.layernorm_before`` / ``L.layernorm_after`` -> ``norm1`` / ``norm2``
* ``L.intermediate.dense`` / ``L.output.dense`` -> ``mlp.fc1`` / ``mlp.fc2``
* ``layernorm`` / ``classifier`` -> ``norm`` / ``head``

Linear weights are (out, in) and qkv packs q|k|v as the official code does, so no tensor changes shape. The
maths is the official model's for ``divided_space_time`` and ``joint_space_time`` (same token order, same
cls handling), so the converted model reproduces transformers' logits. ``space_only`` is refused:
transformers returns one row of logits per frame, ``(B*T, classes)``, where the official model (and this
project's) averages the frames' cls tokens before the final norm and head -- the same weights would give
other numbers, and silently changing what the checkpoint computes is worse than saying so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.modeling.readers import ConvertError, read_checkpoint_file, read_safetensors

HF_CONFIG = "config.json"
HF_PROCESSOR = "preprocessor_config.json"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.time_embeddings": "time_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}
_LAYER_PARTS = {
    "attention.attention.qkv": "attn.qkv",
    "attention.output.dense": "attn.proj",
    "temporal_attention.attention.qkv": "temporal_attn.qkv",
    "temporal_attention.output.dense": "temporal_attn.proj",
    "temporal_dense": "temporal_fc",
    "temporal_layernorm": "temporal_norm1",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_LAYER_KEY = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")


@dataclass
class HFCheckpoint:
    """A Hugging Face TimeSformer as read from disk: raw weights, its ``config.json`` and
    ``preprocessor_config.json`` (None where absent) and the weights file(s) read."""

    state_dict: dict[str, Any]
    config: dict[str, Any] | None
    processor: dict[str, Any] | None
    weight_files: list[Path]


def is_hf_keys(keys: list[str]) -> bool:
    """Whether weight names are transformers' TimeSformer names (with or without the ``timesformer.``
    prefix of the classification model)."""
    return any(
        k.startswith(
            ("timesformer.embeddings.", "timesformer.encoder.layer.", "embeddings.patch_embeddings.")
        )
        for k in keys
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvertError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_weights(path: Path) -> tuple[dict[str, Any], list[Path]]:
    if path.name.endswith(".index.json"):  # sharded: weight_map name -> shard file
        index = _read_json(path)
        shards = index.get("weight_map")
        if not isinstance(shards, dict) or not shards:
            raise ConvertError(f"{path}: no weight_map in the shard index")
        sd: dict[str, Any] = {}
        files = [path.parent / name for name in sorted(set(shards.values()))]
        for f in files:
            if not f.is_file():
                raise ConvertError(f"{f}: shard named by {path.name} is missing")
            sd.update(read_safetensors(f))
        return sd, files
    if path.suffix == ".safetensors":
        return read_safetensors(path), [path]
    obj = read_checkpoint_file(path)  # pytorch_model.bin: torch.load(weights_only=True)
    if not isinstance(obj, dict):
        raise ConvertError(f"{path}: not a state dict (top level is a {type(obj).__name__})")
    return dict(obj), [path]


def read_hf(src: str | Path) -> HFCheckpoint:
    """A ``save_pretrained`` folder, or one weights file in it (its folder's JSON files are read too)."""
    src = Path(src)
    if src.is_dir():
        weights = next((src / n for n in HF_WEIGHTS if (src / n).is_file()), None)
        if weights is None:
            raise ConvertError(f"{src}: a Hugging Face folder needs one of {', '.join(HF_WEIGHTS)}")
        folder = src
    elif src.is_file():
        weights, folder = src, src.parent
    else:
        raise ConvertError(f"{src}: no such file or folder")
    sd, files = _read_weights(weights)
    config = _read_json(folder / HF_CONFIG) if (folder / HF_CONFIG).is_file() else None
    processor = _read_json(folder / HF_PROCESSOR) if (folder / HF_PROCESSOR).is_file() else None
    if config is not None and config.get("model_type", "timesformer") != "timesformer":
        raise ConvertError(f"{folder / HF_CONFIG}: model_type {config['model_type']!r} is not a TimeSformer")
    return HFCheckpoint(sd, config, processor, files)


def hf_to_native(sd: dict[str, Any]) -> dict[str, Any]:
    """transformers' names -> native names (tensors untouched); an unknown key is a ConvertError."""
    out: dict[str, Any] = {}
    for key, value in sd.items():
        k = key[len("timesformer.") :] if key.startswith("timesformer.") else key
        name = _TOP.get(k)
        if name is None and (m := _LAYER_KEY.match(k)):
            i, part, leaf = m.groups()
            if part in _LAYER_PARTS:
                name = f"blocks.{i}.{_LAYER_PARTS[part]}.{leaf}"
        if name is None:
            raise ConvertError(f"{key}: unexpected key in a Hugging Face TimeSformer checkpoint")
        out[name] = value
    return out


def _cfg_value(cfg: dict[str, Any], key: str, kind: type, source: str) -> Any:
    value = cfg[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConvertError(f"{source}: {key} must be {kind.__name__}, got {value!r}")
    return value


def hf_model_options(config: dict[str, Any] | None, source: str) -> dict[str, Any]:
    """From ``config.json``: what the tensors cannot tell (heads, eps), what they must agree with (frames,
    image and patch size, attention type) and label names (``id2label``). Keys absent from the file are
    absent from the result."""
    if config is None:
        return {}
    opts: dict[str, Any] = {}
    attention = config.get("attention_type", "divided_space_time")
    if attention == "space_only":
        raise ConvertError(
            f"{source}: attention_type space_only is refused: transformers' space_only returns one row of "
            "logits per frame (B*T, classes) while the official model averages the frames before its head, "
            "so the converted model would compute something else (official space_only weights convert)"
        )
    if attention not in ("divided_space_time", "joint_space_time"):
        raise ConvertError(f"{source}: unknown attention_type {attention!r}")
    opts["attention_type"] = attention
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise ConvertError(f"{source}: hidden_act {act!r} is not supported (the model uses exact-erf gelu)")
    for key, name, kind in (
        ("num_attention_heads", "num_heads", int),
        ("layer_norm_eps", "ln_eps", float),
        ("num_frames", "num_frames", int),
        ("image_size", "img_size", int),
        ("patch_size", "patch_size", int),
        ("hidden_size", "embed_dim", int),
        ("num_hidden_layers", "depth", int),
        ("qkv_bias", "qkv_bias", bool),
    ):
        if key in config:
            opts[name] = _cfg_value(config, key, kind, source)
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            ids = sorted((int(k), str(v)) for k, v in id2label.items())
        except (TypeError, ValueError) as exc:
            raise ConvertError(f"{source}: id2label keys must be integers, got {list(id2label)[:3]}") from exc
        if [i for i, _ in ids] != list(range(len(ids))):
            raise ConvertError(f"{source}: id2label ids must run 0..{len(ids) - 1}")
        opts["labels"] = [name for _, name in ids]
    return opts


def _size_edge(value: Any, source: str, key: str) -> int | None:
    """An image processor size: an int, or a dict with shortest_edge / height (= width)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, dict):
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
        if "height" in value and value.get("height") == value.get("width"):
            return int(value["height"])
    raise ConvertError(f"{source}: {key} {value!r} is not a shortest edge or a square size")


def hf_preprocess_options(processor: dict[str, Any] | None, source: str) -> dict[str, Any]:
    """From ``preprocessor_config.json``: mean/std on this project's 0..1 scale and the short side and
    crop size. transformers computes ``(rgb * rescale_factor - mean) / std`` (rescale only when
    ``do_rescale``); with r that factor, the spec's ``(rgb/255 - m') / s'`` is the same for
    ``m' = mean / (255 r)`` and ``s' = std / (255 r)``."""
    if processor is None:
        return {}
    opts: dict[str, Any] = {}
    r = float(processor.get("rescale_factor", 1 / 255)) if processor.get("do_rescale", True) else 1.0
    if processor.get("do_normalize", True) and "image_mean" in processor and "image_std" in processor:
        mean, std = processor["image_mean"], processor["image_std"]
        if isinstance(mean, (int, float)):
            mean = [mean] * 3
        if isinstance(std, (int, float)):
            std = [std] * 3
        opts["mean"] = tuple(float(m) / (255.0 * r) for m in mean)
        opts["std"] = tuple(float(s) / (255.0 * r) for s in std)
    elif not processor.get("do_normalize", True):
        opts["mean"], opts["std"] = (0.0, 0.0, 0.0), (1.0 / (255.0 * r),) * 3
    short = _size_edge(processor.get("size"), source, "size")
    crop = (
        _size_edge(processor.get("crop_size"), source, "crop_size")
        if processor.get("do_center_crop", True)
        else None
    )
    if short is not None:
        opts["short_side"] = short
    if crop is not None:
        opts["crop_size"] = crop
    return opts
