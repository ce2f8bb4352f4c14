"""One command for a GPU machine: does the production target load, answer like the cpu target, and how fast.

    python -m benchmarks.gpu_check --gpu-repo model_repository_gpu --cpu-repo model_repository \\
        [--videos a.mp4 b.webm ...] [--concurrency 1 4 8] [--out DIR]

Runs what the machine allows and says what it skipped and why:

1. **environment**: GPU (``nvidia-smi``), TensorRT, DALI and ``tritonserver`` versions;
2. **plan**: builds ``classifier/1/model.plan`` with :mod:`build_engines.tensorrt` when missing (TensorRT
   and a GPU needed; a plan only loads on the TensorRT that built it);
3. **DALI**: the repository's ``mixed`` pipeline on the GPU vs the reference implementation, per video;
4. **serve**: ``tritonserver`` (the NGC container's, ``/opt/tritonserver/bin/tritonserver``, with its
   backends) on the gpu repository, and the same served checks the suite runs against the dali backend on
   a CPU host (:mod:`benchmarks.served_checks`): ``PROBS`` of the ragged check set (plus H.264) vs the cpu
   repository's classifier on the reference preprocessing (top-1 equal, max difference printed), batches
   in the DALI model's statistics, a damaged video in every position of a batch;
5. **perf**: a short ``perf_analyzer`` concurrency sweep on the ensemble, printing videos/s, with the
   decoder (NVDEC) utilisation sampled from ``nvidia-smi`` while it runs;
6. **model speed** (PyTorch + CUDA only): :mod:`benchmarks.gpu_model_speed`, bf16 vs a same-run matmul.

Nothing here needs torch except step 6. Exit status 0 when every step that ran passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONTAINER_TRITON = Path("/opt/tritonserver/bin/tritonserver")


def _run(cmd: Sequence[str], timeout: float = 60) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """What this machine has for the production target."""
    env: dict[str, Any] = {
        "gpu": _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    }
    try:
        import tensorrt

        env["tensorrt"] = tensorrt.__version__
    except ImportError:
        env["tensorrt"] = None
    try:
        import nvidia.dali

        env["dali"] = nvidia.dali.__version__
    except ImportError:
        env["dali"] = None
    env["tritonserver"] = (
        str(CONTAINER_TRITON) if CONTAINER_TRITON.is_file() else shutil.which("tritonserver")
    )
    try:
        import torch

        env["torch_cuda"] = bool(torch.cuda.is_available())
    except ImportError:
        env["torch_cuda"] = False
    return env


def default_videos(out: Path) -> list[Path]:
    """The suite's ragged check set (VP9, VP8, MJPEG; one rotated) plus H.264 that only NVDEC decodes."""
    from benchmarks import served_checks

    return served_checks.make_check_videos(out, (*served_checks.CHECK_SET, *served_checks.NVDEC_EXTRA))


def check_dali(repo: Path, videos: list[Path]) -> dict[str, Any]:
    """The repository's mixed pipeline on GPU 0 vs the reference, one batch of all videos."""
    from training.preprocessing import preprocess_video
    from training.preprocessing.dali import build_pipeline, run_pipeline
    from training.preprocessing.nvdec import plan_gpu_decode
    from triton_models.runtime import read_spec_file

    spec, _ = read_spec_file(repo / "frame_indices")
    plans = [plan_gpu_decode(v.read_bytes(), spec) for v in videos]
    pipe = build_pipeline(spec, device="mixed", batch_size=len(videos), device_id=0)
    outs = run_pipeline(pipe, [v.read_bytes() for v in videos], [p[0] for p in plans], [p[1] for p in plans])
    diffs = [float(np.abs(o - preprocess_video(v, spec).views).mean() * 255) for o, v in zip(outs, videos)]
    return {"mean_abs_diff_levels": diffs, "ok": all(d < 3.0 for d in diffs)}


def cpu_probs(cpu_repo: Path, videos: list[Path]) -> np.ndarray:
    """The cpu target's answer, in-process: reference preprocessing + its ONNX Runtime classifier."""
    from triton_models.runtime import OrtClassifier, preprocess_payload, read_spec_file

    spec, limits = read_spec_file(cpu_repo / "preprocess")
    clf = OrtClassifier(cpu_repo / "classifier" / "1" / "model.onnx")
    views = [preprocess_payload(np.fromfile(v, np.uint8), spec, limits) for v in videos]
    return clf(np.stack(views))


def serve_and_compare(gpu_repo: Path, cpu_repo: Path, videos: list[Path], binary: str, args: Any) -> dict:
    """Serve the gpu repository with the container's ``tritonserver`` and its backends and run the suite's
    served checks (:mod:`benchmarks.served_checks`): parity with the cpu target, batches in the DALI
    model's statistics, a damaged video in every position of a batch; then a perf_analyzer sweep."""
    from benchmarks import served_checks
    from triton_models.server import TritonServer

    work = Path(tempfile.mkdtemp())
    log = work / "tritonserver.log"
    server = TritonServer(
        gpu_repo, log_file=log, binary=binary, backend_dir=Path(binary).parents[1] / "backends"
    )
    result: dict[str, Any] = {"log": str(log)}
    with server:
        served = served_checks.classify(server.grpc_url, videos, concurrency=len(videos))
        result["parity"] = served_checks.parity(served, list(cpu_probs(cpu_repo, videos)))
        result["batch_sizes"] = sizes = served_checks.batch_sizes(server.http_url)
        damaged = served_checks.make_damaged_video(work)
        result["isolation"] = served_checks.isolation(server.grpc_url, videos[:3], damaged)
        # Without this project's dali backend (patch 0003) a failed batch fails every request in it.
        result["failed_batches_rerun"] = served_checks.failed_batches(log.read_text())
        pa = shutil.which("perf_analyzer")
        if pa is None:
            result["perf"] = "skipped: perf_analyzer not on PATH"
        else:
            result["perf"] = perf_sweep(pa, server.grpc_url, videos[0], args.concurrency)
    result["ok"] = bool(result["parity"]["ok"] and result["isolation"]["ok"] and max(sizes, default=0) > 1)
    return result


def perf_sweep(pa: str, url: str, video: Path, levels: Sequence[int]) -> list[dict[str, Any]]:
    """videos/s per concurrency, with NVDEC utilisation (%) sampled from nvidia-smi meanwhile."""
    work = Path(tempfile.mkdtemp())
    (work / "VIDEO").write_bytes(video.read_bytes())
    rows = []
    for c in levels:
        samples: list[float] = []
        stop = threading.Event()

        def sample(samples: list[float] = samples, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                out = _run(["nvidia-smi", "--query-gpu=utilization.decoder", "--format=csv,noheader,nounits"])
                if out:
                    samples.append(float(out.splitlines()[0]))
                time.sleep(0.5)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        out = _run(
            [
                pa,
                "-m",
                "video_classifier",
                "-u",
                url,
                "-i",
                "grpc",
                "--input-data",
                str(work),
                "--shape",
                f"VIDEO:{video.stat().st_size}",
                f"--concurrency-range={c}",
                "-f",
                str(work / "p.csv"),
            ],
            timeout=600,
        )
        stop.set()
        t.join()
        tput = None
        if out and (work / "p.csv").is_file():
            lines = (work / "p.csv").read_text().splitlines()
            tput = float(lines[1].split(",")[1]) if len(lines) > 1 else None
        rows.append({"concurrency": c, "videos_per_s": tput, "nvdec_util_pct": max(samples, default=None)})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--gpu-repo", default="model_repository_gpu")
    p.add_argument("--cpu-repo", default="model_repository")
    p.add_argument("--videos", nargs="*", default=None, help="default: the check set (VP9/VP8/MJPEG/H.264)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--out", default=None, help="also write the report as JSON here")
    args = p.parse_args(argv)
    gpu_repo, cpu_repo = Path(args.gpu_repo).resolve(), Path(args.cpu_repo).resolve()
    env = environment()
    report: dict[str, Any] = {"environment": env, "ran": {}, "skipped": {}}
    print(f"gpu_check: {json.dumps(env)}")
    videos = [Path(v) for v in args.videos] if args.videos else default_videos(Path(tempfile.mkdtemp()))
    ok = True
    have_gpu = env["gpu"] is not None
    plan = gpu_repo / "classifier" / "1" / "model.plan"
    if not gpu_repo.is_dir():
        report["skipped"]["plan"] = report["skipped"]["serve"] = f"no gpu repository at {gpu_repo}"
    elif plan.is_file():
        report["ran"]["plan"] = f"present: {plan}"
    elif env["tensorrt"] and have_gpu:
        from build_engines.tensorrt import build_engine

        serving = json.loads((gpu_repo / "serving.json").read_text())
        build_engine(
            gpu_repo / "classifier" / "model.onnx",
            plan,
            precision=serving["options"]["precision"],
            max_batch_size=serving["options"]["max_batch_size"],
        )
        report["ran"]["plan"] = f"built with TensorRT {env['tensorrt']}"
    else:
        report["skipped"]["plan"] = "needs TensorRT and an NVIDIA GPU"
    if env["dali"] and have_gpu and gpu_repo.is_dir():
        report["ran"]["dali"] = r = check_dali(gpu_repo, videos)
        ok &= r["ok"]
    else:
        report["skipped"]["dali"] = "needs DALI, an NVIDIA GPU and a gpu repository"
    if env["tritonserver"] and have_gpu and plan.is_file() and cpu_repo.is_dir():
        report["ran"]["serve"] = r = serve_and_compare(gpu_repo, cpu_repo, videos, env["tritonserver"], args)
        ok &= r["ok"]
    else:
        report["skipped"].setdefault(
            "serve", "needs tritonserver with the dali/tensorrt backends, a GPU, a plan and a cpu repository"
        )
    if env["torch_cuda"]:
        r = subprocess.run([sys.executable, "-m", "benchmarks.gpu_model_speed"], cwd=ROOT, timeout=1800)
        report["ran"]["model_speed"] = f"exit {r.returncode} (see benchmarks/results/gpu-*)"
    else:
        report["skipped"]["model_speed"] = "needs PyTorch with CUDA"
    for step, why in report["skipped"].items():
        print(f"gpu_check: skipped {step}: {why}")
    for step, what in report["ran"].items():
        print(f"gpu_check: {step}: {json.dumps(what)}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    ran, skipped = len(report["ran"]), len(report["skipped"])
    print(f"gpu_check: {'PASS' if ok else 'FAIL'} ({ran} steps ran, {skipped} skipped)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
