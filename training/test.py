"""Multi-view test: ``python -m training.test -c CONFIG.yaml -w CKPT [-o key=value ...]``.

Each video becomes the checkpoint's test-time views (three crops by default); the softmax is taken ONCE
per view and the probabilities are averaged over views (PaddleVideo's predict tool applies a second
softmax to that average; we do not). Reports top-1/top-5 and per-class accuracy and writes
``metrics.json`` and ``confusion.png`` into ``test.output_dir`` (default ``<checkpoint dir>/test``).

The preprocessing is the checkpoint's own spec, changed only by the ``test.*`` keys; for these the short
forms ``-o num_frames=16``, ``-o sampling=paddle``, ``-o crops=three``, ``-o short_side=256`` and
``-o reverse_frames=true`` are accepted. ``num_frames`` may differ from the model's: its ``time_embed`` is
resized at run time. ``reverse_frames`` feeds the sampled frames in reverse time order.
Checkpoints in other formats (official, PaddleVideo, mmaction) load through ``training.convert``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import ConfigError, add_config_arguments, load_config, run_cli
from training.data.datasets import VideoDataset, VideoEntry, config_entries
from training.loop.distributed import all_reduce_sum, cleanup_distributed, init_distributed
from training.loop.evaluate import topk_correct
from training.modeling.checkpoint import Checkpoint
from training.modeling.views import predict_views
from training.modeling.weights import load_any_checkpoint
from training.preprocessing.spec import PreprocessSpec

SHORT_KEYS = ("num_frames", "sampling", "crops", "short_side", "reverse_frames", "batch_size", "output_dir")


def resolve_test_spec(ckpt: Checkpoint, test_cfg: dict[str, Any]) -> PreprocessSpec:
    """The checkpoint's preprocessing spec with the ``test.*`` overrides that are set."""
    changes = {
        k: test_cfg[k]
        for k in ("num_frames", "sampling", "crops", "short_side")
        if test_cfg.get(k) is not None
    }
    try:
        return ckpt.preprocess.replace(**changes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"test overrides {changes}: {exc}") from exc


@torch.no_grad()
def evaluate_views(
    model: torch.nn.Module,
    loader: Any,
    num_classes: int,
    device: torch.device,
    *,
    show: bool = True,
) -> dict[str, Any]:
    """Top-1/top-5 and the confusion matrix of view-averaged softmax scores."""
    from tqdm import tqdm

    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)  # rows: true, cols: predicted
    counts = torch.zeros(3, dtype=torch.float64)  # top1, top5, n
    for views, labels in tqdm(loader, desc="test", disable=not show):
        b = views.shape[0]
        probs = predict_views(model, views.to(device)).cpu()  # (B, K)
        t1, t5 = topk_correct(probs, labels)
        counts += torch.tensor([t1, t5, b], dtype=torch.float64)
        for t, p in zip(labels.tolist(), probs.argmax(1).tolist()):
            confusion[t, p] += 1
    all_reduce_sum(confusion)
    all_reduce_sum(counts)
    n = max(float(counts[2]), 1.0)
    per_class = (confusion.diagonal() / confusion.sum(1).clamp(min=1)).tolist()
    return {
        "top1": 100 * float(counts[0]) / n,
        "top5": 100 * float(counts[1]) / n,
        "count": int(counts[2]),
        "per_class_top1": [100 * a for a in per_class],
        "confusion": confusion.long().tolist(),
    }


def plot_confusion(confusion: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(confusion, dtype=np.float64)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(labels)
    size = min(4 + 0.35 * k, 40)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    if k <= 60:
        ax.set_xticks(range(k), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(k), labels, fontsize=7)
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    ax.text(
                        j,
                        i,
                        f"{m[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if m[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_test(
    cfg: dict[str, Any], weights: str | Path, samples: Sequence[tuple[str | Path, int]] | None = None
) -> dict:
    """Evaluate ``weights`` on the config's test list (or ``samples``, (video path, label) pairs);
    writes metrics.json and confusion.png; returns the metrics."""
    dist = init_distributed()
    tc = cfg["test"]
    ckpt = load_any_checkpoint(weights)
    spec = resolve_test_spec(ckpt, tc)
    labels = ckpt.label_names()
    if samples is None:
        # Label-less lines (UCF-101 testlists) are labelled by class folder with the checkpoint's names.
        entries, root = config_entries(cfg, "test", labels), Path(cfg["data"]["root"])
    else:
        entries, root = [VideoEntry(str(path), int(label)) for path, label in samples], Path()
    if entries and max(e.label for e in entries) >= len(labels):
        raise ConfigError(f"test labels exceed the checkpoint's {len(labels)} classes")
    model = ckpt.build_model().to(dist.device)
    shard = entries[dist.rank :: dist.world_size]
    loader = torch.utils.data.DataLoader(
        VideoDataset(shard, root, spec, train=False, reverse=bool(tc["reverse_frames"])),
        batch_size=tc["batch_size"],
        num_workers=cfg["data"]["num_workers"],
    )
    t0 = time.perf_counter()
    m = evaluate_views(model, loader, len(labels), dist.device, show=dist.is_main)
    m.update(
        weights=str(weights),
        spec=spec.to_dict(),
        reverse_frames=bool(tc["reverse_frames"]),
        labels=labels,
        seconds=time.perf_counter() - t0,
    )
    out = Path(tc["output_dir"] or Path(weights).parent / "test")
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(m, indent=1))
        title = (
            f"{Path(weights).name}: top-1 {m['top1']:.1f}% ({spec.num_views} views x {spec.num_frames} frames"
        )
        plot_confusion(
            m["confusion"],
            labels,
            out / "confusion.png",
            title + (", reversed)" if tc["reverse_frames"] else ")"),
        )
        print(
            f"test: {m['count']} videos, top-1 {m['top1']:.2f}%, top-5 {m['top5']:.2f}% "
            f"({spec.num_views} views x {spec.num_frames} frames, {spec.sampling}"
            f"{', reversed' if tc['reverse_frames'] else ''}) in {m['seconds']:.1f} s -> {out}",
            flush=True,
        )
    cleanup_distributed()
    return m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.test", description=__doc__.splitlines()[0])
    add_config_arguments(
        p,
        config_help="YAML recipe (its data and test sections are used)",
        override_help="dotted config key (test.* keys also without 'test.'), value parsed as YAML",
    )
    p.add_argument(
        "-w", "--weights", required=True, help="checkpoint (native, or any format training.convert reads)"
    )
    args = p.parse_args(argv)
    overrides = [f"test.{o}" if o.split("=", 1)[0] in SHORT_KEYS else o for o in args.override]
    return run_cli(lambda: run_test(load_config(args.config, overrides), args.weights))


if __name__ == "__main__":
    sys.exit(main())
