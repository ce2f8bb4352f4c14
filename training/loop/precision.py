"""Mixed precision for the loops: which autocast dtype a device gets, and the context that applies it."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp``: None (fp32) on the CPU under ``auto`` -- bf16 matmuls are far
    slower than fp32 on CPUs without AMX -- and bf16 (or fp16 where bf16 is unsupported) on GPUs."""
    if amp == "fp32":
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
