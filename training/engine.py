"""The pieces the training and test loops are made of, kept out of ``train.py`` so that it reads on one
screen: model/teacher construction, AMP, deterministic per-step seeding, resume state, evaluation,
the CSV log and the curve plots."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.checkpoint import Checkpoint, CheckpointError, load_checkpoint


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
    then, if ``time_embed_init_std`` is set, a truncated-normal ``time_embed``."""
    from training import model as model_lib

    kwargs = {k: v for k, v in model_cfg.items() if k not in ("arch", "pretrained", "time_embed_init_std")}
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
    if std and hasattr(model, "time_embed"):
        # The official init leaves time_embed at zero; without it temporal attention cannot tell frame
        # order, and from scratch (no image weights) the symmetric start learns direction very slowly.
        with torch.no_grad():
            nn.init.trunc_normal_(model.time_embed, std=float(std), a=-2 * float(std), b=2 * float(std))
    return model


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


def step_rng(seed: int, *parts: int) -> np.random.Generator:
    """A generator that is a pure function of (seed, parts): the same numbers after a resume, in any
    process, whatever ran before."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *(int(p) for p in parts)])


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


# ---- data adapters ------------------------------------------------------------------------------------


class SeededDataset(torch.utils.data.Dataset):
    """Turns ``(index, epoch)`` keys from :class:`training.distributed.ResumableSampler` into samples whose
    random augmentation is seeded from (seed, epoch, index): reproducible across resumes, worker counts
    and world sizes. The base dataset must offer ``get(index, rng) -> (clip, label)``; one without random
    augmentation may instead be indexable (``base[index]``)."""

    def __init__(self, base: Any, seed: int) -> None:
        self.base, self.seed = base, int(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = key
        if hasattr(self.base, "get"):
            clip, label = self.base.get(index, rng=step_rng(self.seed, 2, epoch, index))
        else:
            clip, label = self.base[index]
        return torch.as_tensor(clip), int(label)


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


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
    fd, tmp = tempfile.mkstemp(prefix=".curves.", suffix=".png", dir=Path(path).parent)
    os.close(fd)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


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


# ---- data ---------------------------------------------------------------------------------------------


def read_list(cfg: dict[str, Any], split: str) -> list[tuple[Path, int]]:
    """``data.<split>_list`` under ``data.root`` as (video path, label) pairs.

    Kinetics / synthetic lines: ``relative/path.mp4 label``; UCF-101 lines: ``path/without/extension
    label`` with ``data.suffix`` (``.avi``) appended. Paths are relative to ``data.root``.
    """
    data = cfg["data"]
    name = data["test_list"] or data["val_list"] if split == "test" else data[f"{split}_list"]
    root = Path(data["root"])
    path = Path(name) if Path(name).is_absolute() else root / name
    if not path.is_file():
        raise ValueError(f"data.{split}_list: {path}: no such file")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise ValueError(f"{path}:{n}: expected '<video> <label>', got {line!r}")
        out.append((root / (parts[0] + (data["suffix"] or "")), int(parts[1])))
    if not out:
        raise ValueError(f"{path}: the list is empty")
    return out


def read_labels(cfg: dict[str, Any], samples: list[tuple[Path, int]]) -> list[str]:
    """Class names from ``data.label_list`` (``id name`` per line, e.g. UCF-101's classInd.txt with ids
    from 1 is rebased to 0), or ``class_<i>`` for as many classes as the labels show."""
    ll = cfg["data"]["label_list"]
    if not ll:
        return [f"class_{i}" for i in range(max(lbl for _, lbl in samples) + 1)]
    path = Path(ll) if Path(ll).is_absolute() else Path(cfg["data"]["root"]) / ll
    if not path.is_file():
        raise ValueError(f"data.label_list: {path}: no such file")
    rows = [line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip()]
    if not rows or any(len(r) != 2 or not r[0].isdigit() for r in rows):
        raise ValueError(f"{path}: expected '<id> <name>' lines")
    ids = [int(r[0]) for r in rows]
    base = min(ids)
    if sorted(ids) != list(range(base, base + len(ids))) or base not in (0, 1):
        raise ValueError(f"{path}: class ids must be consecutive from 0 (or 1)")
    names = [""] * len(rows)
    for i, (_, name) in zip(ids, rows):
        names[i - base] = name.strip()
    return names


class VideoClips:
    """Videos of a list, each read as ONE view of ``spec`` (training: random segment sampling, scale and
    crop; validation: the deterministic centre view).

    ``cache=True`` decodes each video once and keeps it in memory: deterministic clips (validation) are
    kept as the finished tensor, bit-identical to the uncached path; for random clips (training) every
    decoded frame is kept, downscaled to the spec's largest short side (``short_side_max``), and each epoch
    samples, scales and crops from those -- a second, small resize that only training sees. Meant for
    small data sets (the synthetic demo: about 60 MB for 320 clips).
    """

    def __init__(self, samples: list[tuple[Path, int]], spec: Any, cache: bool = False) -> None:
        self.samples, self.spec, self.cache = samples, spec, cache
        self.random = spec.crops == "random" or spec.sampling == "segment"
        self._store: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _frames(self, index: int) -> tuple[np.ndarray, float]:
        from training.video import decode_all_frames, probe_video, resize_frames

        path = self.samples[index][0]
        frames = decode_all_frames(path)
        if not frames:
            raise ValueError(f"{path}: no frames decoded")
        short = self.spec.short_side_max or self.spec.short_side
        if min(frames[0].shape[:2]) > short:
            t = resize_frames(frames, short)  # (N, 3, h, w) float 0..255
            frames = list(t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
        return np.stack(frames), float(probe_video(path).fps)  # (N, h, w, 3) uint8

    def get(self, index: int, rng: np.random.Generator | None = None) -> tuple[torch.Tensor, int]:
        from training.sampling import sample_indices
        from training.video import preprocess_video, views_from_frames

        label = self.samples[index][1]
        if not self.random:
            rng = None
        if self.cache and not self.random:
            if index not in self._store:
                self._store[index] = torch.from_numpy(
                    preprocess_video(self.samples[index][0], self.spec).views[0]
                )
            return self._store[index], label
        if self.cache:
            if index not in self._store:
                self._store[index] = self._frames(index)
            frames, fps = self._store[index]
            idx = sample_indices(len(frames), fps, self.spec, rng)  # the same draws, in the same order,
            views = views_from_frames(frames[idx], self.spec, rng)  # as preprocess_video makes
            return torch.from_numpy(views[0]), label
        views = preprocess_video(self.samples[index][0], self.spec, rng=rng).views  # (1, 3, T, H, W)
        return torch.from_numpy(views[0]), label


def build_datasets(cfg: dict[str, Any]) -> tuple[VideoClips, VideoClips, list[str]]:
    """(train, val, label names) from the ``data`` section."""
    from training.config import preprocess_spec

    train_s, val_s = read_list(cfg, "train"), read_list(cfg, "val")
    labels = read_labels(cfg, train_s + val_s)
    bad = [lbl for _, lbl in train_s + val_s if lbl >= len(labels)]
    if bad:
        raise ValueError(f"label {max(bad)} in the lists but only {len(labels)} classes in the label list")
    val_spec = preprocess_spec(cfg, "val_preprocess")
    if val_spec.num_views != 1:
        raise ValueError(
            "data.val_preprocess must give one view (crops: center); three-crop testing is training.test"
        )
    cache = bool(cfg["data"]["cache"])
    return (
        VideoClips(train_s, preprocess_spec(cfg, "train_preprocess"), cache),
        VideoClips(val_s, val_spec, cache),
        labels,
    )


def list_samples(cfg: dict[str, Any], split: str) -> list[tuple[Path, int]]:
    """(video, label) pairs of a split (``test`` falls back to the val list)."""
    return read_list(cfg, split)
