"""The benchmark suite: Triton (perf_analyzer) against in-process and naive baselines, one report.

``make bench`` / ``make bench QUICK=1`` run::

    python -m benchmarks.run [--quick] [--model tiny|base] [--url HOST:PORT --repository DIR]
                             [--soak MINUTES] [--out DIR]

Steps: pick the checkpoint (tiny: ``runs/synthetic_tiny/best.pt`` when present, else a seeded random tiny
TimeSformer; base: PP-TimeSformer ViT-B 8x224 with random weights, 400 classes), build the cpu model
repository, start a server on free ports (or use the one at ``--url``), write real encoded videos, derive
each composing model's input data by running the ensemble's steps on those videos through the server,
sweep concurrency with perf_analyzer for the ensemble and every composing model, time the two baselines,
optionally soak, then write ``results.json``, the raw CSVs, ``report.md`` and PNG plots into
``benchmarks/results/<timestamp>/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks import perf
from benchmarks.videos import BenchVideo, make_bench_videos, probe, save_manifest

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
TRAINED_TINY = ROOT / "runs" / "synthetic_tiny" / "best.pt"
TRITON_DTYPES = {
    "TYPE_UINT8": ("UINT8", np.uint8),
    "TYPE_INT32": ("INT32", np.int32),
    "TYPE_INT64": ("INT64", np.int64),
    "TYPE_FP16": ("FP16", np.float16),
    "TYPE_FP32": ("FP32", np.float32),
}


class BenchError(RuntimeError):
    """The benchmark cannot run as asked; the message says what is missing or wrong."""


# ----------------------------------------------------------------------------------------------------
# Plans: what --quick and --model change


def plan_for(model: str, quick: bool) -> dict[str, Any]:
    """Concurrency levels, measurement settings and baseline repeats for a model size.

    ViT-B 8x224 costs seconds per view on this CPU (3 views per video), so its sweep is two levels with
    count windows of a few requests; the tiny model gets a real sweep.
    """
    if model == "tiny":
        if quick:
            return {
                "ensemble_levels": [1, 2, 3, 4],
                "composing_levels": [1, 2],
                "settings": perf.PerfSettings(
                    request_count=24, stability_pct=15.0, max_trials=4, timeout_s=240
                ),
                "repeats": 3,
                "max_input_samples": 6,
            }
        return {
            "ensemble_levels": [1, 2, 3, 4, 6, 8],
            "composing_levels": [1, 2, 4],
            "settings": perf.PerfSettings(request_count=60, stability_pct=10.0, max_trials=6, timeout_s=600),
            "repeats": 8,
            "max_input_samples": 10,
        }
    if model == "base":
        return {
            "ensemble_levels": [1, 2] if quick else [1, 2, 3],
            "composing_levels": [1],
            "settings": perf.PerfSettings(
                request_count=3 if quick else 6, stability_pct=50.0, max_trials=3, timeout_s=600
            ),
            "repeats": 1,
            # (3, 3, 8, 224, 224) float32 views are 14 MB a video (19 MB as base64): keep the file small.
            "max_input_samples": 2,
            # Seconds per video: three files (synthetic 320x240, the 640x272 and the 720p real clips).
            "video_subset": ("synth_h264", "bikes", "bigbuckbunny"),
        }
    raise BenchError(f"--model must be tiny or base, got {model!r}")


# ----------------------------------------------------------------------------------------------------
# Checkpoint and repository


def bench_checkpoint(
    model: str, work_dir: Path, override: str | None = None, *, prefer_trained: bool = True
) -> tuple[Path, str]:
    """The checkpoint to serve and a note on where it came from (``prefer_trained=False``: the seeded
    random model even where `make demo` has trained one, so that the figures do not depend on that)."""
    from training.modeling.checkpoint import Checkpoint, save_checkpoint
    from training.preprocessing.spec import PreprocessSpec

    if override:
        path = Path(override)
        if not path.is_file():
            raise BenchError(f"{path}: no such checkpoint")
        return path, "given with --checkpoint"
    if model == "tiny" and prefer_trained and TRAINED_TINY.is_file():
        return TRAINED_TINY, "trained on synthetic videos by `make demo`"
    import torch

    from training.modeling import model as models

    torch.manual_seed(0)
    if model == "tiny":
        net = models.timesformer_tiny(num_classes=10, num_frames=8, img_size=32)
        spec = PreprocessSpec(num_frames=8, short_side=32, crop_size=32)
        note = "random weights (seed 0): timesformer_tiny, 8x32², 10 classes"
    else:
        net = models.pptimesformer_base_8x224(num_classes=400)
        # PP-TimeSformer's own test-time sampling window and normalisation.
        spec = PreprocessSpec(num_frames=8, sampling="paddle", short_side=224, crop_size=224)
        note = "random weights (seed 0): pptimesformer_base_8x224, 400 classes"
    path = work_dir / f"{model}_random.pt"
    ckpt = Checkpoint(
        model_config=net.model_config,
        preprocess=spec,
        state_dict={k: v.detach().clone() for k, v in net.state_dict().items()},
        meta={"source": "benchmarks.run (random weights)", "seed": 0},
    )
    save_checkpoint(ckpt, path)
    return path, note


def build_cpu_repository(
    checkpoint: Path, out: Path, options: Mapping[str, Any], quantize: Any = None
) -> dict[str, Any]:
    """The cpu model repository for ``checkpoint`` (ONNX Runtime classifier, PyAV preprocessing);
    ``quantize`` (:class:`build_engines.quantize.QuantizeOptions`) for an int8 one."""
    from build_engines.build import build_repository
    from build_engines.repository import RepositoryOptions

    opts = RepositoryOptions(target="cpu", **options)
    return build_repository(checkpoint, out, opts, quantize=quantize, log=lambda msg: tqdm.write(msg))


# ----------------------------------------------------------------------------------------------------
# Input data for every model: run the ensemble's steps on the bench videos through the server


def _config_tensors(cfg: Mapping[str, Any], key: str) -> dict[str, Mapping[str, Any]]:
    return {t["name"]: t for t in cfg.get(key, [])}


def ensemble_inputs(
    http_url: str, ensemble: str, videos: Sequence[BenchVideo], max_samples: int
) -> tuple[dict[str, list[dict[str, np.ndarray]]], dict[str, np.ndarray], list[str]]:
    """Real inputs for the ensemble and each composing model, and the ensemble's outputs per video.

    The ensemble's steps are followed in order, each composing model called over HTTP with the tensors the
    earlier steps produced, so that e.g. the classifier is benchmarked on the very views the preprocessing
    model makes of these videos. Shapes in the returned samples exclude the batch dimension. Also returns
    the ensemble's ``PROBS`` per video (for the agreement check) and the composing model names in order.
    """
    import tritonclient.http as httpclient

    from triton_models import contract

    ens_cfg = perf.model_config(http_url, ensemble)
    steps = ens_cfg.get("ensemble_scheduling", {}).get("step", [])
    if not steps:
        raise BenchError(f"{ensemble} is not an ensemble (no ensemble_scheduling steps)")
    configs = {s["model_name"]: perf.model_config(http_url, s["model_name"]) for s in steps}
    client = httpclient.InferenceServerClient(http_url, connection_timeout=600, network_timeout=600)
    samples: dict[str, list[dict[str, np.ndarray]]] = {ensemble: []}
    samples.update({s["model_name"]: [] for s in steps})
    probs: dict[str, np.ndarray] = {}
    try:
        for i, video in enumerate(tqdm(videos, desc="input data", unit="video")):
            keep = i < max_samples
            tensors: dict[str, np.ndarray] = {contract.VIDEO: video.as_array()}
            samples[ensemble].append({contract.VIDEO: tensors[contract.VIDEO]})
            for step in steps:
                name = step["model_name"]
                cfg = configs[name]
                batched = int(cfg.get("max_batch_size", 0)) > 0
                inputs, sample = [], {}
                for model_in, ens_tensor in step["input_map"].items():
                    arr = tensors[ens_tensor]
                    wire, dtype = TRITON_DTYPES[_config_tensors(cfg, "input")[model_in]["data_type"]]
                    arr = np.ascontiguousarray(arr, dtype=dtype)
                    sent = arr[None] if batched else arr
                    inp = httpclient.InferInput(model_in, list(sent.shape), wire)
                    inp.set_data_from_numpy(sent, binary_data=True)
                    inputs.append(inp)
                    sample[model_in] = arr
                outs = [httpclient.InferRequestedOutput(o, binary_data=True) for o in step["output_map"]]
                try:
                    result = client.infer(name, inputs, outputs=outs)
                except Exception as exc:  # InferenceServerException: name the model and the video
                    raise BenchError(f"{name} failed on {video.name}: {exc}") from exc
                for model_out, ens_tensor in step["output_map"].items():
                    out = result.as_numpy(model_out)
                    tensors[ens_tensor] = out[0] if batched else out
                if keep:
                    samples[name].append(sample)
            probs[video.name] = np.asarray(tensors[contract.PROBS], dtype=np.float32)
    finally:
        client.close()
    # The classifier input is the same size for every video: a few samples are plenty.
    return samples, probs, [s["model_name"] for s in steps]


def server_probs(url: str, protocol: str, videos: Sequence[BenchVideo]) -> dict[str, np.ndarray]:
    """The ensemble's answer for each video, through the shared client (what users call)."""
    from clients.core import infer_probs, make_client

    client = make_client(url, protocol)
    try:
        return {v.name: infer_probs(client, v.as_array()) for v in videos}
    finally:
        client.close()


# ----------------------------------------------------------------------------------------------------
# Soak: hold a concurrency level, count errors, sample the server's memory


def process_tree_rss(pid: int) -> tuple[float, int]:
    """RSS in MB of ``pid`` plus all its descendants (the python-backend stubs hold the models), and the
    number of processes counted."""
    import psutil

    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    total = 0
    n = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
            n += 1
    return total / 2**20, n


def find_server_pid(http_url: str) -> int | None:
    """The pid of the tritonserver listening on ``http_url``'s port, when this user may see it."""
    import psutil

    port = int(http_url.rsplit(":", 1)[1])
    with contextlib.suppress(psutil.AccessDenied, PermissionError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return int(conn.pid)
    return None


def soak(
    url: str,
    protocol: str,
    videos: Sequence[BenchVideo],
    *,
    minutes: float,
    concurrency: int,
    server_pid: int | None,
    sample_every_s: float = 5.0,
    window_s: float = 10.0,
) -> dict[str, Any]:
    """Send the videos in a loop from ``concurrency`` client threads for ``minutes``; count errors and
    sample the server's RSS every ``sample_every_s`` seconds. Returns the soak's summary for the report."""
    from clients.core import infer_probs, make_client

    if minutes <= 0:
        raise ValueError(f"soak minutes must be > 0, got {minutes}")
    if concurrency < 1:
        raise ValueError(f"soak concurrency must be >= 1, got {concurrency}")
    payloads = [v.as_array() for v in videos]
    duration = minutes * 60.0
    stop = threading.Event()
    lock = threading.Lock()
    done: list[tuple[float, float]] = []  # (end time since start, latency ms)
    errors: list[str] = []
    rss: list[dict[str, float]] = []
    t_start = time.perf_counter()

    def worker(k: int) -> None:
        client = make_client(url, protocol)
        i = k
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    infer_probs(client, payloads[i % len(payloads)])
                    with lock:
                        done.append((time.perf_counter() - t_start, (time.perf_counter() - t0) * 1e3))
                except Exception as exc:  # every failure is counted, none stops the soak
                    with lock:
                        errors.append(" ".join(str(exc).split())[:200])
                i += 1
        finally:
            client.close()

    def sampler() -> None:
        while not stop.is_set():
            if server_pid is not None:
                with contextlib.suppress(Exception):
                    mb, n = process_tree_rss(server_pid)
                    rss.append({"t_s": time.perf_counter() - t_start, "rss_mb": mb, "processes": n})
            stop.wait(sample_every_s)

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    threads.append(threading.Thread(target=sampler, daemon=True))
    for t in threads:
        t.start()
    with tqdm(total=int(duration), desc=f"soak c={concurrency}", unit="s") as bar:
        while (elapsed := time.perf_counter() - t_start) < duration:
            time.sleep(min(1.0, duration - elapsed))
            bar.n = int(time.perf_counter() - t_start)
            with lock:
                bar.set_postfix_str(f"{len(done)} ok, {len(errors)} errors")
            bar.refresh()
    stop.set()
    for t in threads:
        t.join(timeout=600)
    wall = time.perf_counter() - t_start
    return summarize_soak(
        done, errors, rss, minutes=minutes, concurrency=concurrency, wall_s=wall, window_s=window_s
    )


def summarize_soak(
    done: Sequence[tuple[float, float]],
    errors: Sequence[str],
    rss: Sequence[Mapping[str, float]],
    *,
    minutes: float,
    concurrency: int,
    wall_s: float,
    window_s: float = 10.0,
) -> dict[str, Any]:
    """Errors, throughput per window, latency percentiles and memory growth (mean RSS of the first vs
    the last minute; of the first vs last third when the soak is shorter than three minutes)."""
    lat = np.asarray([d[1] for d in done], dtype=np.float64)
    ends = np.asarray([d[0] for d in done], dtype=np.float64)
    windows = []
    for w0 in np.arange(0.0, wall_s, window_s):
        n = int(((ends >= w0) & (ends < w0 + window_s)).sum())
        span = min(window_s, wall_s - w0)
        if span > window_s / 2:
            windows.append({"t_s": float(w0 + span / 2), "videos_per_s": n / span})
    out: dict[str, Any] = {
        "minutes": minutes,
        "concurrency": concurrency,
        "wall_s": wall_s,
        "requests": len(done) + len(errors),
        "errors": len(errors),
        "error_messages": sorted(set(errors))[:10],
        "videos_per_s": len(done) / wall_s if wall_s > 0 else 0.0,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "windows": windows,
        "rss_samples": [dict(s) for s in rss],
    }
    if rss:
        t = np.asarray([s["t_s"] for s in rss])
        mb = np.asarray([s["rss_mb"] for s in rss])
        span = 60.0 if wall_s >= 180 else max(wall_s / 3, 1e-9)
        first = mb[t <= t[0] + span]
        last = mb[t >= t[-1] - span]
        out.update(
            rss_window="first minute" if span == 60.0 else f"first {span:.0f} s",
            rss_first_mb=float(first.mean()),
            rss_last_mb=float(last.mean()),
            rss_growth_mb=float(last.mean() - first.mean()),
            rss_min_mb=float(mb.min()),
            rss_max_mb=float(mb.max()),
        )
        half = t >= t[0] + (t[-1] - t[0]) / 2
        if half.sum() >= 3 and np.ptp(t[half]) > 0:
            # Allocators and shared-memory pools grow during warm-up and then plateau; a leak keeps a
            # slope through the second half.
            out["rss_second_half_mb_per_min"] = float(np.polyfit(t[half] / 60.0, mb[half], 1)[0])
    return out


def best_pass(*passes: Any) -> dict[str, Any]:
    """Summary of the fastest of a baseline's passes, with every pass's videos/s recorded."""
    best = max(passes, key=lambda b: b.videos_per_s)
    summary = best.summary()
    summary["passes_videos_per_s"] = [b.videos_per_s for b in passes]
    return summary


# ----------------------------------------------------------------------------------------------------
# Machine and versions


def machine_info() -> dict[str, str]:
    """CPU model, the ISA flags that decide int8/bf16 speed, cores and memory of this host (the server runs
    here too)."""
    import psutil

    from build_engines.quantize import cpu_flags

    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    return {
        "cpu": cpu,
        "cores (usable / logical)": f"{usable} / {os.cpu_count()}",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}, glibc {platform.libc_ver()[1] or '?'}",
        "python": platform.python_version(),
        "cpu flags": ", ".join(name for name, on in cpu_flags().items() if on)
        or "none of " + ", ".join(cpu_flags()),
    }


def versions(http_url: str | None) -> dict[str, str]:
    """Versions of everything on the measured path."""
    import av
    import onnxruntime
    import torch

    out = {
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "av (PyAV)": av.__version__,
        "FFmpeg (libavcodec)": ".".join(str(x) for x in av.library_versions.get("libavcodec", ())),
        "numpy": np.__version__,
    }
    try:
        out["perf_analyzer"] = perf.perf_analyzer_version()
    except perf.PerfError as exc:
        out["perf_analyzer"] = f"unavailable ({exc})"
    if http_url:
        with contextlib.suppress(perf.PerfError):
            meta = perf.server_metadata(http_url)
            out["Triton server"] = f"{meta.get('name', 'triton')} {meta.get('version', '?')}"
    return out


# ----------------------------------------------------------------------------------------------------
# The run


@contextlib.contextmanager
def serving(args: argparse.Namespace, repository: Path | None, log_file: Path) -> Iterator[dict[str, Any]]:
    """The server to measure: ours (started on free ports, stopped on exit) or the one at ``--url``."""
    if args.url:
        http_url = args.url.removeprefix("http://")
        pid = args.server_pid or find_server_pid(http_url)
        yield {
            "http_url": http_url,
            "url": args.grpc_url or http_url,
            "protocol": "grpc" if args.grpc_url else "http",
            "metrics_url": None,
            "pid": pid,
            "note": f"external server at {http_url}" + ("" if pid else " (pid unknown: no RSS sampling)"),
        }
        return
    from triton_models.server import TritonServer

    assert repository is not None
    server = TritonServer(repository, log_file=log_file)
    with tqdm(total=1, desc="tritonserver start", unit="server") as bar:
        server.start(timeout_s=600)
        bar.update(1)
    try:
        yield {
            "http_url": server.http_url,
            "url": server.grpc_url,
            "protocol": "grpc",
            "metrics_url": server.metrics_url,
            "pid": server.pid,
            "note": f"started here on free ports (log {log_file.name})",
        }
    finally:
        server.stop()


# Phases of a run, each callable alone: plan -> model -> videos -> (server) inputs, baselines, sweeps, soak
# -> report. ``results`` is the run's record; every phase adds its part.


def make_plan(args: argparse.Namespace) -> tuple[dict[str, Any], perf.PerfSettings]:
    """The sweep plan for ``--model``/``--quick`` with the command line's overrides applied."""
    plan = plan_for(args.model, args.quick)
    settings: perf.PerfSettings = plan["settings"]
    if args.max_concurrency:
        plan["ensemble_levels"] = list(range(1, args.max_concurrency + 1))
    if args.concurrency:
        plan["ensemble_levels"] = args.concurrency
    if args.composing_concurrency:
        plan["composing_levels"] = args.composing_concurrency
    if args.request_count:
        settings = replace(settings, request_count=args.request_count)
    if args.repeats:
        plan["repeats"] = args.repeats
    return plan, settings


def prepare_model(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> tuple[Path | None, Any]:
    """The repository to serve and the checkpoint behind it: built here from ``--model``/``--checkpoint``,
    or, for an external server, whatever ``--repository``/``--checkpoint`` name (either may be None)."""
    from training.modeling.checkpoint import load_checkpoint

    repository: Path | None = None
    ckpt = None
    if args.url:
        if args.repository:
            repository = Path(args.repository)
        else:
            results["notes"].append("external server without --repository: baselines skipped")
        if args.checkpoint:
            ckpt = load_checkpoint(args.checkpoint)
            results["checkpoint"] = args.checkpoint
    else:
        ckpt_path, source = bench_checkpoint(args.model, work, args.checkpoint)
        ckpt = load_checkpoint(ckpt_path)
        repository = work / "model_repository"
        options = {
            "max_batch_size": args.max_batch_size,
            "instances": args.instances,
            "preprocess_instances": args.preprocess_instances,
            "max_queue_delay_us": args.max_queue_delay_us,
            "precision": args.precision,
        }
        quantize = None
        if args.precision == "int8":
            from build_engines.quantize import QuantizeOptions

            # Random weights give near-uniform probabilities whose top-1 int8 may flip at will: their
            # agreement is recorded, not required (a trained checkpoint keeps the build's 0.99 default).
            default_floor = 0.0 if source.startswith("random weights") else 0.99
            floor = args.min_agreement if args.min_agreement is not None else default_floor
            calibration = Path(args.calibration) if args.calibration else None
            quantize = QuantizeOptions(calibration=calibration, min_agreement=floor)
        t0 = time.perf_counter()
        record = build_cpu_repository(ckpt_path, repository, options, quantize)
        if "quantization" in record:
            results["quantization"] = record["quantization"]
        results.update(
            checkpoint=str(ckpt_path.relative_to(ROOT) if ckpt_path.is_relative_to(ROOT) else ckpt_path),
            checkpoint_source=source,
            build_s=time.perf_counter() - t0,
            repository_options=options,
        )
    if ckpt is not None:
        results["model_config"] = dict(ckpt.model_config)
        results["spec"] = ckpt.preprocess.to_dict()
        results["views_per_video"] = ckpt.preprocess.num_views
    return repository, ckpt


def prepare_videos(args: argparse.Namespace, work: Path, plan: Mapping[str, Any]) -> list[BenchVideo]:
    """``--videos`` as given, or the generated bench set (the plan's subset of it)."""
    if args.videos:
        missing = [v for v in args.videos if not Path(v).is_file()]
        if missing:
            raise BenchError(f"--videos: no such file(s): {missing}")
        return [probe(v, "given") for v in args.videos]
    videos = make_bench_videos(work / "videos", quick=args.quick)
    if plan.get("video_subset"):
        videos = [v for v in videos if v.name.startswith(plan["video_subset"])]
    return videos


def prepare_inputs(
    http_url: str, videos: Sequence[BenchVideo], plan: Mapping[str, Any], work: Path, results: dict[str, Any]
) -> tuple[dict[str, Path], list[str], dict[str, np.ndarray]]:
    """perf_analyzer input data for the ensemble and each composing model, made by the server's own steps
    on the bench videos. Returns (data file per model, composing models, PROBS of that walk per video)."""
    from triton_models import contract

    samples, walk_probs, composing = ensemble_inputs(
        http_url, contract.ENSEMBLE, videos, plan["max_input_samples"]
    )
    data_files = {}
    for name, s in samples.items():
        data_files[name] = perf.write_input_data(work / f"input_{name}.json", s)
        shapes = sorted({tuple(int(d) for d in a.shape) for sample in s for a in sample.values()})
        tensors = ", ".join(sorted({k for sample in s for k in sample}))
        results["input_data"][name] = f"{len(s)} samples of {tensors}, shapes {shapes[:4]}" + (
            " ..." if len(shapes) > 4 else ""
        )
    return data_files, composing, walk_probs


def run_sweeps(
    srv: Mapping[str, Any],
    models: Sequence[str],
    plan: Mapping[str, Any],
    settings: perf.PerfSettings,
    data_files: Mapping[str, Path],
    raw: Path,
    results: dict[str, Any],
) -> None:
    """perf_analyzer over the plan's concurrency levels for each model (the ensemble first)."""
    from triton_models import contract

    levels = {
        m: plan["ensemble_levels"] if m == contract.ENSEMBLE else plan["composing_levels"] for m in models
    }
    with tqdm(total=sum(len(v) for v in levels.values()), desc="perf_analyzer", unit="level") as bar:
        for m in models:
            sw = perf.sweep(
                m,
                url=srv["url"],
                http_url=srv["http_url"],
                input_data=data_files[m],
                concurrencies=levels[m],
                settings=settings,
                out_dir=raw,
                metrics_url=srv["metrics_url"],
                progress=bar,
            )
            results["sweeps"][m] = sw.to_dict()
            unstable = [lv.row.concurrency for lv in sw.levels if not lv.stable]
            if unstable:
                results["notes"].append(
                    f"`{m}` at concurrency {unstable}: perf_analyzer's windows never agreed within "
                    f"{settings.stability_pct:g}% (shared cores); the last windows were taken"
                )


class Baselines:
    """The in-process and naive baselines on the same videos and weights, run once before and once after
    the sweeps (while the server idles): on shared cores the background load drifts, and taking each
    baseline's faster pass makes every ratio conservative for Triton."""

    def __init__(self, videos: Sequence[BenchVideo], repository: Path, ckpt: Any, repeats: int) -> None:
        self.videos, self.repository, self.ckpt, self.repeats = videos, repository, ckpt, repeats
        self.first: dict[str, Any] = {}
        self.ip_probs: dict[str, np.ndarray] = {}

    def before(
        self, probs_srv: Mapping[str, np.ndarray], walk_probs: Mapping[str, np.ndarray]
    ) -> dict[str, float]:
        """First pass of each; returns the agreement of the server's answers with the in-process ones."""
        from benchmarks import baselines as bl

        self.first["in-process"], self.ip_probs = bl.run_in_process(
            self.videos, self.repository, repeats=self.repeats
        )
        if self.ckpt is not None:
            self.first["naive"] = bl.run_naive(self.videos, self.ckpt, repeats=self.repeats)[0]
        return {
            "server vs in-process": bl.max_abs_diff(probs_srv, self.ip_probs),
            "ensemble steps vs in-process": bl.max_abs_diff(walk_probs, self.ip_probs),
        }

    def after(self, agreement: dict[str, float]) -> dict[str, Any]:
        """Second pass of each; returns the faster pass per baseline (and adds naive's agreement)."""
        from benchmarks import baselines as bl

        second, _ = bl.run_in_process(self.videos, self.repository, repeats=self.repeats)
        out = {"in-process": best_pass(self.first["in-process"], second)}
        if "naive" in self.first:
            nv_second, nv_probs = bl.run_naive(self.videos, self.ckpt, repeats=self.repeats)
            out["naive"] = best_pass(self.first["naive"], nv_second)
            agreement["naive vs in-process"] = bl.max_abs_diff(nv_probs, self.ip_probs)
        return out


def write_results(results: dict[str, Any], out: Path, model: str) -> Path:
    """``results.json``, the report and its plots; prints the one-line summary. Returns the report."""
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    from benchmarks.report import ratios, write_report

    report = write_report(results, out)
    r = ratios(results)
    summary = (
        f"bench {model}: best {r.get('ensemble_best_videos_per_s', float('nan')):.2f} videos/s "
        f"(c={int(r.get('ensemble_best_concurrency', 0))}), "
        f"x{r.get('vs_in_process', float('nan')):.2f} in-process, "
        f"x{r.get('vs_naive', float('nan')):.2f} naive, "
        f"p99@c1 x{r.get('p99_c1_vs_in_process_p99', float('nan')):.2f} in-process"
    )
    if "soak" in results:
        s = results["soak"]
        summary += f"; soak {s['errors']} errors, RSS {s.get('rss_growth_mb', float('nan')):+.1f} MB"
    print(f"{summary}; {results['wall_s']:.0f}s -> {report}")
    return report


def run(args: argparse.Namespace) -> Path:
    """Everything the CLI does, phase by phase; returns the run folder."""
    from triton_models import contract

    t_all = time.perf_counter()
    out = Path(args.out) if args.out else RESULTS_DIR / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"  # checkpoint, repository, input data (large; ignored with the folder)
    work.mkdir(exist_ok=True)
    plan, settings = make_plan(args)
    perf.perf_analyzer_version()  # fail early (missing libb64-0d / libcudart) before minutes of set-up
    results: dict[str, Any] = {
        "created": datetime.now().isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "model": args.model,
        "ensemble": contract.ENSEMBLE,
        "perf_settings": {k: v for k, v in asdict(settings).items() if k != "timeout_s"},
        "sweeps": {},
        "notes": [],
        "input_data": {},
    }
    repository, ckpt = prepare_model(args, work, results)
    videos = prepare_videos(args, work, plan)
    save_manifest(videos, out / "videos.json")
    results["videos"] = [asdict(v) for v in videos]

    with serving(args, repository, out / "tritonserver.log") as srv:
        results["server"] = srv["note"]
        results["machine"] = machine_info()
        results["versions"] = versions(srv["http_url"])
        settings = perf.PerfSettings(**{**asdict(settings), "protocol": srv["protocol"]})
        data_files, composing, walk_probs = prepare_inputs(srv["http_url"], videos, plan, work, results)
        probs_srv = server_probs(srv["url"], srv["protocol"], videos)
        baselines = None
        agreement: dict[str, float] = {}
        if repository is not None and not args.no_baselines:
            baselines = Baselines(videos, repository, ckpt, plan["repeats"])
            agreement = baselines.before(probs_srv, walk_probs)
        models = [contract.ENSEMBLE] + ([] if args.ensemble_only else composing)
        run_sweeps(srv, models, plan, settings, data_files, out / "raw", results)
        results["baselines"] = baselines.after(agreement) if baselines is not None else {}
        results["agreement"] = agreement
        if args.soak:
            if srv["pid"] is None:
                results["notes"].append("soak: server pid unknown (use --server-pid): RSS not sampled")
            results["soak"] = soak(
                srv["url"],
                srv["protocol"],
                videos,
                minutes=args.soak,
                concurrency=args.soak_concurrency,
                server_pid=srv["pid"],
            )

    results["wall_s"] = time.perf_counter() - t_all
    write_results(results, out, args.model)
    return out


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.replace(",", " ").split()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected concurrency levels like 1,2,4, got {text!r}") from exc
    if not levels or any(c < 1 for c in levels):
        raise argparse.ArgumentTypeError(f"concurrency levels must be >= 1, got {text!r}")
    return sorted(set(levels))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few videos, short windows, small sweep (< 10 min)")
    p.add_argument(
        "--model", choices=("tiny", "base"), default="tiny", help="tiny TimeSformer or ViT-B 8x224"
    )
    p.add_argument("--checkpoint", help="serve this native checkpoint instead of the --model default")
    p.add_argument("--url", help="HTTP host:port of a running server to measure (default: start one)")
    p.add_argument("--grpc-url", help="its gRPC host:port (perf_analyzer then uses gRPC; else HTTP)")
    p.add_argument("--repository", help="with --url: the repository that server serves (for the baselines)")
    p.add_argument("--server-pid", type=int, help="with --url: the server's pid (for RSS sampling)")
    p.add_argument("--soak", type=float, default=0.0, metavar="MINUTES", help="hold a concurrency this long")
    p.add_argument("--soak-concurrency", type=int, default=2, help="concurrency held during --soak")
    p.add_argument("--max-concurrency", type=int, help="ensemble sweep 1..N instead of the plan's levels")
    p.add_argument("--concurrency", type=_levels, help="ensemble levels, e.g. 1,2,4 (overrides the plan)")
    p.add_argument("--composing-concurrency", type=_levels, help="composing models' levels, e.g. 1,2")
    p.add_argument("--request-count", type=int, help="perf_analyzer requests per count window")
    p.add_argument("--repeats", type=int, help="timed passes over the videos per baseline")
    p.add_argument("--videos", nargs="+", help="measure these encoded files instead of the generated set")
    p.add_argument("--ensemble-only", action="store_true", help="skip the composing models' sweeps")
    p.add_argument("--no-baselines", action="store_true", help="skip the in-process and naive baselines")
    p.add_argument("--max-batch-size", type=int, default=4, help="repository: videos per dynamic batch")
    p.add_argument("--instances", type=int, default=1, help="repository: classifier instances")
    p.add_argument("--preprocess-instances", type=int, default=2, help="repository: decoding instances")
    p.add_argument("--max-queue-delay-us", type=int, default=5000, help="repository: dynamic batcher wait")
    p.add_argument(
        "--precision", choices=("fp32", "int8"), default="fp32", help="repository: classifier precision"
    )
    p.add_argument("--calibration", help="repository, int8: video list for static calibration (else dynamic)")
    p.add_argument(
        "--min-agreement", type=float, help="repository, int8: default 0.99 (0 for random weights)"
    )
    p.add_argument("--out", help="run folder (default benchmarks/results/<timestamp>)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: exit 0 when the report is written, 2 for bad arguments or inputs, 1 for a failed run."""
    args = build_parser().parse_args(argv)
    if args.soak < 0:
        print("error: --soak MINUTES must be >= 0", file=sys.stderr)
        return 2
    if args.soak_concurrency < 1 or (args.max_concurrency is not None and args.max_concurrency < 1):
        print("error: concurrencies must be >= 1", file=sys.stderr)
        return 2
    if (args.request_count is not None and args.request_count < 1) or (
        args.repeats is not None and args.repeats < 1
    ):
        print("error: --request-count and --repeats must be >= 1", file=sys.stderr)
        return 2
    if (args.repository or args.server_pid or args.grpc_url) and not args.url:
        print(
            "error: --repository/--server-pid/--grpc-url describe an external server: give --url too",
            file=sys.stderr,
        )
        return 2
    return exit_status(lambda: run(args))


def exit_status(work: Callable[[], Any]) -> int:
    """Run a benchmark's ``work`` as its CLI reports it: 0 when it returns; 2 for bad arguments or inputs
    and 1 when a server or perf_analyzer fails, each with one line on stderr naming the problem."""
    try:
        work()
    except (BenchError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except (perf.PerfError, RuntimeError, OSError) as exc:
        print(f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:2000]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
