"""The demo's serving half: classify the held-out synthetic videos through the running ensemble.

    python -m clients.demo --data data/synthetic [--state-dir runs/demo_triton]

Every video of ``val.list`` goes to the server over gRPC and again over HTTP (concurrently, raw bytes);
it prints a few predictions, checks that both protocols agree, and ends with exactly one line::

    demo: served top-1 accuracy <X> (<precision>) on <N> held-out videos

where ``<precision>`` (fp32, int8) is what the served repository's ``serving.json`` records.

Exit 1 when a request fails or the protocols disagree, 2 for a missing list or server.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from clients.classify import classify_files
from training.data.lists import read_file_list
from triton_models.contract import SERVING_FILE
from triton_models.server import DEFAULT_STATE_DIR, read_state


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
    accuracy = float((grpc_top1 == truth).mean())
    precision = served_precision(state)
    print(f"demo: served top-1 accuracy {accuracy:.3f} ({precision}) on {len(paths)} held-out videos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
