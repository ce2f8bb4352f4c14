"""torch.distributed set-up for ``torchrun`` (NCCL on GPUs, gloo on CPUs), a resumable sampler, the loaders
built on it and the DDP helpers of the training loop.

The sampler's order depends only on (seed, epoch), and it can start part-way through an epoch, so a run
resumed mid-epoch sees exactly the samples it had not seen, and N processes together see, step by step,
the same global batches as one process does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from training.data.datasets import SeededDataset


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global rank, world size, local rank and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group ``torchrun`` describes through RANK/WORLD_SIZE/LOCAL_RANK, if any.

    GPUs use NCCL with one device per local rank; CPU processes use gloo. Without those variables this is
    a single process on ``cuda:0`` or the CPU.
    """
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo(device=torch.device("cuda", 0) if cuda else torch.device("cpu"))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def cleanup_distributed() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place; a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields ``(dataset index, epoch)`` pairs for this rank.

    Training (``shuffle=True``): a permutation seeded by ``(seed, epoch)`` truncated to whole global
    batches (``steps_per_epoch * global_batch`` samples, so every optimizer step averages the same number
    of clips), of which rank r takes every ``world_size``-th starting at r. ``set_start(n)`` skips the first
    n samples of this rank's share (the ones a resumed run already trained on).

    Evaluation (``shuffle=False``): indices ``rank, rank + W, ...`` over the whole set, no padding, so the
    summed counts over ranks are exact.

    The epoch travels with every index so that datasets can seed per-sample augmentation from
    (seed, epoch, index), independent of worker processes and of the number of ranks.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        global_batch: int = 1,
        max_steps: int = 0,
    ) -> None:
        if num_samples < 1:
            raise ValueError("the data set is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.shuffle, self.global_batch = seed, shuffle, global_batch
        self.epoch, self.start = 0, 0
        if shuffle:
            steps = num_samples // global_batch
            if steps < 1:
                raise ValueError(
                    f"{num_samples} training samples are fewer than one global batch of {global_batch}"
                )
            self.steps_per_epoch = min(steps, max_steps) if max_steps else steps
            self.total = self.steps_per_epoch * global_batch
        else:
            self.steps_per_epoch = 0
            self.total = num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = int(epoch), 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's share of the current epoch."""
        self.start = int(start)

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g)[: self.total].tolist()
        else:
            order = list(range(self.num_samples))
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self._indices()[self.start :]:
            yield (i, self.epoch)

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.start)


@contextlib.contextmanager
def maybe_no_sync(model: nn.Module, skip_sync: bool) -> Iterator[None]:
    """DDP's ``no_sync`` on accumulation micro-steps that are not the last (saves one all-reduce each)."""
    if skip_sync and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield


def all_reduce_list(values: list[float]) -> list[float]:
    """Sum a list of numbers over all processes."""
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()


def wrap_ddp(model: nn.Module, dist: Any) -> nn.Module:
    """DistributedDataParallel when there are several processes, else the model itself."""
    if not dist.enabled:
        return model
    ids = [dist.local_rank] if dist.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def make_loaders(cfg: dict[str, Any], dist: Any, train_set: Any, val_set: Any) -> tuple[Any, Any, Any]:
    """(resumable train sampler, train loader, val loader) for this rank."""
    tr, seed = cfg["train"], int(cfg["seed"])
    sampler = ResumableSampler(
        len(train_set),
        rank=dist.rank,
        world_size=dist.world_size,
        seed=seed,
        global_batch=tr["global_batch_size"],
        max_steps=tr["max_steps_per_epoch"],
    )
    kw: dict[str, Any] = dict(
        batch_size=tr["batch_size"],
        num_workers=cfg["data"]["num_workers"],
        pin_memory=dist.device.type == "cuda",
    )
    if kw["num_workers"]:
        kw["persistent_workers"] = True  # keeps each worker's decoded-frame cache across epochs
    train_loader = torch.utils.data.DataLoader(SeededDataset(train_set, seed), sampler=sampler, **kw)
    val_sampler = ResumableSampler(len(val_set), rank=dist.rank, world_size=dist.world_size, shuffle=False)
    val_loader = torch.utils.data.DataLoader(SeededDataset(val_set, seed), sampler=val_sampler, **kw)
    return sampler, train_loader, val_loader
