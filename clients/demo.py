"""The demo's serving half: classify the held-out synthetic videos through the running ensemble.

    python -m clients.demo --data data/synthetic [--state-dir runs/demo_triton]

Every video of ``val.list`` goes to the server over gRPC and again over HTTP (concurrently, raw bytes);
it prints a few predictions, checks that both protocols agree, and ends with exactly one line::

    demo: served top-1 accuracy <X> (<precision>) on <N> held-out videos

where ``<precision>`` (fp32, int8) is what the served repository's ``serving.json`` records. Below
:data:`GOOD` (0.97, what the recipe reaches on every measured seed) the same line goes on with the verdict:
``WEAK`` or ``FAILED`` (below :data:`FLOOR`, 0.90), the confusions that cost the most, and where they come
from -- the training run (the checkpoint's own val top-1 was as low: retrain) or serving (the checkpoint
was good on its val set: preprocessing or precision differ).

Exit 1 when a request fails or the protocols disagree, 2 for a missing list or server, 3 when the served
accuracy is below :data:`FLOOR`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from clients.classify import classify_files
from training.data.lists import read_file_list
from triton_models.contract import SERVING_FILE
from triton_models.server import DEFAULT_STATE_DIR, read_state

GOOD = 0.97  # the bar the recipe reaches on every run of benchmarks.demo_matrix
FLOOR = 0.90  # below this the demo fails (exit 3)
TRAINING_DOC = "docs/training.md, 'The CPU demo'"


def verdict(
    truth: NDArray[np.int64],
    predicted: NDArray[np.int64],
    labels: list[str],
    precision: str,
    trained_top1: float | None,
) -> tuple[str, int]:
    """The demo's last line and exit status from the served top-1 of every held-out video.

    ``trained_top1`` is the checkpoint's own val top-1 (0..1, from ``serving.json``) when known: a served
    accuracy close to it means the training run is what is weak; far below it, serving is.
    """
    accuracy = float((predicted == truth).mean()) if len(truth) else 0.0
    line = f"demo: served top-1 accuracy {accuracy:.3f} ({precision}) on {len(truth)} held-out videos"
    if accuracy >= GOOD:
        return line, 0
    confusions = []
    for t in np.unique(truth):
        mask = truth == t
        wrong = predicted[mask][predicted[mask] != t]
        if len(wrong):
            p, n = np.unique(wrong, return_counts=True)
            worst = int(np.argmax(n))
            confusions.append((int(n[worst]), int(t), int(p[worst]), int(mask.sum())))
    confusions.sort(reverse=True)

    def name(i: int) -> str:
        return labels[i] if 0 <= i < len(labels) else str(i)

    worst = "; ".join(f"{name(t)} read as {name(p)} on {n} of {total}" for n, t, p, total in confusions[:3])
    if trained_top1 is not None and accuracy >= trained_top1 - 0.05:
        cause = (
            f"the training run is weak (its own val top-1 was {trained_top1:.3f}): retrain "
            f"(make clean demo) and see {TRAINING_DOC}"
        )
    elif trained_top1 is not None:
        cause = (
            f"serving is (the checkpoint reached {trained_top1:.3f} on its val set): the served "
            f"preprocessing or the {precision} classifier differs from training"
        )
    else:
        cause = f"the checkpoint records no val accuracy to compare with; see {TRAINING_DOC}"
    status = "FAILED" if accuracy < FLOOR else "WEAK"
    return f"{line} -- {status} (below {GOOD:.2f}): {worst or 'no confusion recorded'}; {cause}", (
        3 if accuracy < FLOOR else 0
    )


def trained_accuracy(state: dict) -> float | None:
    """The served checkpoint's own val top-1 (0..1) as ``serving.json`` records it, or None."""
    try:
        record = json.loads((Path(state["repository"]) / SERVING_FILE).read_text())
        return float(record["checkpoint_metrics"]["val_top1"]) / 100.0
    except (OSError, KeyError, TypeError, ValueError):
        return None


def served_labels(state: dict) -> list[str]:
    """The label names ``serving.json`` records (empty if unreadable)."""
    try:
        return [str(x) for x in json.loads((Path(state["repository"]) / SERVING_FILE).read_text())["labels"]]
    except (OSError, KeyError, TypeError, ValueError):
        return []


def read_list(path: Path) -> list[tuple[Path, int]]:
    """A labelled file list (``relative/path label`` lines) -> (absolute path, label id)."""
    return [(path.parent / e.path, e.label) for e in read_file_list(path)]


def served_precision(state: dict) -> str:
    """The classifier's precision recorded in the running server's repository (``unknown`` if unreadable)."""
    try:
        record = json.loads((Path(state["repository"]) / SERVING_FILE).read_text())
        return str(record["options"]["precision"])
    except (OSError, KeyError, TypeError, ValueError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clients.demo", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/synthetic", help="folder with val.list")
    p.add_argument("--list", default="val.list", help="held-out list inside --data")
    p.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="the running server's state folder")
    p.add_argument("--show", type=int, default=6, help="predictions to print")
    args = p.parse_args(argv)
    try:
        items = read_list(Path(args.data) / args.list)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    state = read_state(args.state_dir)
    if state is None:
        print(
            f"error: no running server recorded under {args.state_dir} (start one with make serve)",
            file=sys.stderr,
        )
        return 2
    paths = [str(path) for path, _ in items]
    truth = np.array([label for _, label in items])
    results = {}
    for protocol, url in (("grpc", state["grpc_url"]), ("http", state["http_url"])):
        t0 = time.perf_counter()
        results[protocol] = classify_files(paths, url, protocol, top_k=3, concurrency=4, progress=True)
        seconds = time.perf_counter() - t0
        failed = [r for r in results[protocol] if r.error is not None]
        for r in failed:
            print(f"error: {r.path}: {r.error}", file=sys.stderr)
        if failed:
            return 1
        rate = len(paths) / seconds
        print(f"{protocol}: {len(paths)} videos in {seconds:.2f}s ({rate:.1f} videos/s) via {url}")
    grpc_top1 = np.array([r.predictions[0].class_id for r in results["grpc"]])
    http_top1 = np.array([r.predictions[0].class_id for r in results["http"]])
    agree = float((grpc_top1 == http_top1).mean())
    for r, label in list(zip(results["grpc"], truth))[: args.show]:
        top = ", ".join(f"{q.label} {q.prob:.3f}" for q in r.predictions)
        mark = "ok" if r.predictions[0].class_id == label else "WRONG"
        print(f"  {Path(r.path).relative_to(Path(args.data))}: {top}  [{mark}]")
    if agree < 1.0:
        print(f"error: gRPC and HTTP top-1 agree on only {agree:.1%} of the videos", file=sys.stderr)
        return 1
    line, status = verdict(
        truth, grpc_top1, served_labels(state), served_precision(state), trained_accuracy(state)
    )
    print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
