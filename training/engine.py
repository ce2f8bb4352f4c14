"""The pieces the training and test loops are made of, kept out of ``train.py`` so that it reads on one
screen: model/teacher construction, AMP, deterministic per-step seeding, resume state, evaluation,
the CSV log and the curve plots. Lists and datasets live in :mod:`training.data`."""

from __future__ import annotations

import contextlib
import csv
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.checkpoint import Checkpoint, CheckpointError, atomic_write, load_checkpoint
from training.data import SeededDataset, step_rng


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# ---- models -------------------------------------------------------------------------------------------


def build_model(model_cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """``training.model.<arch>(num_classes=..., **kwargs)`` from the ``model`` config section, then the
    ``pretrained`` weights (any format training.convert imports; ImageNet ViT image weights are inflated),
    then the optional from-scratch inits: ``time_embed_init`` ``normal`` (truncated normal of std
    ``time_embed_init_std``) or ``sincos`` (sinusoids of amplitude ``time_embed_init_scale``), and
    ``pos_embed_init_scale`` (2-D sinusoids of that amplitude over the patch grid)."""
    from training import model as model_lib

    kwargs = {k: v for k, v in model_cfg.items() if k not in ("arch", "pretrained", *INIT_KEYS)}
    kwargs["num_classes"] = num_classes
    factory = getattr(model_lib, model_cfg["arch"], None)
    if not callable(factory) or model_cfg["arch"].startswith("_"):
        raise ValueError(f"model.arch {model_cfg['arch']!r} is not a factory in training.model")
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ValueError(f"model section does not fit {model_cfg['arch']}: {exc}") from exc
    if model_cfg.get("pretrained"):
        load_pretrained(model, model_cfg["pretrained"])
    std = model_cfg.get("time_embed_init_std")
    kind = model_cfg.get("time_embed_init", "normal")
    if kind not in ("normal", "sincos"):
        raise ValueError(f"model.time_embed_init must be normal or sincos, got {kind!r}")
    with torch.no_grad():
        if hasattr(model, "time_embed") and kind == "sincos":
            # Smooth, ordered codes of frame position: from scratch, direction of motion is learnt only
            # when the time code is strong next to the patch features (a weak random one leaves the
            # model reading the axis of motion but not its direction).
            t, c = model.time_embed.shape[1:]
            model.time_embed.copy_(float(model_cfg.get("time_embed_init_scale", 1.0)) * sincos_1d(t, c)[None])
        elif std and hasattr(model, "time_embed"):
            # The official init leaves time_embed at zero; with it the network is exactly invariant to
            # reversing time, so from scratch the gradient towards direction of motion starts at zero.
            nn.init.trunc_normal_(model.time_embed, std=float(std), a=-2 * float(std), b=2 * float(std))
        scale = model_cfg.get("pos_embed_init_scale")
        if scale and hasattr(model, "pos_embed"):
            g = model.patch_embed.grid_size
            c = model.pos_embed.shape[-1]
            ys, xs = sincos_1d(g, c // 2), sincos_1d(g, c - c // 2)  # (g, c/2) each
            grid = torch.cat([ys[:, None].expand(g, g, -1), xs[None].expand(g, g, -1)], dim=-1)  # (g, g, c)
            model.pos_embed[0, 1:].copy_(float(scale) * grid.reshape(g * g, c))  # the cls slot keeps its init
    return model


INIT_KEYS = ("time_embed_init", "time_embed_init_std", "time_embed_init_scale", "pos_embed_init_scale")


def sincos_1d(n: int, dim: int) -> torch.Tensor:
    """(n, dim) sinusoids of positions 0..n-1 with angular frequencies from pi down to pi/n (geometric),
    so that every channel varies over a range this short -- the 10000-based ViT code barely changes
    over 8 frames."""
    half = dim // 2
    omega = math.pi * (1.0 / n) ** (torch.arange(half, dtype=torch.float32) / max(half - 1, 1))  # (half,)
    angle = torch.arange(n, dtype=torch.float32)[:, None] * omega  # (n, half)
    out = torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)  # (n, 2*half)
    return torch.cat([out, torch.zeros(n, dim - 2 * half)], dim=1)  # (n, dim)


def load_any_checkpoint(path: str | Path) -> Checkpoint:
    """A native checkpoint, or one in another format (official .pyth, PaddleVideo .pdparams, mmaction2)
    imported through ``training.convert.convert_checkpoint``."""
    path = Path(path)
    try:
        return load_checkpoint(path)
    except CheckpointError as native_error:
        if not path.is_file():
            raise
        from training.convert import convert_checkpoint

        try:
            return convert_checkpoint(path)
        except (ValueError, OSError) as exc:
            raise CheckpointError(
                f"{path}: neither a native checkpoint nor an importable one ({exc})"
            ) from native_error


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Initialise ``model`` in place from weights in any importable format.

    ImageNet ViT image weights are inflated as the official ``load_pretrained`` does (temporal attention
    copied from spatial, ``temporal_fc`` and ``time_embed`` zero, ``pos_embed`` resized when the grid
    differs); video weights load by name with ``time_embed`` resized to the model's frame count. A head of
    another class count is left at its fresh init (fine-tuning); any other mismatch is an error.
    """
    from training.formats import detect_format, inflate_image_weights, read_checkpoint_file, unwrap_state_dict

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model.pretrained: {path}: no such file")
    try:
        native = load_checkpoint(path).state_dict
    except CheckpointError:
        raw, container = unwrap_state_dict(read_checkpoint_file(path), str(path))
        if detect_format(raw, container) == "vit-image":
            report = inflate_image_weights(raw, model)
            print(f"pretrained: {path}: {report.summary()}", flush=True)
            return
        native = load_any_checkpoint(path).state_dict
    from training.formats import resize_time_embed_for

    own = model.state_dict()
    if "time_embed" in native and "time_embed" in own:
        native = resize_time_embed_for(dict(native), own["time_embed"].shape[1])
    keep = {k: v for k, v in native.items() if not (k.startswith("head.") and v.shape != own[k].shape)}
    bad = [k for k, v in keep.items() if k not in own or v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{path}: pretrained weights do not fit the model: {bad[:5]}")
    missing, _ = model.load_state_dict(keep, strict=False)
    lacking = [k for k in missing if not k.startswith("head.")]
    if lacking:
        raise CheckpointError(f"{path}: pretrained weights lack {lacking[:5]}")


def load_teacher(path: str | Path, device: torch.device) -> nn.Module:
    """A frozen teacher in eval mode from any importable checkpoint."""
    teacher = load_any_checkpoint(path).build_model().to(device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


# ---- precision ----------------------------------------------------------------------------------------


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


# ---- determinism --------------------------------------------------------------------------------------


def seed_step(seed: int, *parts: int) -> None:
    """Re-seed torch's global generator (drop-path masks, dropout) from (seed, parts)."""
    torch.manual_seed(int(step_rng(seed, *parts).integers(2**62)))


def rng_states() -> dict[str, Any]:
    """torch/numpy/python RNG states in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- evaluation ---------------------------------------------------------------------------------------


def topk_correct(probs: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many of the (B, K) rows have their label among the top-k, for each k (k capped at K)."""
    kmax = min(max(ks), probs.shape[1])
    top = probs.topk(kmax, dim=1).indices  # (B, kmax)
    hits = top == labels[:, None]  # (B, kmax)
    return [int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    desc: str = "val",
    show: bool = True,
) -> dict[str, float]:
    """Single-view accuracy: loss, top-1 and top-5 (in %), counts summed over all processes."""
    from tqdm import tqdm

    from training.distributed import all_reduce_sum

    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # loss*n, top1, top5, n
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not show):
        x, y = x.to(device, non_blocking=True), y.to(device)  # (B, 3, T, H, W), (B,)
        with autocast(device, dtype):
            logits = model(x)  # (B, K)
        logits = logits.float()
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        t1, t5 = topk_correct(logits, y)
        sums += torch.tensor([float(loss), t1, t5, y.shape[0]], dtype=torch.float64)
    all_reduce_sum(sums)
    n = max(float(sums[3]), 1.0)
    return {
        "val_loss": float(sums[0]) / n,
        "val_top1": 100 * float(sums[1]) / n,
        "val_top5": 100 * float(sums[2]) / n,
        "val_count": int(sums[3]),
    }


# ---- logs ---------------------------------------------------------------------------------------------


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Rewrite the whole log from ``rows`` (atomically): after a resume it holds exactly the epochs of the
    resumed history, never a duplicate of the ones the killed run had already logged."""
    path = Path(path)
    if not rows:
        return
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with atomic_write(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def plot_curves(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Loss and accuracy per epoch as a PNG (two panels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    if "val_loss" in rows[0]:
        a1.plot(ep, [r.get("val_loss", np.nan) for r in rows], "s-", label="val")
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    a1.legend()
    a1.grid(alpha=0.3)
    a2.plot(ep, [r["train_top1"] for r in rows], "o-", label="train top-1 (mixed batches)")
    for key in ("val_top1", "val_top5"):
        if key in rows[0]:
            a2.plot(ep, [r.get(key, np.nan) for r in rows], "s-", label=key.replace("_", " "))
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy (%)")
    a2.set_ylim(0, 100)
    a2.legend()
    a2.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=100)
    finally:
        plt.close(fig)


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
    from training.distributed import all_reduce_sum

    return all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()


# ---- run state ----------------------------------------------------------------------------------------


def new_run_state() -> dict[str, Any]:
    """What, besides weights/optimizer/RNG, a resumed run needs: where it is and what it has logged."""
    return {
        "epoch": 0,
        "step_in_epoch": 0,
        "global_step": 0,
        "best_top1": -1.0,
        "history": [],
        "epoch_sums": [0.0, 0.0, 0.0],
    }


def make_loaders(cfg: dict[str, Any], dist: Any, train_set: Any, val_set: Any) -> tuple[Any, Any, Any]:
    """(resumable train sampler, train loader, val loader) for this rank."""
    from training.distributed import ResumableSampler

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


def wrap_ddp(model: nn.Module, dist: Any) -> nn.Module:
    """DistributedDataParallel when there are several processes, else the model itself."""
    if not dist.enabled:
        return model
    ids = [dist.local_rank] if dist.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def save_run_checkpoint(
    path: Path,
    model: nn.Module,
    cfg: dict[str, Any],
    labels: list[str],
    st: dict[str, Any],
    metrics: dict[str, Any],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: Any = None,
) -> None:
    """A native checkpoint (atomic write) carrying the TEST-time preprocessing spec -- what serving must
    use -- and, when ``optimizer`` is given, the train_state for an exact resume."""
    from training.checkpoint import save_checkpoint
    from training.config import preprocess_spec

    ts = None
    if optimizer is not None:
        ts = {
            **st,
            "optimizer": optimizer.state_dict(),
            "scheduler": {"global_step": st["global_step"]},
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng": rng_states(),
            "sampler": {
                "epoch": st["epoch"],
                "step_in_epoch": st["step_in_epoch"],
                "consumed_global": st["step_in_epoch"] * cfg["train"]["global_batch_size"],
            },
        }
    m = unwrap(model)
    meta = {
        "epoch": st["epoch"],
        "step_in_epoch": st["step_in_epoch"],
        "global_step": st["global_step"],
        "metrics": metrics,
        "config": str(Path(cfg["output_dir"]) / "config.yaml"),
    }
    ckpt = Checkpoint(
        m.model_config, preprocess_spec(cfg, "test_preprocess"), m.state_dict(), list(labels), meta, ts
    )
    save_checkpoint(ckpt, path)


def restore_run(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any
) -> dict[str, Any]:
    """Load weights, optimizer, scaler and RNG states from ``last.pt``; returns the run state."""
    ck = load_checkpoint(path, with_train_state=True)
    ts = ck.train_state
    if not ts:
        raise CheckpointError(f"{path}: has no train_state to resume from")
    unwrap(model).load_state_dict(ck.state_dict)
    optimizer.load_state_dict(ts["optimizer"])
    if ts.get("scaler"):
        scaler.load_state_dict(ts["scaler"])
    set_rng_states(ts["rng"])
    return {k: ts[k] for k in new_run_state()}
