"""File lists, label lists and the video dataset used for training and evaluation.

File lists (one video per line):

* Kinetics-400 / PaddleVideo: ``class/youtubeid_start_end.mp4 label`` (0-based label; paths may hold
  spaces, the label is the last token).
* UCF-101 as PaddleVideo writes it: ``path/ClassName/v_ClassName_gXX_cYY label`` without extension; pass
  ``suffix=".avi"``.
* UCF-101's own ``trainlist0X.txt`` (``ApplyEyeMakeup/v_..._g08_c01.avi 1``, 1-based classInd id: pass
  ``label_base=1``) and ``testlist0X.txt`` (no label: it is looked up from the class folder in ``labels``).

Label lists: ``id name`` per line -- 0-based (Kinetics ``label.txt``) or UCF-101's 1-based ``classInd.txt``,
which becomes 0-based.

:class:`VideoDataset` decodes with the reference implementation. Randomness comes from an RNG derived
from ``(seed, epoch, index)`` only, so a sample is the same whichever worker loads it and a resumed run
sees the same data. A video that fails to decode raises (naming path and reason), or with
``skip_failures=True`` is logged, recorded in ``failures`` and dropped from the batch by
:func:`collate_skip_failures` -- never silently replaced by another video.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.sampling import sample_indices
from training.spec import PreprocessSpec
from training.video import (
    DecodeLimits,
    VideoDecodeError,
    decode_all_frames,
    decode_clip,
    resize_frames,
    views_from_frames,
)

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A malformed file list or label list; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class VideoEntry:
    """One line of a file list."""

    path: str
    label: int


def read_label_list(path: str | Path) -> list[str]:
    """Class names by 0-based id from ``id name`` lines (0-based, or 1-based like UCF's classInd.txt)."""
    path = Path(path)
    pairs: list[tuple[int, str]] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or not parts[0].lstrip("-").isdigit():
            raise DatasetError(f"{path}:{n}: expected 'id name', got {line!r}")
        pairs.append((int(parts[0]), parts[1].strip()))
    if not pairs:
        raise DatasetError(f"{path}: no labels")
    ids = sorted(i for i, _ in pairs)
    base = ids[0]
    if base not in (0, 1) or ids != list(range(base, base + len(ids))):
        raise DatasetError(f"{path}: ids must run 0..N-1 or 1..N without gaps or repeats, got {ids[:5]}...")
    names = [""] * len(pairs)
    for i, name in pairs:
        names[i - base] = name
    return names


def read_file_list(
    path: str | Path,
    *,
    suffix: str = "",
    label_base: int = 0,
    labels: Sequence[str] | None = None,
) -> list[VideoEntry]:
    """Entries of a Kinetics- or UCF-101-style file list (see the module docstring for the formats).

    ``suffix`` is appended to every path (UCF lists without extension); ``label_base`` is subtracted from
    the labels (1 for UCF's 1-based trainlists); lines without a label take the id of their class folder
    in ``labels``.
    """
    path = Path(path)
    index = {name: i for i, name in enumerate(labels)} if labels is not None else None
    entries: list[VideoEntry] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            rel, label = parts[0], int(parts[1]) - label_base
        else:
            rel = line
            cls = Path(rel).parent.name
            if index is None:
                raise DatasetError(f"{path}:{n}: no label on {line!r} (pass labels= to look it up by class)")
            if cls not in index:
                raise DatasetError(f"{path}:{n}: class folder {cls!r} of {line!r} is not in the label list")
            label = index[cls]
        if label < 0 or (labels is not None and label >= len(labels)):
            raise DatasetError(f"{path}:{n}: label {label + label_base} out of range on {line!r}")
        entries.append(VideoEntry(rel + suffix, label))
    if not entries:
        raise DatasetError(f"{path}: empty file list")
    return entries


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The RNG of one sample: a function of (seed, epoch, index) only -- worker- and resume-proof."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))


class VideoDataset(torch.utils.data.Dataset):
    """Videos of a file list -> ``(views (V, 3, T, H, W) float32 tensor, label)``.

    ``train=True`` uses the RNG of (seed, epoch, index) for sampling, crops and flips (call
    :meth:`set_epoch` every epoch); ``train=False`` is deterministic. ``num_views=1`` with a ``three``-crop
    spec keeps only the centre view. ``cache=True`` keeps every video's decoded frames in memory (uint8,
    already scaled to ``short_side_max or short_side``) so tiny datasets are decoded once, not every
    epoch; each DataLoader worker holds its own cache, so use it with few workers. Cached samples differ
    from uncached ones by the uint8 rounding of that first resize (<= 0.5 level).
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
        self.spec = spec
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.num_views = num_views or spec.num_views
        self.limits = limits
        self.cache = cache
        self.skip_failures = skip_failures
        self.failures: list[tuple[str, str]] = []  # (path, reason), in this process
        self._frames: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws ``__getitem__`` makes."""
        self.epoch = int(epoch)

    def _cached_frames(self, index: int, path: Path) -> np.ndarray:
        frames = self._frames.get(index)
        if frames is None:
            short = self.spec.short_side_max or self.spec.short_side
            every = decode_all_frames(path, limits=self.limits)  # T x (H, W, 3) uint8
            scaled = resize_frames(every, short).round().clamp(0, 255).to(torch.uint8)  # (T, 3, h, w)
            frames = np.ascontiguousarray(scaled.permute(0, 2, 3, 1).numpy())  # (T, h, w, 3)
            self._frames[index] = frames
        return frames

    def _load(self, index: int) -> np.ndarray:
        entry = self.entries[index]
        path = self.root / entry.path
        rng = sample_rng(self.seed, self.epoch, index) if self.train else None
        spec = self.spec
        if self.num_views == 1 and spec.crops == "three":
            spec = spec.replace(crops="center")
        if self.cache:
            frames = self._cached_frames(index, path)
            idx = sample_indices(
                len(frames), 0.0 if spec.sampling != "paddle" else self._fps(path), spec, rng
            )
            return views_from_frames(frames[idx], spec, rng)
        clip = decode_clip(path, spec, limits=self.limits, rng=rng)
        return views_from_frames(clip.frames, spec, rng)

    def _fps(self, path: Path) -> float:
        from training.video import probe_video

        return probe_video(path, limits=self.limits).fps

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | None:
        entry = self.entries[index]
        try:
            views = self._load(index)  # (V, 3, T, H, W)
        except (VideoDecodeError, ValueError) as exc:
            reason = str(exc)
            self.failures.append((entry.path, reason))
            if not self.skip_failures:
                raise VideoDecodeError(f"{entry.path}: {reason}") from exc
            log.warning("skipping video %s: %s", entry.path, reason)
            return None
        return torch.from_numpy(views), entry.label


def collate_skip_failures(
    batch: list[tuple[torch.Tensor, int] | None],
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Stack the samples that decoded; failed ones (``None``, already logged) are left out, not replaced."""
    ok = [b for b in batch if b is not None]
    if not ok:
        return None
    views = torch.stack([v for v, _ in ok])  # (B, V, 3, T, H, W)
    labels = torch.tensor([label for _, label in ok], dtype=torch.long)
    return views, labels
