"""How close the batch scorer gets to the server's own best throughput.

Starts one Triton server on the repository built from a checkpoint, runs ``perf_analyzer``'s concurrency
sweep on a set of real encoded videos, then scores the same videos (repeated to ``--videos`` inputs) with
``clients.score`` at the best sweep concurrency, and prints ``scorer videos/s / perf_analyzer infer/s``.
Both numbers come from the same server in the same run, so the ratio is what matters, not the absolute
rate (which depends on how busy the shared cores are).

    python -m benchmarks.score_vs_perf [--checkpoint CKPT] [--videos 400] [--concurrency 1:8:1]

Without ``--checkpoint`` a small random TimeSformer (``timesformer_tiny``, 32x32, 8 frames) is used: its
inference is cheap, which makes the client's own overhead as visible as it can be. Results (CSV, JSON
and a PNG plot) go to ``benchmarks/results/score_vs_perf/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "score_vs_perf"


def make_checkpoint(path: Path, *, num_frames: int = 8, size: int = 32, num_classes: int = 10) -> Path:
    """A seeded random tiny checkpoint (no weights are downloaded)."""
    import torch

    from training.modeling.checkpoint import Checkpoint, save_checkpoint
    from training.modeling.model import timesformer_tiny
    from training.preprocessing.spec import PreprocessSpec

    torch.manual_seed(0)
    model = timesformer_tiny(num_classes=num_classes, num_frames=num_frames, img_size=size)
    ckpt = Checkpoint(
        model_config=model.model_config,
        preprocess=PreprocessSpec(num_frames=num_frames, short_side=size, crop_size=size),
        state_dict=model.state_dict(),
        labels=[f"action_{i}" for i in range(num_classes)],
        meta={"source": "benchmarks.score_vs_perf random init"},
    )
    return save_checkpoint(ckpt, path)


def make_videos(folder: Path, n: int, *, size: int = 48, frames: int = 16) -> list[Path]:
    """``n`` distinct small H.264 files (textured, moving content), encoded with PyAV."""
    from benchmarks.videos import encode_video, synthetic_frames

    return [
        encode_video(folder / f"v{k:03d}.mp4", synthetic_frames(size, size, frames, seed=k), "h264")
        for k in range(n)
    ]


def perf_analyzer_sweep(server: Any, model: str, videos: list[Path], levels: list[int], work: Path) -> Any:
    """perf_analyzer's own best: one run per concurrency level over ``videos`` (cycled), gRPC."""
    from benchmarks.perf import PerfSettings, sweep, write_input_data

    # The ensemble batches (max_batch_size > 0): perf_analyzer adds the batch dim itself.
    data = write_input_data(work / "input_data.json", [{"VIDEO": np.fromfile(p, np.uint8)} for p in videos])
    settings = PerfSettings(request_count=200, max_trials=5, collect_metrics=False)
    return sweep(
        model,
        url=server.grpc_url,
        http_url=server.http_url,
        input_data=data,
        concurrencies=levels,
        settings=settings,
        out_dir=work / "perf",
    )


def score_run(url: str, videos: list[Path], n: int, concurrency: int, workdir: Path) -> dict[str, float]:
    """Score ``n`` inputs (the videos cycled) through clients.score; videos/s from its own summary."""
    from clients.score import ScoreConfig, run

    lst = workdir / f"list_{concurrency}.txt"
    lst.write_text("".join(f"{videos[i % len(videos)]}\n" for i in range(n)))
    out = workdir / f"scores_{concurrency}.jsonl"
    out.unlink(missing_ok=True)
    cfg = ScoreConfig(input=str(lst), out=str(out), urls=[url], concurrency=concurrency, progress=False)
    t0 = time.perf_counter()
    summary = asyncio.run(run(cfg, log=lambda m: print(m, flush=True)))
    wall = time.perf_counter() - t0
    if not summary.complete or summary.errors:
        raise RuntimeError(f"scoring run incomplete: {summary.line(str(out))}")
    return {"concurrency": concurrency, "videos_per_s": summary.rate, "wall_s": wall, "n": n}


def plot(sweep: list[dict[str, float]], scores: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["concurrency"] for r in sweep], [r["throughput"] for r in sweep], "o-", label="perf_analyzer")
    ax.plot(
        [r["concurrency"] for r in scores],
        [r["videos_per_s"] for r in scores],
        "s",
        ms=9,
        label="clients.score",
    )
    ax.set_xlabel("requests in flight")
    ax.set_ylabel("videos / s")
    ax.set_title("Batch scorer vs the server's best throughput")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="native checkpoint (default: a random tiny model)")
    p.add_argument("--repository", help="an already built model repository (skips the build)")
    p.add_argument("--videos", type=int, default=800, help="inputs the scorer scores per level")
    p.add_argument("--distinct", type=int, default=16, help="distinct encoded videos (cycled)")
    p.add_argument("--concurrency", default="4,8,16", help="levels for both clients (comma-separated)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    from triton_models.contract import ENSEMBLE
    from triton_models.server import TritonServer

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="score_vs_perf-") as tmp:
        work = Path(tmp)
        repo = Path(args.repository) if args.repository else work / "repo"
        if not args.repository:
            ckpt = Path(args.checkpoint) if args.checkpoint else make_checkpoint(work / "tiny.pt")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "build_engines.build",
                    "--checkpoint",
                    str(ckpt),
                    "--target",
                    "cpu",
                    "-o",
                    str(repo),
                ],
                check=True,
                cwd=ROOT,
            )
        videos = make_videos(work / "videos", args.distinct)
        with TritonServer(repo, log_file=work / "server.log") as server:
            levels = [int(c) for c in args.concurrency.split(",")]
            # Warm-up (the first requests initialise ONNX Runtime and the decoders lazily).
            score_run(server.grpc_url, videos, min(32, args.videos), levels[-1], work)
            sweep_rows, scores = [], []
            # Interleave the two clients level by level, so that load from elsewhere on the host drifts into
            # both sides of a ratio rather than into one of them.
            for c in tqdm(levels, desc="levels", unit="level"):
                lv = perf_analyzer_sweep(server, ENSEMBLE, videos, [c], work).levels[0]
                sweep_rows.append({"concurrency": c, "throughput": lv.row.throughput, "stable": lv.stable})
                scores.append(score_run(server.grpc_url, videos, args.videos, c, work))
                print(
                    f"bench: concurrency {c}: perf_analyzer {lv.row.throughput:.1f} infer/s, "
                    f"scorer {scores[-1]['videos_per_s']:.1f} videos/s",
                    flush=True,
                )
    best = max(sweep_rows, key=lambda r: r["throughput"])
    best_score = max(scores, key=lambda r: r["videos_per_s"])
    ratio = best_score["videos_per_s"] / best["throughput"]
    report = {"perf_analyzer": sweep_rows, "scorer": scores, "ratio": ratio, "videos": args.videos}
    (args.out / "score_vs_perf.json").write_text(json.dumps(report, indent=2))
    plot(sweep_rows, scores, args.out / "score_vs_perf.png")
    print(
        f"bench: scorer {best_score['videos_per_s']:.1f} videos/s "
        f"(concurrency {best_score['concurrency']}) vs "
        f"perf_analyzer best {best['throughput']:.1f} infer/s (concurrency {best['concurrency']}) "
        f"-> ratio {ratio:.2f} "
        f"(target >= 0.90) [{args.out / 'score_vs_perf.png'}]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
