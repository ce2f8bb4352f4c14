"""Client of the ``video_timeline`` model: one long video in, one class distribution per window out.

    python -m clients.classify VIDEO --timeline [--window S] [--stride S] [--json OUT] [--plot OUT.png]

The file's bytes go to the server once over a gRPC stream (the model is decoupled; HTTP cannot carry its
responses). Each window's line is printed as it arrives (``start-end`` and the top-k labels), then a
video-level summary (the mean of the window probabilities) and the segments (consecutive windows with the
same top-1, merged). ``--plot`` draws the top classes' probabilities over time.

Library use::

    for w in stream_timeline("127.0.0.1:8001", read_video_bytes("match.mp4"), window=4.0):
        print(w.start, w.end, w.probs.argmax())
"""

from __future__ import annotations

import json
import queue
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.core import (
    ClientError,
    as_client_error,
    client_module,
    make_client,
    request_top_k,
    video_request,
)
from triton_models import contract


@dataclass
class WindowResult:
    """One window's answer: its span (seconds), probabilities and when it arrived."""

    index: int
    start: float
    end: float
    probs: np.ndarray  # (K,) float32, sums to 1
    arrived_s: float = 0.0  # seconds after the request was sent

    def top(self, k: int) -> list[tuple[int, float]]:
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(int(i), float(self.probs[i])) for i in order]


@dataclass
class Segment:
    """Consecutive windows that share their top-1 class."""

    start: float
    end: float
    class_id: int
    label: str
    windows: int
    mean_prob: float  # the class's mean probability over the merged windows


@dataclass
class TimelineResult:
    """A whole answer: windows in time order, plus what the summary and segments are made from."""

    path: str
    labels: list[str]
    windows: list[WindowResult] = field(default_factory=list)
    error: str | None = None
    first_window_s: float | None = None
    total_s: float = 0.0

    def mean_probs(self) -> np.ndarray:
        """Video-level distribution: the mean of the window probabilities."""
        if not self.windows:
            return np.zeros(len(self.labels), dtype=np.float32)
        return np.mean([w.probs for w in self.windows], axis=0)

    def segments(self) -> list[Segment]:
        return merge_segments(self.windows, self.labels)

    def to_dict(self, top_k: int = 5) -> dict[str, Any]:
        d: dict[str, Any] = {
            "file": self.path,
            "labels": self.labels,
            "first_window_s": self.first_window_s,
            "total_s": round(self.total_s, 4),
            "windows": [
                {
                    "index": w.index,
                    "start": w.start,
                    "end": w.end,
                    "probs": [float(p) for p in w.probs],
                    "top": [
                        {"class_id": i, "label": label_of(self.labels, i), "prob": p} for i, p in w.top(top_k)
                    ],
                }
                for w in self.windows
            ],
        }
        mean = self.mean_probs()
        d["summary"] = [
            {"class_id": int(i), "label": label_of(self.labels, int(i)), "prob": float(mean[i])}
            for i in np.argsort(-mean, kind="stable")[:top_k]
        ]
        d["segments"] = [s.__dict__ for s in self.segments()]
        if self.error is not None:
            d["error"] = self.error
        return d


def label_of(labels: Sequence[str], i: int) -> str:
    return labels[i] if 0 <= i < len(labels) else f"class_{i}"


def merge_segments(windows: Sequence[WindowResult], labels: Sequence[str]) -> list[Segment]:
    """Runs of consecutive windows with the same top-1 class, as segments from the first one's start to
    the last one's end (overlapping windows: a segment ends where the next one begins)."""
    out: list[Segment] = []
    run: list[WindowResult] = []

    def close() -> None:
        if not run:
            return
        c = int(run[0].probs.argmax())
        out.append(
            Segment(
                start=run[0].start,
                end=run[-1].end,
                class_id=c,
                label=label_of(labels, c),
                windows=len(run),
                mean_prob=float(np.mean([w.probs[c] for w in run])),
            )
        )

    for w in windows:
        if run and int(w.probs.argmax()) != int(run[0].probs.argmax()):
            close()
            run = []
        run.append(w)
    close()
    for a, b in zip(out, out[1:]):
        a.end = min(a.end, b.start)  # overlapping windows: hand the overlap to the later segment
    return out


# --- the stream ---------------------------------------------------------------------------------------


def timeline_inputs(video: np.ndarray, window: float | None, stride: float | None) -> list[Any]:
    """The gRPC inputs of one ``video_timeline`` request: the file, and window/stride when given."""
    grpcclient = client_module("grpc")
    inputs, _ = video_request(grpcclient, video)  # VIDEO (1, nbytes): one file, as for video_classifier
    for name, value in ((contract.WINDOW_SECONDS, window), (contract.STRIDE_SECONDS, stride)):
        if value is not None:
            arr = np.asarray([[value]], dtype=np.float32)  # (1, 1)
            t = grpcclient.InferInput(name, list(arr.shape), "FP32")
            t.set_data_from_numpy(arr)
            inputs.append(t)
    return inputs


def stream_timeline(
    url: str,
    video: np.ndarray,
    window: float | None = None,
    stride: float | None = None,
    *,
    model: str = contract.TIMELINE,
    timeout_s: float = 600.0,
    client: Any = None,
) -> Iterator[WindowResult]:
    """Send one encoded file and yield its windows as they arrive (time order).

    Raises :class:`ClientError` with the server's reason for a refused video. Leaving the loop early (or
    an exception in it) cancels the request on the server.
    """
    grpcclient = client_module("grpc")
    own = client is None
    client = client or make_client(url, "grpc")
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    finished = False
    try:
        t0 = time.perf_counter()
        outputs = [
            grpcclient.InferRequestedOutput(contract.WINDOW),
            grpcclient.InferRequestedOutput(contract.PROBS),
        ]
        client.async_stream_infer(
            model, timeline_inputs(video, window, stride), outputs=outputs, enable_empty_final_response=True
        )
        index = 0
        while True:
            try:
                result, error = answers.get(timeout=timeout_s)
            except queue.Empty:
                raise ClientError(f"no response from {model} within {timeout_s} s") from None
            if error is not None:
                finished = True  # the server ended the request with this error
                raise as_client_error(error)
            response = result.get_response()
            final = response.parameters.get("triton_final_response")
            if result.as_numpy(contract.WINDOW) is not None:
                span = result.as_numpy(contract.WINDOW).reshape(-1)
                probs = result.as_numpy(contract.PROBS).reshape(-1)
                yield WindowResult(index, float(span[0]), float(span[1]), probs, time.perf_counter() - t0)
                index += 1
            if final is not None and final.bool_param:
                finished = True
                return
    finally:
        client.stop_stream(cancel_requests=not finished)
        if own:
            client.close()


def fetch_labels(url: str, video: np.ndarray, num_classes: int) -> list[str]:
    """Label names through the classification extension of ``video_classifier`` (same label file as
    ``video_timeline``'s PROBS), asked once with the same file; ``class_<i>`` names when that fails."""
    names = [f"class_{i}" for i in range(num_classes)]
    try:
        for p in request_top_k(make_client(url, "grpc"), video, top_k=num_classes):
            if 0 <= p.class_id < num_classes:
                names[p.class_id] = p.label
    except (ClientError, ValueError):
        pass
    return names


def num_classes_of(url: str, model: str = contract.TIMELINE) -> int:
    """K from the model's metadata (``PROBS`` is [.., K])."""
    client = make_client(url, "grpc")
    try:
        md = client.get_model_metadata(model)
    except Exception as exc:
        raise as_client_error(exc) from exc
    finally:
        client.close()
    for out in md.outputs:
        if out.name == contract.PROBS:
            return int(out.shape[-1])
    raise ClientError(f"model {model!r} has no {contract.PROBS} output")


def run_timeline(
    path: str,
    video: np.ndarray,
    url: str,
    window: float | None = None,
    stride: float | None = None,
    *,
    top_k: int = 5,
    echo: Any = None,
) -> TimelineResult:
    """Stream one file; ``echo(line)`` is called with each window's line as it arrives."""
    k = num_classes_of(url)
    result = TimelineResult(path, fetch_labels(url, video, k))
    t0 = time.perf_counter()
    try:
        for w in stream_timeline(url, video, window, stride):
            if result.first_window_s is None:
                result.first_window_s = w.arrived_s
            result.windows.append(w)
            if echo is not None:
                echo(format_window(w, result.labels, top_k))
    except ClientError as exc:
        result.error = str(exc)
    result.total_s = time.perf_counter() - t0
    return result


# --- output -------------------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    m, s = divmod(max(0.0, seconds), 60.0)
    h, m = divmod(int(m), 60)
    return f"{h}:{m:02d}:{s:06.3f}" if h else f"{m:02d}:{s:06.3f}"


def format_window(w: WindowResult, labels: Sequence[str], top_k: int) -> str:
    tops = "  ".join(f"{label_of(labels, i)} {p:.3f}" for i, p in w.top(top_k))
    return f"[{w.index:4d}] {_clock(w.start)}-{_clock(w.end)}  {tops}"


def format_summary(r: TimelineResult, top_k: int) -> str:
    lines = [f"video: {r.path}: {len(r.windows)} windows"]
    if r.first_window_s is not None:
        lines[0] += f", first after {r.first_window_s:.2f} s, all after {r.total_s:.2f} s"
    mean = r.mean_probs()
    lines.append("summary (mean of the window probabilities):")
    for rank, i in enumerate(np.argsort(-mean, kind="stable")[:top_k], 1):
        lines.append(f"\t{rank}. {label_of(r.labels, int(i))} (class {int(i)}): {float(mean[i]):.4f}")
    lines.append("segments:")
    for s in r.segments():
        lines.append(
            f"\t{_clock(s.start)}-{_clock(s.end)}  {s.label} ({s.windows} windows, mean {s.mean_prob:.3f})"
        )
    return "\n".join(lines)


def plot_timeline(r: TimelineResult, out: str | Path, top: int = 5) -> Path:
    """PNG: the probabilities of the ``top`` classes (by video-level mean) over time, one line each, on
    top of a heatmap of every class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    probs = np.stack([w.probs for w in r.windows]) if r.windows else np.zeros((0, len(r.labels)))  # (N, K)
    mids = [(w.start + w.end) / 2 for w in r.windows]
    fig, (ax, hm) = plt.subplots(2, 1, figsize=(12, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for i in np.argsort(-r.mean_probs(), kind="stable")[:top]:
        ax.plot(mids, probs[:, i], label=label_of(r.labels, int(i)), lw=1.2)
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{Path(r.path).name}: {len(r.windows)} windows")
    if r.windows:
        extent = (r.windows[0].start, r.windows[-1].end, len(r.labels) - 0.5, -0.5)
        hm.imshow(
            probs.T, aspect="auto", extent=extent, cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
        )
    hm.set_yticks(range(len(r.labels)), [label_of(r.labels, i) for i in range(len(r.labels))], fontsize=7)
    hm.set_xlabel("time (s)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def timeline_main(args: Any) -> int:
    """``clients.classify --timeline``: every file in turn; exit 1 when any failed."""
    from clients.core import read_video_bytes

    if args.protocol != "grpc":
        print("error: --timeline needs --protocol grpc (its responses are streamed)", file=sys.stderr)
        return 2
    url = args.url or "127.0.0.1:8001"
    to_stdout = args.json is True  # `--json` alone: one JSON document on stdout instead of the lines
    say = (lambda *_: None) if to_stdout else (lambda s: print(s, flush=True))
    results = []
    for path in args.videos:
        try:
            video = read_video_bytes(path)
        except ClientError as exc:
            results.append(TimelineResult(path, [], error=str(exc)))
            continue
        say(f"Current video file: {path}")
        r = run_timeline(path, video, url, args.window, args.stride, top_k=args.top_k, echo=say)
        results.append(r)
        say(format_summary(r, args.top_k))
        if args.plot and r.windows:
            target = Path(args.plot)
            if len(args.videos) > 1:
                target = target.with_name(f"{target.stem}.{Path(path).stem}{target.suffix}")
            say(f"plot: {plot_timeline(r, target)}")
    document = json.dumps([r.to_dict(args.top_k) for r in results], indent=1)
    if to_stdout:
        print(document)
    elif args.json:
        Path(args.json).write_text(document + "\n")
    failed = [r for r in results if r.error is not None]
    for r in failed:
        print(f"error: {r.path}: {r.error}", file=sys.stderr)
    return 1 if failed else 0
