"""Reference preprocessing speed against a decode-everything baseline, on the same videos, in one run.

    python -m benchmarks.preprocess_speed [--quick]

Baseline: how PaddleVideo's pyav decoder works -- decode every frame, convert each to RGB and keep them
all, then sample and run the same resize/crop/normalise. Reference: ``preprocess_video``
(demux-only probe, keyframe seeking, converts only the sampled frames).

Cases: a 10 s 340x256 25 fps H.264 clip with a keyframe every 2 s in ``uniform`` mode (8 frames, three
crops; the headline ratio), the same clip in ``paddle`` mode, and a VP9 encode of it.

Methods: ``baseline``; ``reference`` with its default decoder threads (``DecodeLimits.threads=0``,
FFmpeg's choice: frame + slice threads); ``reference-1t`` with one decoder thread, the setting the
serving models use (concurrent requests are the parallelism there).

Reports videos/s and median wall ms/video per method (repetitions interleaved), the ratio of the
fastest repetitions too (the least disturbed by other processes), median CPU ms (all threads), their
ratios, the load average before and after (the machine is shared: ratios from one run
are what to compare), and peak memory measured in a fresh subprocess per method and case: the growth of
peak RSS (VmHWM, reset after imports) for the first call (everything: one-time library set-up, FFmpeg
buffers, NumPy, torch), the same for a second call (steady state, what each further request costs), and
the tracemalloc peak of the first call (Python/NumPy allocations only).
Results go to ``benchmarks/results/preprocess_speed-<timestamp>/`` (JSON + PNG).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from training.preprocessing import DecodeLimits, preprocess_video, views_from_frames
from training.preprocessing.sampling import sample_indices
from training.preprocessing.spec import PreprocessSpec

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "h264_uniform": ("h264", "uniform"),
    "h264_paddle": ("h264", "paddle"),
    "vp9_uniform": ("vp9", "uniform"),
}
ENCODERS = {
    "h264": ("libx264", ".mp4", {"preset": "veryfast", "crf": "23"}),
    "vp9": ("libvpx-vp9", ".webm", {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"}),
}


def make_clip(
    path: Path, codec: str, seconds: float = 10.0, fps: int = 25, width: int = 340, height: int = 256
) -> Path:
    """A textured scene with moving objects and a slow pan, keyframe every 2 s (web-video-like)."""
    encoder, _, options = ENCODERS[codec]
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 255, size=(height * 2, width * 2, 3), dtype=np.uint8)
    scene = ((scene.astype(np.uint16) + np.roll(scene, 1, 0) + np.roll(scene, 1, 1)) // 3).astype(np.uint8)
    n = int(seconds * fps)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=Fraction(fps), options=dict(options))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 2 * fps
        for i in range(n):
            y, x = (i * 2) % height, (i * 3) % width
            img = scene[y : y + height, x : x + width].copy()
            cx = int((i * 7) % (width - 40))
            img[100:140, cx : cx + 40] = (250, 40, 40)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def baseline(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """PaddleVideo-style: decode and convert EVERY frame to RGB, keep them all, then sample."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]  # all (H, W, 3)
        fps = float(container.streams.video[0].average_rate)
    idx = sample_indices(len(frames), fps, spec)
    return views_from_frames([frames[i] for i in idx], spec)


def reference(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """The reference with its default decoder threading."""
    return preprocess_video(path, spec).views


def reference_one_thread(path: Path, spec: PreprocessSpec) -> np.ndarray:
    """The reference as the serving models run it: one decoder thread per request."""
    return preprocess_video(path, spec, limits=DecodeLimits(threads=1)).views


METHODS = {"baseline": baseline, "reference": reference, "reference-1t": reference_one_thread}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS and return that RSS in bytes."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS") * 1024


def child(method: str, video: str, sampling: str) -> None:
    """Measure two calls in this fresh process and print JSON (peak RSS growth of each, tracemalloc peak)."""
    spec = PreprocessSpec(sampling=sampling)
    rss0 = _reset_peak_rss()  # after the imports: the peak is the call's alone
    tracemalloc.start()
    out = METHODS[method](Path(video), spec)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    cold = _status_kib("VmHWM") * 1024 - rss0
    del out
    rss1 = _reset_peak_rss()
    out = METHODS[method](Path(video), spec)
    warm = _status_kib("VmHWM") * 1024 - rss1
    print(
        json.dumps(
            {
                "rss_peak_delta": max(cold, 0),
                "rss_peak_delta_warm": max(warm, 0),
                "tracemalloc_peak": peak,
                "out_bytes": out.nbytes,
            }
        )
    )


def measure_memory(method: str, video: Path, sampling: str) -> dict[str, int]:
    cmd = [sys.executable, "-m", "benchmarks.preprocess_speed", "--child", method, str(video), sampling]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 10")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "VIDEO", "SAMPLING"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    reps = 3 if args.quick else 10
    load_before = os.getloadavg()
    out_dir = ROOT / "benchmarks" / "results" / f"preprocess_speed-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    videos = {codec: make_clip(out_dir / f"clip_{codec}{ENCODERS[codec][1]}", codec) for codec in ENCODERS}
    results: dict[str, dict] = {}
    for case, (codec, sampling) in CASES.items():
        spec = PreprocessSpec(sampling=sampling)
        video = videos[codec]
        expected = baseline(video, spec)
        for method, fn in METHODS.items():  # the same array, bit for bit
            np.testing.assert_array_equal(fn(video, spec), expected, err_msg=method)
        row: dict[str, dict] = {}
        # Interleave the methods so load from other processes on this shared machine hits both alike;
        # CPU time (all threads of this process) is reported too, as the measure of work done.
        wall: dict[str, list[float]] = {m: [] for m in METHODS}
        cpu: dict[str, list[float]] = {m: [] for m in METHODS}
        for _ in tqdm(range(reps), desc=case, leave=False):
            for method, fn in METHODS.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn(video, spec)
                wall[method].append(time.perf_counter() - t0)
                cpu[method].append(time.process_time() - c0)
        for method in METHODS:
            mem = measure_memory(method, video, sampling)
            ms = float(np.median(wall[method]) * 1000)
            cpu_ms = float(np.median(cpu[method]) * 1000)
            best_ms = float(np.min(wall[method]) * 1000)  # the least disturbed repetition
            row[method] = {
                "ms_per_video": ms,
                "best_ms_per_video": best_ms,
                "cpu_ms_per_video": cpu_ms,
                "videos_per_s": 1000 / ms,
                **mem,
            }
        b = row["baseline"]
        for method in METHODS:
            if method != "baseline":
                row[method]["speedup"] = b["ms_per_video"] / row[method]["ms_per_video"]
                row[method]["best_speedup"] = b["best_ms_per_video"] / row[method]["best_ms_per_video"]
                row[method]["cpu_speedup"] = b["cpu_ms_per_video"] / row[method]["cpu_ms_per_video"]
        row["speedup"] = row["reference"]["speedup"]
        row["cpu_speedup"] = row["reference"]["cpu_speedup"]
        results[case] = row
        mib = 2**20
        print(
            f"{case:13s} output {b['out_bytes'] / mib:.1f} MiB; baseline {b['ms_per_video']:6.1f} ms "
            f"(best {b['best_ms_per_video']:6.1f} ms, CPU {b['cpu_ms_per_video']:6.1f} ms, "
            f"peak RSS +{b['rss_peak_delta'] / mib:5.1f} MiB "
            f"first call, +{b['rss_peak_delta_warm'] / mib:5.1f} MiB next)"
        )
        for method in METHODS:
            if method == "baseline":
                continue
            r = row[method]
            print(
                f"  {method:12s} {r['ms_per_video']:6.1f} ms (CPU {r['cpu_ms_per_video']:6.1f} ms, "
                f"{r['videos_per_s']:5.2f}/s, peak RSS +{r['rss_peak_delta'] / mib:5.1f} MiB first call, "
                f"+{r['rss_peak_delta_warm'] / mib:5.1f} MiB next) | x{r['speedup']:.2f} wall "
                f"(x{r['best_speedup']:.2f} best-of-{reps}), "
                f"x{r['cpu_speedup']:.2f} CPU time"
            )
    load_after = os.getloadavg()
    summary = {
        "repetitions": reps,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "cpu_count": os.cpu_count(),
        "cases": results,
    }
    (out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    _plot(results, out_dir / "preprocess_speed.png")
    for v in videos.values():
        v.unlink()
    head = results["h264_uniform"]
    print(
        f"preprocess_speed: reference is {head['speedup']:.2f}x (median wall; best-of "
        f"{head['reference']['best_speedup']:.2f}x) / {head['cpu_speedup']:.2f}x "
        f"(CPU time) the decode-everything baseline on the 10 s 340x256 H.264 clip (uniform, 8x3 views), "
        f"{head['reference-1t']['speedup']:.2f}x / {head['reference-1t']['cpu_speedup']:.2f}x with one "
        f"decoder thread; load average {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} "
        f"cores; results in {out_dir}"
    )
    return 0


def _plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(results)
    x = np.arange(len(cases))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(METHODS)
    for k, method in enumerate(METHODS):
        offset = (k - (len(METHODS) - 1) / 2) * width
        ax.bar(x + offset, [results[c][method]["ms_per_video"] for c in cases], width, label=method)
    for i, c in enumerate(cases):
        ax.text(
            i,
            results[c]["baseline"]["ms_per_video"],
            f"x{results[c]['speedup']:.1f}",
            ha="center",
            va="bottom",
        )
    ax.set_xticks(x, cases)
    ax.set_ylabel("ms per video (median)")
    ax.set_title("Preprocessing a 10 s 340x256 clip: 8 frames x 3 crops of 224")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
