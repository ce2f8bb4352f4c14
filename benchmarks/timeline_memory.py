"""``video_timeline`` on long videos: time to the first window, total time, server memory growth.

    python -m benchmarks.timeline_memory [--checkpoint runs/synthetic_tiny/best.pt] [--minutes 10 20 60]
        [--window 2] [--work build/timeline_bench]

Writes cheap synthetic long videos (:func:`training.synth_timeline.make_long_video`: 48x48 px, 10 fps, a
keyframe every 30 s), serves the checkpoint's cpu repository on a real ``tritonserver`` and streams each
video once over gRPC, sampling the resident memory of the server and its python-backend stubs every
20 ms. Per video it prints: windows answered (and whether in time order), time to the first window, total
time, the RSS before the request and its peak growth during it. A warm-up stream runs first, so
one-off costs (imports, first allocations) are not counted against the first video.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def _rss(pid: int) -> int:
    import psutil

    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakSampler:
    """Samples a process tree's RSS in a thread; ``peak`` is the largest sample."""

    def __init__(self, pid: int, every_s: float = 0.02) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss(self.pid))
            time.sleep(self.every_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.timeline_memory", description=__doc__.split("\n")[0]
    )
    p.add_argument("--checkpoint", default=str(ROOT / "runs" / "synthetic_tiny" / "best.pt"))
    p.add_argument("--minutes", type=float, nargs="+", default=[10.0, 20.0, 60.0])
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--stride", type=float, default=None)
    p.add_argument("--work", default=str(ROOT / "build" / "timeline_bench"))
    args = p.parse_args(argv)

    from build_engines.build import build_repository
    from build_engines.repository import RepositoryOptions
    from clients.core import read_video_bytes
    from clients.timeline import stream_timeline
    from training.synth_timeline import make_long_video
    from triton_models.server import TritonServer

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    videos = []
    for minutes in args.minutes:
        path = work / f"long_{minutes:g}min.mp4"
        if not path.is_file():
            t0 = time.perf_counter()
            make_long_video(path.with_suffix(".tmp.mp4"), minutes).rename(path)
            print(f"wrote {path} ({path.stat().st_size / MIB:.1f} MiB) in {time.perf_counter() - t0:.0f} s")
        videos.append((minutes, path))
    repo = work / "model_repository"
    build_repository(args.checkpoint, repo, RepositoryOptions(target="cpu"), log=lambda *_: None)
    warm = work / "warmup.mp4"
    if not warm.is_file():
        make_long_video(warm, 0.5)
    print(
        f"{'video':>10} {'MiB':>6} {'windows':>8} {'order':>6} {'first s':>8} {'total s':>8} "
        f"{'RSS before':>11} {'peak growth':>12}"
    )
    with TritonServer(repo, log_file=work / "tritonserver.log") as server:
        list(stream_timeline(server.grpc_url, read_video_bytes(warm), args.window, args.stride))
        for minutes, path in videos:
            data = read_video_bytes(path)
            time.sleep(1.0)
            before = _rss(server.pid)
            starts, first = [], None
            t0 = time.perf_counter()
            with PeakSampler(server.pid) as sampler:
                for w in stream_timeline(server.grpc_url, data, args.window, args.stride):
                    first = w.arrived_s if first is None else first
                    starts.append(w.start)
            total = time.perf_counter() - t0
            ordered = all(a < b for a, b in zip(starts, starts[1:]))
            growth = max(0, sampler.peak - before)
            print(
                f"{minutes:>7g}min {path.stat().st_size / MIB:>6.1f} {len(starts):>8} {str(ordered):>6} "
                f"{first or 0:>8.2f} {total:>8.1f} {before / MIB:>8.0f} MiB {growth / MIB:>8.1f} MiB",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
