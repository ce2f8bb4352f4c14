"""The one preprocessing spec: decode -> sample -> resize -> crop -> normalize.

It is stored inside every checkpoint and every generated model repository, so the frame count, crop size
and mean/std a model was trained with travel with its weights and are never re-declared downstream. The
reference (PyAV) and DALI implementations both read it.

Output layout is always ``(V, 3, T, H, W)`` float32 RGB, V = number of views (3 for ``crops="three"``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SAMPLING_MODES = ("uniform", "paddle", "paddle_train", "segment")
# Modes that draw from an RNG when one is given (training); without one they fall back to a fixed choice.
RANDOM_SAMPLING_MODES = ("paddle_train", "segment")
CROP_MODES = ("three", "center", "random")

# PaddleVideo's PP-TimeSformer feeds RGB/255 unnormalised; the original TimeSformer uses 0.45/0.225.
PADDLE_MEAN = (0.0, 0.0, 0.0)
PADDLE_STD = (1.0, 1.0, 1.0)
TIMESFORMER_MEAN = (0.45, 0.45, 0.45)
TIMESFORMER_STD = (0.225, 0.225, 0.225)


def _triple(name: str, value: Any) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be three numbers (R G B), got {value!r}") from exc
    if len(out) != 3:
        raise ValueError(f"{name} must be three numbers (R G B), got {len(out)}: {value!r}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class PreprocessSpec:
    """How a video becomes the model's input tensor.

    num_frames: frames sampled per view (T).
    sampling: ``uniform`` (linspace first..last frame), ``paddle`` (PaddleVideo's test-time window of
        ``32*num_frames/30*fps`` frames from the start), ``paddle_train`` (PaddleVideo's training rule: the
        same window length at a random start, for training) or ``segment`` (TSN-style random index per
        segment, for training).
    short_side: the frame's short side is scaled to this (bilinear, no antialias). ``short_side_max``, when
        set, makes it a random integer in ``[short_side, short_side_max]`` per clip (training: 256..320).
    crop_size: square crop edge (H = W).
    crops: ``three`` (UniformCrop: left/top, right/bottom, centre -- in that order), ``center``, or
        ``random`` (training; with a horizontal flip at probability 0.5 when ``flip``).
    mean, std: per channel, on the 0..1 scale; output = (rgb/255 - mean) / std.
    """

    num_frames: int = 8
    sampling: str = "uniform"
    short_side: int = 224
    short_side_max: int | None = None
    crop_size: int = 224
    crops: str = "three"
    flip: bool = False
    mean: tuple[float, float, float] = field(default=PADDLE_MEAN)
    std: tuple[float, float, float] = field(default=PADDLE_STD)

    def __post_init__(self) -> None:
        # Normalise lists (from YAML/JSON) to tuples so the spec stays hashable and comparable.
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std))
        if not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"num_frames must be a positive integer, got {self.num_frames!r}")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {self.sampling!r}")
        if self.crops not in CROP_MODES:
            raise ValueError(f"crops must be one of {CROP_MODES}, got {self.crops!r}")
        if not isinstance(self.crop_size, int) or self.crop_size < 1:
            raise ValueError(f"crop_size must be a positive integer, got {self.crop_size!r}")
        if not isinstance(self.short_side, int) or self.short_side < 1:
            raise ValueError(f"short_side must be a positive integer, got {self.short_side!r}")
        if self.short_side_max is not None and self.short_side_max < self.short_side:
            raise ValueError(
                f"short_side_max ({self.short_side_max}) must be >= short_side ({self.short_side})"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    @property
    def num_views(self) -> int:
        """V in the output layout."""
        return 3 if self.crops == "three" else 1

    @property
    def output_shape(self) -> tuple[int, int, int, int, int]:
        """``(V, 3, T, H, W)``."""
        return (self.num_views, 3, self.num_frames, self.crop_size, self.crop_size)

    def replace(self, **changes: Any) -> PreprocessSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML/``torch.save(weights_only)``-safe form."""
        d = dataclasses.asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        """Inverse of :meth:`to_dict`; unknown keys are an error that names them."""
        if not isinstance(d, dict):
            raise ValueError(f"preprocessing spec must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing spec keys: {unknown} (known: {sorted(known)})")
        return cls(**d)
