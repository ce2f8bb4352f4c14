"""The native checkpoint: one file with weights, model config, label names and preprocessing spec.

Everything downstream (ONNX export, the Triton repository, clients) reads the frame count, crop size,
mean/std and label names from here and nowhere else. The file is a plain ``torch.save`` of a dict made only
of tensors, numbers, strings, lists and dicts, and is always loaded with ``torch.load(weights_only=True)``
so that opening a checkpoint can never run code.

Layout::

    {
      "format": "timesformer-serving/1",
      "model_config": {...},          # keyword arguments of training.modeling.model.TimeSformer
      "preprocess": {...},            # PreprocessSpec.to_dict()
      "labels": ["name", ...] | None,
      "state_dict": {name: tensor},
      "meta": {...},                  # provenance: source file/format, epoch, metrics ...
      "train_state": {...}            # optional: optimizer/scheduler/RNG for exact resume
    }
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from training.preprocessing.spec import PreprocessSpec

if TYPE_CHECKING:
    from training.modeling.model import TimeSformer

FORMAT = "timesformer-serving/1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


@dataclass
class Checkpoint:
    """In-memory form of a native checkpoint."""

    model_config: dict[str, Any]
    preprocess: PreprocessSpec
    state_dict: dict[str, torch.Tensor]
    labels: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    train_state: dict[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        return int(self.model_config["num_classes"])

    def label_names(self) -> list[str]:
        """Label names, or ``class_<i>`` where the checkpoint carries none."""
        if self.labels:
            return list(self.labels)
        return [f"class_{i}" for i in range(self.num_classes)]

    def build_model(self, **overrides: Any) -> TimeSformer:
        """The model with these weights, in eval mode. ``overrides`` change constructor arguments
        (e.g. ``fused_attn=False`` for export) without touching the stored config."""
        from training.modeling.model import TimeSformer

        model = TimeSformer(**{**self.model_config, **overrides})
        missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint weights do not fit its model config: missing {sorted(missing)[:8]}, "
                f"unexpected {sorted(unexpected)[:8]}"
            )
        return model.eval()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT,
            "model_config": dict(self.model_config),
            "preprocess": self.preprocess.to_dict(),
            "labels": list(self.labels) if self.labels is not None else None,
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()},
            "meta": dict(self.meta),
        }
        if self.train_state is not None:
            d["train_state"] = self.train_state
        return d


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", *, permissions: int | None = None
) -> Iterator[IO[Any]]:
    """Write ``path`` through a temp file in the same folder that is fsynced, then renamed over it (atomic
    on POSIX), or removed on any error: readers, and a crashed run's resume, see the old file or the whole
    new one, never half of one. ``mode`` is ``"wb"`` or ``"w"`` (text, no newline translation);
    ``permissions`` replaces the temp file's private 0600 (e.g. 0o644 for files other users read)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if permissions is not None:
            os.chmod(tmp, permissions)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through :func:`atomic_write`: a crash never leaves a half-written file under
    ``path``."""
    with atomic_write(path) as f:
        torch.save(obj, f)
    return Path(path)


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write ``ckpt`` atomically."""
    return atomic_torch_save(ckpt.to_dict(), path)


def load_checkpoint(path: str | os.PathLike[str], *, with_train_state: bool = False) -> Checkpoint:
    """Read a native checkpoint safely (``weights_only=True``) and check that it is one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/foreign/unsafe files
        raise CheckpointError(
            f"{path}: not a loadable native checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    return checkpoint_from_dict(d, source=str(path), with_train_state=with_train_state)


def checkpoint_from_dict(d: Any, *, source: str = "<dict>", with_train_state: bool = False) -> Checkpoint:
    """Validate the loaded dict's layout; errors name the missing or malformed key."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        fmt = d.get("format") if isinstance(d, dict) else type(d).__name__
        raise CheckpointError(
            f"{source}: not a native checkpoint (format {fmt!r}, expected {FORMAT!r}); "
            "import other formats with `python -m training.convert`"
        )
    for key, typ in (("model_config", dict), ("preprocess", dict), ("state_dict", dict)):
        if not isinstance(d.get(key), typ):
            raise CheckpointError(f"{source}: key {key!r} missing or not a {typ.__name__}")
    bad = [k for k, v in d["state_dict"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: state_dict entries that are not tensors: {bad[:8]}")
    labels = d.get("labels")
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise CheckpointError(f"{source}: 'labels' must be a list of strings")
        n = d["model_config"].get("num_classes")
        if n is not None and len(labels) != int(n):
            raise CheckpointError(f"{source}: {len(labels)} labels for num_classes={n}")
    try:
        spec = PreprocessSpec.from_dict(d["preprocess"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: bad 'preprocess' entry: {exc}") from exc
    return Checkpoint(
        model_config=dict(d["model_config"]),
        preprocess=spec,
        state_dict=dict(d["state_dict"]),
        labels=labels,
        meta=dict(d.get("meta") or {}),
        train_state=d.get("train_state") if with_train_state else None,
    )
