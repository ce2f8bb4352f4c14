"""The video dataset used for training and evaluation, and the config's datasets.

File and label lists are read by :mod:`training.data.lists`.

:class:`VideoDataset` decodes with the reference implementation. Randomness comes from an RNG derived
from ``(seed, epoch, index)`` only (:func:`sample_rng`), so a sample is the same whichever worker loads it
and a resumed run sees the same data; :class:`SeededDataset` feeds it the ``(index, epoch)`` keys of
:class:`training.loop.distributed.ResumableSampler`. A video that fails to decode raises (naming path and
reason). With ``skip_failures=True`` (config ``data.skip_failures``, off by default) it is logged and
recorded in ``failures``, and :class:`SeededDataset` takes the next video of the list in its place (as
PaddleVideo retries another video), counting the failure in a counter shared with the DataLoader's worker
processes, which the training loop reads and reports once per epoch.

:func:`build_datasets` and :func:`config_entries` read the ``data`` section of a training config
(``training.config``) into these objects.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.data.lists import DatasetError, VideoEntry, read_file_list, read_label_list
from training.preprocessing.sampling import sample_indices
from training.preprocessing.spec import RANDOM_SAMPLING_MODES, PreprocessSpec
from training.preprocessing.decode import (
    DecodeLimits,
    VideoDecodeError,
    decode_all_frames,
    preprocess_video,
    probe_video,
)
from training.preprocessing.transforms import resize_frames, views_from_frames

log = logging.getLogger(__name__)

# Stream tag of per-sample augmentation draws in step_rng; the training loop uses other tags (drop-path
# masks, mixing), so no two kinds of draw ever share a generator.
SAMPLE_STREAM = 2


def step_rng(seed: int, *parts: int) -> np.random.Generator:
    """A generator that is a pure function of (seed, parts): the same numbers after a resume, in any
    process or worker, whatever ran before."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(int(p) for p in parts)])


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The RNG of one sample's augmentation: a function of (seed, epoch, index) only."""
    return step_rng(seed, SAMPLE_STREAM, epoch, index)


def _is_random(spec: PreprocessSpec) -> bool:
    """Whether ``spec`` draws from an RNG at all (segment / paddle_train sampling, random scale/crop/flip)."""
    return spec.crops == "random" or spec.sampling in RANDOM_SAMPLING_MODES


class VideoDataset(torch.utils.data.Dataset):
    """Videos of a file list -> ``(views (V, 3, T, H, W) float32 tensor, label)``.

    ``train=True`` uses the RNG of (seed, epoch, index) for sampling, crops and flips (call
    :meth:`set_epoch` every epoch, or index through :class:`SeededDataset`); ``train=False`` is
    deterministic. ``num_views=1`` with a ``three``-crop spec keeps only the centre view;
    ``single_view=True`` returns that one view as ``(3, T, H, W)``, the training loop's clip layout.
    ``reverse=True`` feeds the sampled frames in reverse time order (a check that the model uses order).

    ``cache=True`` decodes each video once and keeps it in memory, for small data sets; each DataLoader
    worker holds its own cache, so use it with few (persistent) workers. Deterministic samples are kept as
    the finished views, bit-identical to the uncached ones. For random samples every decoded frame is kept
    (uint8, downscaled to ``short_side_max or short_side`` when larger) -- what any random segment, scale
    and crop needs -- and each draw samples, scales and crops from those, in the same order of draws as
    the uncached path; they differ from uncached samples by the uint8 rounding of that first resize
    (<= 0.5 level).
    """

    def __init__(
        self,
        entries: Sequence[VideoEntry],
        root: str | Path,
        spec: PreprocessSpec,
        *,
        train: bool,
        seed: int = 0,
        num_views: int | None = None,
        single_view: bool = False,
        reverse: bool = False,
        limits: DecodeLimits | None = None,
        cache: bool = False,
        skip_failures: bool = False,
    ) -> None:
        if num_views is not None and num_views not in (1, spec.num_views):
            raise ValueError(
                f"num_views must be 1 or {spec.num_views} for crops={spec.crops!r}, got {num_views}"
            )
        self.entries = list(entries)
        self.root = Path(root)
        self.num_views = num_views or spec.num_views
        if single_view and self.num_views != 1:
            raise ValueError(f"single_view needs one view, but crops={spec.crops!r} gives {self.num_views}")
        # One view of a three-crop spec is its centre crop.
        self.spec = spec.replace(crops="center") if self.num_views == 1 and spec.crops == "three" else spec
        self.train = train
        self.seed = int(seed)
        self.epoch = 0
        self.single_view = single_view
        self.reverse = reverse
        self.limits = limits
        self.cache = cache
        self.skip_failures = skip_failures
        self.failures: list[tuple[str, str]] = []  # (path, reason), in this process
        self._frames: dict[int, tuple[np.ndarray, float]] = {}  # random draws: (N, h, w, 3) uint8, fps
        self._views: dict[int, np.ndarray] = {}  # deterministic samples: finished (V, 3, T, H, W)

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws ``__getitem__`` makes."""
        self.epoch = int(epoch)

    def _cached_frames(self, index: int, path: Path) -> tuple[np.ndarray, float]:
        if index not in self._frames:
            every = decode_all_frames(path, limits=self.limits)  # N x (H, W, 3) uint8
            short = self.spec.short_side_max or self.spec.short_side
            if min(every[0].shape[:2]) > short:  # never upscale: views_from_frames scales anyway
                scaled = np.clip(np.rint(resize_frames(every, short)), 0, 255).astype(np.uint8)  # (N, 3, h, w)
                every = list(scaled.transpose(0, 2, 3, 1))
            fps = float(probe_video(path, limits=self.limits).fps)
            self._frames[index] = (np.stack(every), fps)  # (N, h, w, 3)
        return self._frames[index]

    def _load(self, index: int, rng: np.random.Generator | None) -> np.ndarray:
        path = self.root / self.entries[index].path
        if not self.cache:
            return preprocess_video(path, self.spec, limits=self.limits, rng=rng).views
        if rng is None:
            if index not in self._views:
                self._views[index] = preprocess_video(path, self.spec, limits=self.limits).views
            return self._views[index]
        frames, fps = self._cached_frames(index, path)
        idx = sample_indices(len(frames), fps, self.spec, rng)  # the same draws, in the same order,
        return views_from_frames(frames[idx], self.spec, rng)  # as preprocess_video makes

    def get(self, index: int, rng: np.random.Generator | None = None) -> tuple[torch.Tensor, int] | None:
        """Sample ``index`` with the random draws of ``rng`` (ignored unless ``train``); ``None`` for a
        failed video when ``skip_failures``."""
        entry = self.entries[index]
        if not self.train or not _is_random(self.spec):
            rng = None
        try:
            views = torch.from_numpy(self._load(index, rng))  # (V, 3, T, H, W)
        except (VideoDecodeError, ValueError) as exc:
            reason = str(exc)
            self.failures.append((entry.path, reason))
            if not self.skip_failures:
                raise VideoDecodeError(f"{entry.path}: {reason}") from exc
            log.warning("skipping video %s: %s", entry.path, reason)
            return None
        if self.reverse:
            views = views.flip(2)  # time reversed, same frames
        return (views[0] if self.single_view else views), entry.label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        return self.get(index, sample_rng(self.seed, self.epoch, index) if self.train else None)


# How many videos in a row may fail before a skipping dataset gives up (a broken data root, not a few
# corrupt files).
MAX_CONSECUTIVE_FAILURES = 16


class SeededDataset(torch.utils.data.Dataset):
    """Turns ``(index, epoch)`` keys from :class:`training.loop.distributed.ResumableSampler` into samples whose
    random augmentation comes from :func:`sample_rng` (seed, epoch, index): reproducible across resumes,
    worker counts and world sizes. The base dataset must offer ``get(index, rng) -> (clip, label)`` (as
    :class:`VideoDataset` does); one without random augmentation may instead be indexable.

    A base that skips failures returns None for a video that did not decode; the sample of key
    ``(index, epoch)`` is then the next index's (with that index's draws), and :meth:`take_failures`
    counts it -- the counter is shared memory, so failures in DataLoader workers are counted too."""

    def __init__(self, base: Any, seed: int) -> None:
        import multiprocessing

        self.base, self.seed = base, int(seed)
        self._failed = multiprocessing.get_context().Value("q", 0)  # failures since take_failures()

    def __len__(self) -> int:
        return len(self.base)

    def take_failures(self) -> int:
        """Failed videos replaced since the last call (in every worker process); resets the count."""
        with self._failed.get_lock():
            n, self._failed.value = int(self._failed.value), 0
        return n

    def _sample(self, index: int, epoch: int) -> tuple[torch.Tensor, int] | None:
        if hasattr(self.base, "get"):
            return self.base.get(index, rng=sample_rng(self.seed, epoch, index))
        return self.base[index]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = key
        sample = self._sample(index, epoch)
        tried = 0
        while sample is None:  # only a base that skips failures returns None; it has logged the reason
            tried += 1
            with self._failed.get_lock():
                self._failed.value += 1
            if tried >= min(MAX_CONSECUTIVE_FAILURES, len(self.base)):
                raise VideoDecodeError(
                    f"{tried} videos in a row failed to load from sample {index} on: is data.root right?"
                )
            sample = self._sample((index + tried) % len(self.base), epoch)
        clip, label = sample
        return torch.as_tensor(clip), int(label)


# ---- the data section of a training config ---------------------------------------------------------


def _config_file(cfg: dict[str, Any], key: str) -> Path:
    """``data.<key>``: absolute, or relative to ``data.root``; named in the error when missing."""
    name = Path(cfg["data"][key])
    path = name if name.is_absolute() else Path(cfg["data"]["root"]) / name
    if not path.is_file():
        raise DatasetError(f"data.{key}: {path}: no such file")
    return path


def config_labels(cfg: dict[str, Any]) -> list[str] | None:
    """Class names from ``data.label_list``, or None when the config names no label list."""
    return read_label_list(_config_file(cfg, "label_list")) if cfg["data"]["label_list"] else None


def config_entries(cfg: dict[str, Any], split: str, labels: Sequence[str] | None = None) -> list[VideoEntry]:
    """The file list of ``split`` (train, val or test; test falls back to the val list), with
    ``data.suffix`` appended to each path; paths are relative to ``data.root``."""
    data = cfg["data"]
    if split == "test":
        key = "test_list" if data["test_list"] else "val_list"
    else:
        key = f"{split}_list"
    return read_file_list(_config_file(cfg, key), suffix=data["suffix"] or "", labels=labels)


def build_datasets(cfg: dict[str, Any]) -> tuple[VideoDataset, VideoDataset, list[str]]:
    """(train, val, label names) of the ``data`` section: one ``(3, T, H, W)`` clip per sample, train
    with the random draws of ``train_preprocess``, val the deterministic ``val_preprocess`` view.
    Without ``data.label_list`` the classes are named ``class_<i>`` for as many as the lists show."""
    from training.config import preprocess_spec

    labels = config_labels(cfg)
    train_e, val_e = config_entries(cfg, "train", labels), config_entries(cfg, "val", labels)
    if labels is None:
        labels = [f"class_{i}" for i in range(max(e.label for e in train_e + val_e) + 1)]
    val_spec = preprocess_spec(cfg, "val_preprocess")
    if val_spec.num_views != 1:
        raise DatasetError(
            "data.val_preprocess must give one view (crops: center); three-crop testing is training.test"
        )
    data = cfg["data"]
    kw: dict[str, Any] = dict(
        single_view=True, cache=bool(data["cache"]), skip_failures=bool(data["skip_failures"])
    )
    train_set = VideoDataset(
        train_e, data["root"], preprocess_spec(cfg, "train_preprocess"), train=True, seed=cfg["seed"], **kw
    )
    return train_set, VideoDataset(val_e, data["root"], val_spec, train=False, **kw), labels
