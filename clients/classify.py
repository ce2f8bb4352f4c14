"""Classify video files with the served ``video_classifier`` ensemble.

    python -m clients.classify VIDEO... [--url HOST:PORT] [--protocol grpc|http] [--top-k 5] [--json]
    python -m clients.classify VIDEO --timeline [--window S] [--stride S] [--json OUT] [--plot OUT.png]

Each file's raw bytes go to the server as they are (decoding happens there). Files are sent concurrently
(a thread pool; the server's dynamic batcher groups them). For every file it prints the top-k labels, class
ids and probabilities -- the real view-averaged probabilities, which sum to one -- and the ``top-1 class:``
/ ``top-1 score:`` lines of PaddleVideo's predict tool. Exit status: 0 when every file was classified,
1 when any failed (each failure is named with the server's reason), 2 for bad arguments. ``--timeline``
sends each file to ``video_timeline`` instead and prints its windows as they arrive
(:mod:`clients.timeline`).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from clients.core import (
    DEFAULT_PORTS,
    PROTOCOLS,
    ClientError,
    Prediction,
    make_client,
    predictions_to_dict,
    read_video_bytes,
    request_top_k,
)


@dataclass
class FileResult:
    """The answer for one file: predictions, or the reason it failed."""

    path: str
    predictions: list[Prediction] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"file": self.path, "seconds": round(self.seconds, 4)}
        if self.error is not None:
            d["error"] = self.error
        else:
            d["predictions"] = predictions_to_dict(self.predictions)
            d["top1_class"] = self.predictions[0].class_id
            d["top1_label"] = self.predictions[0].label
            d["top1_score"] = self.predictions[0].prob
        return d


def classify_files(
    paths: list[str],
    url: str,
    protocol: str = "grpc",
    top_k: int = 5,
    concurrency: int = 4,
    progress: bool = False,
) -> list[FileResult]:
    """Classify every file (in parallel); results come back in the order of ``paths``."""
    local = threading.local()

    def client() -> Any:
        # gRPC clients are thread-safe, HTTP ones are not: one client per worker thread covers both.
        if not hasattr(local, "client"):
            local.client = make_client(url, protocol)
        return local.client

    def one(path: str) -> FileResult:
        t0 = time.perf_counter()
        try:
            preds = request_top_k(client(), read_video_bytes(path), top_k=top_k)
            return FileResult(path, preds, seconds=time.perf_counter() - t0)
        except ClientError as exc:
            return FileResult(path, error=str(exc), seconds=time.perf_counter() - t0)

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(paths)))) as pool:
        it = pool.map(one, paths)
        return list(tqdm(it, total=len(paths), desc="classify", disable=not progress, leave=False))


def format_result(r: FileResult) -> str:
    """Human-readable block for one file (PaddleVideo's predict tool layout, plus the top-k table)."""
    if r.error is not None:
        return f"Current video file: {r.path}\n\terror: {r.error}"
    lines = [f"Current video file: {r.path}"]
    for rank, p in enumerate(r.predictions, 1):
        lines.append(f"\t{rank}. {p.label} (class {p.class_id}): {p.prob:.4f}")
    lines.append(f"\ttop-1 class: {r.predictions[0].class_id}")
    lines.append(f"\ttop-1 score: {r.predictions[0].prob}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clients.classify", description=__doc__.split("\n")[0])
    p.add_argument("videos", nargs="+", help="encoded video files")
    p.add_argument("--url", default=None, help="HOST:PORT (default 127.0.0.1:8001 gRPC / :8000 HTTP)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument(
        "--json",
        nargs="?",
        const=True,
        default=False,
        metavar="OUT",
        help="one JSON document on stdout (with --timeline: into OUT when given)",
    )
    p.add_argument("--timeline", action="store_true", help="long videos: one answer per window (gRPC stream)")
    p.add_argument("--window", type=float, default=None, help="--timeline window, s (default: the model's)")
    p.add_argument("--stride", type=float, default=None, help="--timeline stride, s (default: the window)")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="--timeline: probabilities over time")
    args = p.parse_args(argv)
    if isinstance(args.json, str) and not args.timeline:  # `--json a.mp4 b.mp4`: the flag, then files
        args.videos.insert(0, args.json)
        args.json = True
    if args.timeline:
        from clients.timeline import timeline_main

        return timeline_main(args)
    if args.top_k < 1:
        p.error(f"--top-k must be >= 1, got {args.top_k}")
    url = args.url or f"127.0.0.1:{DEFAULT_PORTS[args.protocol]}"
    t0 = time.perf_counter()
    results = classify_files(
        args.videos,
        url,
        args.protocol,
        args.top_k,
        args.concurrency,
        progress=not args.json and sys.stderr.isatty(),
    )
    failed = [r for r in results if r.error is not None]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        for r in results:
            print(format_result(r))
        print(
            f"classified {len(results) - len(failed)}/{len(results)} files via {args.protocol} {url} "
            f"in {time.perf_counter() - t0:.2f}s"
        )
    for r in failed:
        print(f"error: {Path(r.path)}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
