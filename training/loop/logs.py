"""The run's log as CSV and its loss/accuracy curves as a PNG, both written atomically."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from training.modeling.checkpoint import atomic_write


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
