"""Reference preprocessing speed against a decode-everything baseline, on the same videos, in one run.

    python -m benchmarks.preprocess_speed [--quick]

Baseline: how PaddleVideo's pyav decoder works -- decode every frame, convert each to RGB and keep them
all, then sample and run the same resize/crop/normalise. Reference: :func:`training.video.preprocess_video`
(demux-only probe, keyframe seeking, converts only the sampled frames).

Cases: a 10 s 340x256 25 fps H.264 clip with a keyframe every 2 s in ``uniform`` mode (8 frames, three
crops; the headline ratio), the same clip in ``paddle`` mode, and a VP9 encode of it.

Reports videos/s and median wall ms/video per method (repetitions interleaved), median CPU ms (all
threads), their ratios, and peak memory measured in a fresh
subprocess per method and case: the growth of peak RSS (``ru_maxrss``) over the RSS after imports for one
call (everything: FFmpeg buffers, NumPy, torch), and the tracemalloc peak (Python/NumPy allocations only).
Results go to ``benchmarks/results/preprocess_speed-<timestamp>/`` (JSON + PNG).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from training.sampling import sample_indices
from training.spec import PreprocessSpec
from training.video import preprocess_video, views_from_frames

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
    return preprocess_video(path, spec).views


METHODS = {"baseline": baseline, "reference": reference}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def child(method: str, video: str, sampling: str) -> None:
    """Measure one call in this fresh process and print JSON (peak RSS growth, tracemalloc peak)."""
    spec = PreprocessSpec(sampling=sampling)
    # Reset the kernel's peak-RSS mark (VmHWM) after the imports, so the peak is this call's alone.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss0 = _status_kib("VmRSS")
    tracemalloc.start()
    out = METHODS[method](Path(video), spec)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    delta = (_status_kib("VmHWM") - rss0) * 1024
    print(json.dumps({"rss_peak_delta": max(delta, 0), "tracemalloc_peak": peak, "out_bytes": out.nbytes}))


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
    out_dir = ROOT / "benchmarks" / "results" / f"preprocess_speed-{time.strftime('%Y%m%d-%H%M%S')}"
    out_dir.mkdir(parents=True, exist_ok=True)
    videos = {codec: make_clip(out_dir / f"clip_{codec}{ENCODERS[codec][1]}", codec) for codec in ENCODERS}
    results: dict[str, dict] = {}
    for case, (codec, sampling) in CASES.items():
        spec = PreprocessSpec(sampling=sampling)
        video = videos[codec]
        np.testing.assert_allclose(reference(video, spec), baseline(video, spec), atol=0)  # same output
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
            row[method] = {"ms_per_video": ms, "cpu_ms_per_video": cpu_ms, "videos_per_s": 1000 / ms, **mem}
        row["speedup"] = row["baseline"]["ms_per_video"] / row["reference"]["ms_per_video"]
        row["cpu_speedup"] = row["baseline"]["cpu_ms_per_video"] / row["reference"]["cpu_ms_per_video"]
        results[case] = row
        b, r = row["baseline"], row["reference"]
        mib = 2**20
        print(
            f"{case:13s} baseline {b['ms_per_video']:7.1f} ms ({b['videos_per_s']:5.2f}/s, peak RSS +"
            f"{b['rss_peak_delta'] / mib:5.1f} MiB) | reference {r['ms_per_video']:6.1f} ms "
            f"({r['videos_per_s']:5.2f}/s, peak RSS +{r['rss_peak_delta'] / mib:5.1f} MiB) | "
            f"output {r['out_bytes'] / mib:.1f} MiB | x{row['speedup']:.2f} wall, "
            f"x{row['cpu_speedup']:.2f} CPU time"
        )
    (out_dir / "results.json").write_text(json.dumps({"repetitions": reps, "cases": results}, indent=2))
    _plot(results, out_dir / "preprocess_speed.png")
    for v in videos.values():
        v.unlink()
    head = results["h264_uniform"]
    print(
        f"preprocess_speed: reference is {head['speedup']:.2f}x (wall) / {head['cpu_speedup']:.2f}x "
        f"(CPU time) the decode-everything baseline on the 10 s "
        f"340x256 H.264 clip (uniform, 8x3 views); results in {out_dir}"
    )
    return 0


def _plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(results)
    x = np.arange(len(cases))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for k, method in enumerate(METHODS):
        ax.bar(x + (k - 0.5) * 0.38, [results[c][method]["ms_per_video"] for c in cases], 0.38, label=method)
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
