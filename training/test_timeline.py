"""Timeline evaluation: per-window accuracy and boundary error on a long video with ground-truth segments.

    python -m training.synth --timeline --out data/timeline               # the video + its segments
    python -m training.test_timeline -w runs/synthetic_tiny/best.pt \
        --segments data/timeline/timeline.segments.json [--url 127.0.0.1:8001]  # --url: served, gRPC

In-process, the windows come from the same streaming decoder the server runs
(:class:`~training.preprocessing.windows.TimelineDecoder`) and the checkpoint's model (softmax per view,
mean over views); with ``--url``, from ``video_timeline`` over a gRPC stream. The window defaults to the
segments' length (windows aligned with the clips).

* **per-window accuracy**: a window's true class is the segment covering most of it; top-1 must match;
* **boundary error**: for each true boundary (a change of class between segments), the distance to the
  nearest predicted one (a change of top-1 between consecutive windows, placed where the later window
  starts); reported as mean and max seconds, with the counts of true and predicted boundaries.
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

from training.synth_timeline import read_segments


def window_truth(segments: Sequence[dict[str, Any]], start: float, end: float) -> int:
    """The class of the segment that covers most of ``[start, end)`` (-1 when none does)."""
    best, best_overlap = -1, 0.0
    for s in segments:
        overlap = min(end, float(s["end"])) - max(start, float(s["start"]))
        if overlap > best_overlap:
            best, best_overlap = int(s["class_id"]), overlap
    return best


def true_boundaries(segments: Sequence[dict[str, Any]]) -> list[float]:
    """Times where the class changes between consecutive segments."""
    return [
        float(b["start"]) for a, b in zip(segments, segments[1:]) if int(a["class_id"]) != int(b["class_id"])
    ]


def predicted_boundaries(spans: Sequence[tuple[float, float]], top1: Sequence[int]) -> list[float]:
    """Where the top-1 class changes between consecutive windows (at the later window's start)."""
    return [spans[i][0] for i in range(1, len(top1)) if top1[i] != top1[i - 1]]


def timeline_metrics(
    segments: Sequence[dict[str, Any]], spans: Sequence[tuple[float, float]], probs: np.ndarray
) -> dict[str, Any]:
    """Per-window accuracy and boundary error of window probabilities ``probs`` (N, K) at ``spans``."""
    top1 = [int(p.argmax()) for p in probs]
    truth = [window_truth(segments, s, e) for s, e in spans]
    correct = [t == p for t, p in zip(truth, top1)]
    real, pred = true_boundaries(segments), predicted_boundaries(spans, top1)
    errors = [min(abs(b - p) for p in pred) if pred else float("inf") for b in real]
    return {
        "windows": len(spans),
        "window_accuracy": float(np.mean(correct)) if correct else 0.0,
        "true_boundaries": len(real),
        "predicted_boundaries": len(pred),
        "boundary_error_mean_s": float(np.mean(errors)) if errors else 0.0,
        "boundary_error_max_s": float(np.max(errors)) if errors else 0.0,
    }


def in_process_windows(
    checkpoint: str | Path, video: str | Path, window: float, stride: float
) -> tuple[list[tuple[float, float]], np.ndarray]:
    """Spans and probabilities from the streaming decoder and the checkpoint's model (batches of 16)."""
    import torch

    from training.modeling.views import predict_views
    from training.modeling.weights import load_any_checkpoint
    from training.preprocessing.windows import TimelineDecoder

    ckpt = load_any_checkpoint(checkpoint)
    model = ckpt.build_model()
    spans: list[tuple[float, float]] = []
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            out.append(predict_views(model, torch.from_numpy(np.stack(batch))).numpy())  # (B, K)
            batch.clear()

    with TimelineDecoder(video, ckpt.preprocess, window, stride) as tl:
        for clip in tl.clips():
            spans.append((clip.window.start, clip.window.end))
            batch.append(clip.views)
            if len(batch) == 16:
                flush()
        flush()
    return spans, np.concatenate(out)


def served_windows(
    url: str, video: str | Path, window: float, stride: float
) -> tuple[list[tuple[float, float]], np.ndarray, dict[str, float]]:
    """Spans and probabilities from ``video_timeline`` over a gRPC stream, plus the stream's timing."""
    from clients.core import read_video_bytes
    from clients.timeline import stream_timeline

    spans, probs, first = [], [], None
    t0 = time.perf_counter()
    for w in stream_timeline(url, read_video_bytes(video), window, stride):
        first = w.arrived_s if first is None else first
        spans.append((w.start, w.end))
        probs.append(w.probs)
    timing = {"first_window_s": first or 0.0, "total_s": time.perf_counter() - t0}
    return spans, np.stack(probs), timing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.test_timeline", description=__doc__.split("\n")[0])
    p.add_argument("-w", "--checkpoint", help="checkpoint (in-process evaluation)")
    p.add_argument("--segments", required=True, help="ground truth written by training.synth --timeline")
    p.add_argument("--video", default=None, help="default: the video named in the segments file")
    p.add_argument("--url", default=None, help="evaluate the served video_timeline at HOST:PORT (gRPC)")
    p.add_argument("--window", type=float, default=None, help="seconds (default: the segments' length)")
    p.add_argument("--stride", type=float, default=None, help="seconds (default: the window)")
    p.add_argument("--json", default=None, help="write the metrics here")
    args = p.parse_args(argv)
    if not args.checkpoint and not args.url:
        p.error("give --checkpoint (in-process) and/or --url (served)")
    try:
        truth = read_segments(args.segments)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    segments = truth["segments"]
    video = Path(args.video) if args.video else Path(args.segments).parent / truth["video"]
    window = args.window or float(segments[0]["end"]) - float(segments[0]["start"])
    stride = args.stride or window
    report: dict[str, Any] = {"video": str(video), "window_s": window, "stride_s": stride}
    runs = []
    if args.checkpoint:
        runs.append(("in-process", lambda: (*in_process_windows(args.checkpoint, video, window, stride), {})))
    if args.url:
        runs.append((f"served {args.url}", lambda: served_windows(args.url, video, window, stride)))
    for name, run in runs:
        t0 = time.perf_counter()
        spans, probs, timing = run()
        metrics = {**timeline_metrics(segments, spans, probs), **timing, "seconds": time.perf_counter() - t0}
        report[name] = metrics
        print(
            f"{name}: {metrics['windows']} windows of {window:g} s (stride {stride:g} s): "
            f"per-window top-1 accuracy {metrics['window_accuracy']:.3f}; boundaries "
            f"{metrics['predicted_boundaries']} predicted / {metrics['true_boundaries']} true, error mean "
            f"{metrics['boundary_error_mean_s']:.2f} s max {metrics['boundary_error_max_s']:.2f} s"
            + (f"; first window after {timing['first_window_s']:.2f} s" if timing else "")
            + f"; {metrics['seconds']:.1f} s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
