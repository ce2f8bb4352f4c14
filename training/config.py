"""Training/test configuration: YAML files plus PaddleVideo-style ``-o key=value`` overrides.

A config is a nested dict. :data:`DEFAULTS` holds every key the loop reads, so a YAML file only states what
differs from them, and a key that is not in :data:`DEFAULTS` (a typo) is an error that names it. The free-form
sections (``model``, preprocessing specs) are passed through and checked by their consumers.

    cfg = load_config("training/configs/synthetic_tiny.yaml", ["optimizer.lr=0.1", "train.epochs=3"])

Override values are parsed as YAML (``0.1`` -> float, ``[1, 2]`` -> list, ``null`` -> None, ``true`` -> bool).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from training.preprocessing.spec import PreprocessSpec


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key or file."""


# Sections whose contents are not checked against DEFAULTS (their consumers validate them).
FREE_FORM = ("model", "data.train_preprocess", "data.val_preprocess", "data.test_preprocess")

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "output_dir": "runs/default",
    # Factory name in training.modeling.model plus its keyword arguments; `pretrained` is a weights file read
    # through training.convert (ImageNet ViT image weights are inflated to video).
    "model": {"arch": "pptimesformer_base_8x224", "pretrained": None},
    "data": {
        # kinetics | ucf101 | synthetic: what the lists hold, for the reader of the recipe; the data layer
        # reads them all as '<path> [label]' lines (ucf101 paths get data.suffix, e.g. .avi).
        "format": "kinetics",
        "root": "data",
        "train_list": "train.txt",
        "val_list": "val.txt",
        "test_list": None,  # defaults to val_list
        "label_list": None,
        "suffix": "",
        "num_workers": 0,
        "cache": False,  # keep decoded frames in memory (small data sets only)
        # true: a video that fails to decode is logged, replaced by the next one of the list and counted
        # (train_failures / val_failures per epoch); false: it stops the run, naming the file
        "skip_failures": False,
        "train_preprocess": {},
        "val_preprocess": {},
        "test_preprocess": {},
    },
    "train": {
        "epochs": 20,
        "batch_size": 8,  # per device (micro-batch)
        "global_batch_size": 64,  # batch_size * world_size * accumulation steps
        "amp": "auto",  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
        "clip_grad_norm": 40.0,  # 0 or null: no clipping
        "label_smoothing": 0.1,
        "checkpoint_every_steps": 0,  # optimizer steps between mid-epoch last.pt writes; 0: epoch ends only
        "eval_every_epochs": 1,
        "plot_every_epochs": 1,  # curves.png refresh; 0: at the end only (plotting costs ~0.5 s)
        "max_steps_per_epoch": 0,  # 0: the whole epoch (a cap is for smoke runs)
        "compile": False,
    },
    "optimizer": {
        "name": "momentum",  # momentum (SGD with momentum, Paddle's name) | sgd | adamw
        "lr": 2.5e-3,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 7e-5,
        # Parameter names (exact, or ending in ".<name>") that get no weight decay.
        "no_weight_decay": ["cls_token", "pos_embed", "time_embed", "head.bias"],
        "betas": [0.9, 0.999],
    },
    "schedule": {
        "name": "warmup_cosine",  # warmup_cosine | steps | constant
        "warmup_epochs": 2.0,
        "warmup_start_lr": 2.5e-4,
        "min_lr": 0.0,
        "steps": [],  # epochs where the lr is multiplied by `gamma` (name: steps)
        "gamma": 0.1,
    },
    "mix": {
        "prob": 0.0,  # probability that a batch is mixed at all (PP-TimeSformer: 1.0)
        "cutmix_prob": 0.5,  # given mixing, probability of cutmix rather than mixup
        "mixup_alpha": 0.2,
        "cutmix_alpha": 1.0,
        # spatial: one box in every frame, lambda = pixels kept | paddle: PaddleVideo's published cutmix
        # (frames x rows, full width, lambda over H*W), to reproduce its numbers
        "cutmix_mode": "spatial",
    },
    "distill": {
        "teacher": None,  # checkpoint in any format training.convert imports
        "weight": 0.0,
        "temperature": 1.0,
    },
    "swa": {"last_k_epochs": 0},
    "test": {
        "batch_size": 1,
        "num_frames": None,  # override of the test spec's frame count (time_embed is resized)
        "sampling": None,  # uniform | paddle: override of the test spec's sampling
        "crops": None,  # three | center
        "short_side": None,
        "reverse_frames": False,  # feed sampled frames in reverse time order
        "output_dir": None,  # defaults to <checkpoint dir>/test
    },
}


def _merge(base: dict[str, Any], update: Mapping[str, Any], path: str, strict: bool) -> None:
    for key, value in update.items():
        if not isinstance(key, str):
            raise ConfigError(f"config key {key!r} at {path or '<top>'} is not a string")
        full = f"{path}.{key}" if path else key
        free = any(full == f or full.startswith(f + ".") for f in FREE_FORM)
        if strict and not free and key not in base:
            known = ", ".join(sorted(base)) or "none"
            raise ConfigError(f"unknown config key {full!r} (known at this level: {known})")
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value, full, strict and not free)
        else:
            base[key] = copy.deepcopy(dict(value) if isinstance(value, Mapping) else value)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optimizer.lr=0.1"`` -> (``["optimizer", "lr"]``, ``0.1``); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides in order (later wins); unknown keys are errors."""
    for text in overrides:
        parts, value = parse_override(text)
        nested: Any = value
        for p in reversed(parts):
            nested = {p: nested}
        _merge(cfg, nested, "", strict=True)
    return cfg


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """DEFAULTS <- YAML file <- overrides, validated. ``path`` None gives the defaults."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        try:
            _merge(cfg, loaded, "", strict=True)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def _num(cfg: dict[str, Any], dotted: str, *, low: float | None = None, high: float | None = None) -> float:
    node: Any = cfg
    for p in dotted.split("."):
        node = node[p]
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise ConfigError(f"{dotted} must be a number, got {node!r}")
    if (low is not None and node < low) or (high is not None and node > high):
        raise ConfigError(f"{dotted} must be in [{low}, {high}], got {node!r}")
    return float(node)


def validate(cfg: dict[str, Any]) -> None:
    """Check the values the loop relies on, so a bad config fails before any data is read."""
    tr = cfg["train"]
    for key in ("epochs", "batch_size", "global_batch_size"):
        v = tr[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"train.{key} must be a positive integer, got {v!r}")
    if tr["global_batch_size"] % tr["batch_size"]:
        raise ConfigError(
            f"train.global_batch_size ({tr['global_batch_size']}) must be a multiple of "
            f"train.batch_size ({tr['batch_size']})"
        )
    if tr["amp"] not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"train.amp must be auto|bf16|fp16|fp32, got {tr['amp']!r}")
    for key in ("checkpoint_every_steps", "max_steps_per_epoch", "eval_every_epochs", "plot_every_epochs"):
        v = tr[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"train.{key} must be a non-negative integer, got {v!r}")
    if tr["clip_grad_norm"] is not None:
        _num(cfg, "train.clip_grad_norm", low=0)
    _num(cfg, "train.label_smoothing", low=0, high=1)
    if cfg["optimizer"]["name"] not in ("momentum", "sgd", "adamw"):
        raise ConfigError(f"optimizer.name must be momentum|sgd|adamw, got {cfg['optimizer']['name']!r}")
    _num(cfg, "optimizer.lr", low=0)
    _num(cfg, "optimizer.weight_decay", low=0)
    if not isinstance(cfg["optimizer"]["no_weight_decay"], list):
        raise ConfigError("optimizer.no_weight_decay must be a list of parameter names")
    sch = cfg["schedule"]
    if sch["name"] not in ("warmup_cosine", "steps", "constant"):
        raise ConfigError(f"schedule.name must be warmup_cosine|steps|constant, got {sch['name']!r}")
    _num(cfg, "schedule.warmup_epochs", low=0)
    if not isinstance(sch["steps"], list) or not all(isinstance(s, (int, float)) for s in sch["steps"]):
        raise ConfigError(f"schedule.steps must be a list of epochs, got {sch['steps']!r}")
    for key in ("prob", "cutmix_prob"):
        _num(cfg, f"mix.{key}", low=0, high=1)
    for key in ("mixup_alpha", "cutmix_alpha"):
        if _num(cfg, f"mix.{key}", low=0) <= 0 and cfg["mix"]["prob"] > 0:
            raise ConfigError(f"mix.{key} must be positive when mix.prob > 0")
    if not isinstance(cfg["data"]["skip_failures"], bool):
        raise ConfigError(f"data.skip_failures must be true or false, got {cfg['data']['skip_failures']!r}")
    if cfg["mix"]["cutmix_mode"] not in ("spatial", "paddle"):
        raise ConfigError(f"mix.cutmix_mode must be spatial|paddle, got {cfg['mix']['cutmix_mode']!r}")
    _num(cfg, "distill.weight", low=0, high=1)
    if _num(cfg, "distill.temperature", low=0) <= 0:
        raise ConfigError("distill.temperature must be positive")
    if cfg["distill"]["weight"] > 0 and not cfg["distill"]["teacher"]:
        raise ConfigError("distill.weight > 0 needs distill.teacher (a checkpoint path)")
    k = cfg["swa"]["last_k_epochs"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"swa.last_k_epochs must be a non-negative integer, got {k!r}")
    if not isinstance(cfg["model"], dict) or not isinstance(cfg["model"].get("arch"), str):
        raise ConfigError("model.arch must name a factory in training.modeling.model")
    for key in ("train_preprocess", "val_preprocess", "test_preprocess"):
        preprocess_spec(cfg, key)


def preprocess_spec(cfg: dict[str, Any], which: str) -> PreprocessSpec:
    """The :class:`PreprocessSpec` of ``data.<which>`` (train_preprocess / val_preprocess / test_preprocess).

    val and test specs inherit the train spec's frame count, crop size and mean/std unless they set them,
    so a recipe states those once.
    """
    data = cfg["data"]
    base = {
        k: data["train_preprocess"][k]
        for k in ("num_frames", "crop_size", "mean", "std")
        if k in data["train_preprocess"]
    }
    d = data[which] if which == "train_preprocess" else {**base, **data[which]}
    if not isinstance(d, Mapping):
        raise ConfigError(f"data.{which} must be a mapping of PreprocessSpec fields")
    try:
        return PreprocessSpec.from_dict(dict(d))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"data.{which}: {exc}") from exc


def add_config_arguments(parser: argparse.ArgumentParser, *, config_help: str, override_help: str) -> None:
    """The ``-c CONFIG`` and repeatable ``-o KEY=VALUE`` options every config-driven CLI takes."""
    parser.add_argument("-c", "--config", required=True, help=config_help)
    parser.add_argument(
        "-o", "--override", action="append", default=[], metavar="KEY=VALUE", help=override_help
    )


def run_cli(work: Callable[[], object]) -> int:
    """Run a config-driven CLI's ``work`` and turn its errors into one ``error:`` line and an exit code:
    2 for an unusable config or checkpoint, 1 for other bad input (lists, videos), 0 on success."""
    from training.modeling.checkpoint import CheckpointError

    try:
        work()
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # bad videos (VideoDecodeError) and bad lists (DatasetError)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def save_config(cfg: dict[str, Any], path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically: temp file + rename)."""
    from training.modeling.checkpoint import atomic_write

    # 0644: a private temp file's 0600 would hide the config from other readers of the run.
    with atomic_write(path, "w", permissions=0o644) as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return Path(path)
