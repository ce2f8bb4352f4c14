"""Triton's dali model batched vs one video per execution, and DALI's CPU decoder vs the PyAV reference per
video: measured on the same VP9 files, each comparison as a ratio from one run.

    python -m benchmarks.dali_speed [--checkpoint CKPT] [--quick] [--out DIR] [--rounds N]
                                    [--dali-instances 1 2] [--concurrency 1,4,8] [--max-batch-size 8]
                                    [--request-count N] [--repeats N]

**Served.** Two repositories of the gpu target in its cpu placement (``--target gpu --dali-device cpu``:
DALI's CPU decoder, ``KIND_CPU`` instances, the cpu target's ONNX Runtime classifier), equal in everything
but the DALI model's batch: *batched* (the DALI batch is ``--max-batch-size``) and *batch-1*
(``--dali-max-batch-size 1``: every video alone through DALI; the classifier still batches), each with
every ``--dali-instances`` count. Each repository is served in turn by Triton with this project's dali
backend (``make dali-backend``) and perf_analyzer measures the ``video_classifier`` ensemble at each
concurrency level on the VP9 files: videos/s, p50/p99 latency, and the DALI model's executions per batch
size from its own statistics (so that the batches are seen to form). Rounds alternate the order (batched
first, then batch-1 first, ...) so that drifting load on the shared cores hits both alike; the ratio
batched / batch-1 is given per round and for the medians over rounds.

**In process.** Per video on the same files: the DALI CPU pipeline as the repository serializes it
(batch 1, its thread count), fed by :func:`~training.preprocessing.nvdec.plan_gpu_decode` (the probe the
``frame_indices`` model runs), against the PyAV reference (``preprocess_video`` with the serving limits:
one decoder thread), the two alternating, median of N. Both produce the same (V, 3, T, S, S) views; their
mean absolute difference in 8-bit levels is reported as a sanity check. The DALI side is given with the
probe (what the served path pays: the reference's own probe is inside ``preprocess_video``) and without.
Measured for the checkpoint's spec and for the same spec at PP-TimeSformer's 224 frame size (resizing and
cropping cost more there; DALI does them in C++, the reference in NumPy).

With the default tiny model (seeded random weights, 8 x 32², 3 views) the classifier costs a few ms per
video: the ensemble's time is decoding, which is what this benchmark is about. Nothing here runs on a GPU:
docs/serving_gpu.md says what the figures do and do not tell about NVDEC.

Writes ``benchmarks/results/dali_speed-<timestamp>/``: ``results.json``, ``report.md``, ``dali_speed.png``,
``raw/`` (perf_analyzer CSVs and logs), the server logs and ``work/`` (checkpoint, repositories, videos).
Exit status: 0 when the report is written, 2 for bad arguments, 1 when a server or perf_analyzer fails.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks import perf, served_checks
from benchmarks.report import _fmt, _machine_section, _save, _table
from benchmarks.run import (
    RESULTS_DIR,
    BenchError,
    _levels,
    bench_checkpoint,
    exit_status,
    machine_info,
    versions,
)
from benchmarks.videos import BenchVideo, SyntheticVideo, make_synthetic_videos
from triton_models import contract

# NVDEC-sized VP9 (its minimum is 128x128, which the frame_indices screen enforces on both placements), a
# few seconds each, keyframe every 2 s: DALI's CPU decoder and PyAV both decode them.
FULL_VIDEOS = (SyntheticVideo("vp9", 320, 240, 75), SyntheticVideo("vp9", 640, 360, 125))
QUICK_VIDEOS = (SyntheticVideo("vp9", 320, 240, 50), SyntheticVideo("vp9", 640, 360, 50))
BATCHED, BATCH_1 = "batched", "batch-1"


@dataclass(frozen=True)
class Layout:
    """One repository of the comparison: the DALI model's batch (None: the repository's max batch size)
    and its instance count; everything else is the same in all layouts."""

    dali_max_batch_size: int | None
    dali_instances: int

    @property
    def kind(self) -> str:
        return BATCH_1 if self.dali_max_batch_size == 1 else BATCHED

    @property
    def name(self) -> str:
        return f"{self.kind}_i{self.dali_instances}"


def plan_for(quick: bool) -> dict[str, Any]:
    """Videos, levels, rounds, DALI instance counts, perf_analyzer settings and in-process repetitions.

    Count windows of a few dozen requests: a request costs 50-300 ms of decoding on two shared cores.
    """
    if quick:
        return {
            "videos": QUICK_VIDEOS,
            "levels": [1, 4, 8],
            "rounds": 1,
            "dali_instances": [1],
            # Loose stability: a quick run is a check that everything works, not a figure to quote.
            "settings": perf.PerfSettings(
                request_count=16, stability_pct=50.0, max_trials=3, timeout_s=240, collect_metrics=False
            ),
            "repeats": 3,
        }
    return {
        "videos": FULL_VIDEOS,
        "levels": [1, 4, 8],
        "rounds": 2,
        "dali_instances": [1, 2],
        "settings": perf.PerfSettings(
            request_count=40, stability_pct=15.0, max_trials=5, timeout_s=600, collect_metrics=False
        ),
        "repeats": 10,
    }


def round_order(layouts: Sequence[Layout], round_index: int) -> list[Layout]:
    """The layouts in the order round ``round_index`` serves them: as given in even rounds, reversed in odd
    ones (A B, B A, ...), so that neither side is always measured first after a quiet spell."""
    return list(layouts) if round_index % 2 == 0 else list(reversed(layouts))


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------------------------------
# In process: DALI's CPU pipeline vs the PyAV reference, per video


def _timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall and CPU milliseconds of one call (CPU time of every thread of this process: DALI's too)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3, out


def timing_summary(ms: Sequence[float]) -> dict[str, float]:
    """Median and best (the least disturbed repetition) of a list of timings."""
    return {"median_ms": float(statistics.median(ms)), "best_ms": float(min(ms)), "n": len(ms)}


def level_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """|a - b| of two view tensors on the 0..1 scale, in 8-bit levels: mean, 99th percentile, max."""
    if a.shape != b.shape:
        raise ValueError(f"outputs differ in shape: {a.shape} vs {b.shape}")
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64)) * 255.0
    return {"mean": float(diff.mean()), "p99": float(np.percentile(diff, 99)), "max": float(diff.max())}


def compare_decoders(
    videos: Sequence[BenchVideo], spec: Any, repeats: int, progress: Any = None
) -> dict[str, dict[str, Any]]:
    """Per video: PyAV reference vs probe + DALI CPU pipeline, alternating ``repeats`` times after one
    warm-up call of each; timings, ratios and the output difference."""
    from training.preprocessing import DecodeLimits, preprocess_video
    from training.preprocessing.dali import build_pipeline, run_pipeline, serialize_pipeline
    from training.preprocessing.nvdec import plan_gpu_decode

    limits = DecodeLimits().for_serving()  # what both served decoding steps run with
    # The thread count the repository's model.dali carries (the dali backend keeps the serialized one).
    threads = inspect.signature(serialize_pipeline).parameters["num_threads"].default
    pipe = build_pipeline(spec, device="cpu", batch_size=1, num_threads=threads)
    out: dict[str, dict[str, Any]] = {}
    for video in videos:
        data = video.read_bytes()

        def pyav(data: bytes = data) -> np.ndarray:
            return preprocess_video(data, spec, limits=limits).views

        def probe(data: bytes = data) -> tuple[np.ndarray, np.ndarray]:
            return plan_gpu_decode(data, spec, limits=limits, device="cpu")

        def dali(plan: tuple[np.ndarray, np.ndarray], data: bytes = data) -> np.ndarray:
            return run_pipeline(pipe, [data], [plan[0]], [plan[1]])[0]

        ref, plan = pyav(), probe()
        views = dali(plan)  # warm-up: first calls allocate buffers and load codecs
        times: dict[str, list[float]] = {k: [] for k in ("pyav", "probe", "dali", "dali_with_probe")}
        cpu: dict[str, list[float]] = {k: [] for k in times}
        for r in range(repeats):
            # Alternate which goes first, so that a burst of load from other work hits both alike.
            for side in ("pyav", "dali") if r % 2 == 0 else ("dali", "pyav"):
                if side == "pyav":
                    wall, cpu_ms, _ = _timed(pyav)
                    times["pyav"].append(wall)
                    cpu["pyav"].append(cpu_ms)
                    continue
                p_wall, p_cpu, plan = _timed(probe)
                d_wall, d_cpu, views = _timed(lambda plan=plan: dali(plan))
                for key, w, c in (("probe", p_wall, p_cpu), ("dali", d_wall, d_cpu)):
                    times[key].append(w)
                    cpu[key].append(c)
                times["dali_with_probe"].append(p_wall + d_wall)
                cpu["dali_with_probe"].append(p_cpu + d_cpu)
            if progress is not None:
                progress.update(1)
        summary = {
            k: {**timing_summary(v), "cpu_median_ms": float(statistics.median(cpu[k]))}
            for k, v in times.items()
        }
        out[video.name] = {
            "frames_sampled": int(len(plan[0])),
            "shape": list(views.shape),
            "times": summary,
            "dali_with_probe_over_pyav": summary["dali_with_probe"]["median_ms"]
            / summary["pyav"]["median_ms"],
            "dali_over_pyav": summary["dali"]["median_ms"] / summary["pyav"]["median_ms"],
            "best_dali_with_probe_over_pyav": summary["dali_with_probe"]["best_ms"]
            / summary["pyav"]["best_ms"],
            "levels": level_difference(views, ref),
            "dali_threads": threads,
        }
    return out


def large_crop_spec(spec: Any, size: int = 224) -> Any:
    """``spec`` at PP-TimeSformer's frame size (short side and crops ``size``), all else equal: the same
    decoding with the resize and crop work of the production model."""
    return spec.replace(short_side=size, crop_size=size)


# ----------------------------------------------------------------------------------------------------
# Served: the ensemble with a batched DALI model vs one with DALI batch 1


def build_layout(checkpoint: Path, layout: Layout, out: Path, max_batch_size: int) -> dict[str, Any]:
    """The gpu target's repository in its cpu placement for ``layout``; returns its options as recorded
    in ``serving.json``. All other options are the build's defaults, equal in every layout."""
    from build_engines.build import build_repository
    from build_engines.repository import RepositoryOptions

    opts = RepositoryOptions(
        target="gpu",
        dali_device="cpu",
        precision="fp32",
        max_batch_size=max_batch_size,
        dali_max_batch_size=layout.dali_max_batch_size,
        dali_instances=layout.dali_instances,
    )
    return build_repository(checkpoint, out, opts, log=lambda _msg: None)["options"]


def executions_delta(
    before: Mapping[int, tuple[int, int]], after: Mapping[int, tuple[int, int]]
) -> dict[int, dict[str, float]]:
    """What happened between two :func:`~benchmarks.served_checks.batch_statistics` snapshots: per batch
    size, the executions and their mean compute time (ms per execution and per video)."""
    out: dict[int, dict[str, float]] = {}
    for size, (count, ns) in sorted(after.items()):
        n0, ns0 = before.get(size, (0, 0))
        if count - n0 > 0:
            ms = (ns - ns0) / (count - n0) / 1e6
            out[size] = {"executions": count - n0, "ms_per_execution": ms, "ms_per_video": ms / max(size, 1)}
    return out


def level_record(
    level: perf.LevelResult, before: Mapping[int, tuple[int, int]], after: Mapping[int, tuple[int, int]]
) -> dict[str, Any]:
    """One concurrency level of one layout: perf_analyzer's figures, the DALI model's executions by batch
    size (every window of the level, retries included) and the composing models' stage breakdown."""
    execs = executions_delta(before, after)
    n_exec = sum(e["executions"] for e in execs.values())
    n_req = sum(size * e["executions"] for size, e in execs.items())
    row = level.row
    return {
        "concurrency": row.concurrency,
        "videos_per_s": row.throughput,
        "p50_ms": row.p50_ms,
        "p95_ms": row.p95_ms,
        "p99_ms": row.p99_ms,
        "stable": level.stable,
        "wall_s": level.wall_s,
        "dali_executions": {str(k): v for k, v in execs.items()},
        "dali_requests_per_execution": n_req / n_exec if n_exec else float("nan"),
        "stages": {name: asdict(st) for name, st in level.stages.items()},
    }


def measure_layout(
    repository: Path,
    layout: Layout,
    round_index: int,
    videos: Sequence[BenchVideo],
    input_data: Path,
    levels: Sequence[int],
    settings: perf.PerfSettings,
    out: Path,
    progress: Any = None,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Serve ``repository`` and measure the ensemble at each level; returns the round's record and the
    ensemble's ``PROBS`` per video (from the warm-up requests, for the layouts' agreement check)."""
    from triton_models.server import TritonServer

    tag = f"{layout.name}_r{round_index}"
    server = TritonServer(repository, log_file=out / f"tritonserver_{tag}.log")
    server.start(timeout_s=300)
    try:
        # Warm-up (first requests import modules and allocate DALI's buffers), and the answers to compare.
        probs = served_checks.classify(server.grpc_url, [Path(v.path) for v in videos], concurrency=1)
        errors = [str(p) for p in probs if isinstance(p, BaseException)]
        if errors:
            raise BenchError(f"{layout.name}: the ensemble refused a benchmark video: {errors[0]}")
        record: dict[str, Any] = {
            "layout": layout.name,
            "kind": layout.kind,
            "dali_instances": layout.dali_instances,
            "round": round_index,
            "load_before": load_average(),
            "levels": [],
        }
        for c in levels:
            before = served_checks.batch_statistics(server.http_url)
            sweep = perf.sweep(
                contract.ENSEMBLE,
                url=server.grpc_url,
                http_url=server.http_url,
                input_data=input_data,
                concurrencies=[c],
                settings=settings,
                out_dir=out / "raw" / tag,
                progress=progress,
            )
            after = served_checks.batch_statistics(server.http_url)
            record["levels"].append(level_record(sweep.levels[0], before, after))
        record["load_after"] = load_average()
    finally:
        server.stop()
    return record, probs


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def serving_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per DALI instance count and concurrency level: each side's videos/s in round order, the medians
    over rounds, the ratio batched / batch-1 of the medians and per round (round k of one side against
    round k of the other), and the median p50/p99 latencies. Keys are strings (JSON)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for inst in sorted({int(r["dali_instances"]) for r in runs}):
        mine = sorted((r for r in runs if int(r["dali_instances"]) == inst), key=lambda r: r["round"])
        levels = sorted({int(lv["concurrency"]) for r in mine for lv in r["levels"]})
        per_level: dict[str, dict[str, Any]] = {}
        for c in levels:

            def side(kind: str, key: str, c: int = c, mine: list = mine) -> list[float]:
                return [
                    float(lv[key])
                    for r in mine
                    if r["kind"] == kind
                    for lv in r["levels"]
                    if int(lv["concurrency"]) == c
                ]

            b, one = side(BATCHED, "videos_per_s"), side(BATCH_1, "videos_per_s")
            row: dict[str, Any] = {
                "batched_videos_per_s": b,
                "batch1_videos_per_s": one,
                "batched_median": _median(b),
                "batch1_median": _median(one),
                "ratio": _median(b) / _median(one) if b and one and _median(one) > 0 else float("nan"),
                "ratio_per_round": [x / y for x, y in zip(b, one) if y > 0],
            }
            for key in ("p50_ms", "p99_ms", "dali_requests_per_execution"):
                row[f"batched_{key}"] = _median(side(BATCHED, key))
                row[f"batch1_{key}"] = _median(side(BATCH_1, key))
            for kind, key in ((BATCHED, "batched"), (BATCH_1, "batch1")):
                row[f"{key}_unstable_rounds"] = sum(1 for stable in side(kind, "stable") if not stable)
            per_level[str(c)] = row
        out[str(inst)] = per_level
    return out


def execution_table(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Per layout and level, the DALI model's executions by batch size summed over rounds, with the
    execution-weighted mean compute ms per execution and per video."""
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for r in runs:
        for lv in r["levels"]:
            cell = out.setdefault(r["layout"], {}).setdefault(str(lv["concurrency"]), {})
            for size, e in lv["dali_executions"].items():
                acc = cell.setdefault(size, {"executions": 0, "total_ms": 0.0})
                acc["executions"] += e["executions"]
                acc["total_ms"] += e["ms_per_execution"] * e["executions"]
    for cells in out.values():
        for cell in cells.values():
            for size, acc in cell.items():
                acc["ms_per_execution"] = acc["total_ms"] / acc["executions"]
                acc["ms_per_video"] = acc["ms_per_execution"] / max(int(size), 1)
                del acc["total_ms"]
    return out


def layouts_agreement(probs: Mapping[str, Sequence[np.ndarray]]) -> dict[str, float]:
    """Largest PROBS difference of each layout from the first one, and whether top-1 was equal everywhere:
    the same pipeline and weights must give the same answers whatever the DALI batch."""
    names = list(probs)
    if not names:
        return {}
    ref = np.stack(probs[names[0]])  # (N, K)
    out: dict[str, float] = {}
    top1 = True
    for name in names[1:]:
        other = np.stack(probs[name])
        out[f"{name} vs {names[0]}"] = float(np.abs(other - ref).max())
        top1 &= bool((other.argmax(-1) == ref.argmax(-1)).all())
    out["top1_equal"] = float(top1)
    return out


# ----------------------------------------------------------------------------------------------------
# Report


def _rounds(xs: Sequence[float], nd: int = 2) -> str:
    return ", ".join(f"{x:.{nd}f}" for x in xs)


def _serving_section(serving: Mapping[str, Any]) -> list[str]:
    lines = ["## Served: batched ÷ batch-1, videos/s through `video_classifier`", ""]
    lines += [
        "Median over rounds, each round's figure in brackets (rounds alternate which layout goes first). "
        "Ratio > 1: the batched DALI model serves more videos per second.",
        "",
    ]
    for inst, per_level in serving["summary"].items():
        lines += [f"**{inst} DALI instance{'s' if inst != '1' else ''}**", ""]
        rows = []
        for c, s in per_level.items():
            rows.append(
                [
                    c,
                    f"{s['batched_median']:.2f} ({_rounds(s['batched_videos_per_s'])})",
                    f"{s['batch1_median']:.2f} ({_rounds(s['batch1_videos_per_s'])})",
                    f"**{s['ratio']:.2f}** ({_rounds(s['ratio_per_round'])})",
                    f"{_fmt(s['batched_p50_ms'], 0)} / {_fmt(s['batched_p99_ms'], 0)}",
                    f"{_fmt(s['batch1_p50_ms'], 0)} / {_fmt(s['batch1_p99_ms'], 0)}",
                    f"{_fmt(s['batched_dali_requests_per_execution'], 2)} / "
                    f"{_fmt(s['batch1_dali_requests_per_execution'], 2)}",
                    f"{s['batched_unstable_rounds']} / {s['batch1_unstable_rounds']}",
                ]
            )
        lines += _table(
            [
                "concurrency",
                "batched videos/s",
                "batch-1 videos/s",
                "batched ÷ batch-1",
                "batched p50 / p99 ms",
                "batch-1 p50 / p99 ms",
                "DALI videos per execution (batched / batch-1)",
                "unstable rounds (batched / batch-1)",
            ],
            rows,
        )
        lines.append("")
    lines += ["### The DALI model's executions by batch size (its own statistics, all rounds)", ""]
    rows = []
    for layout, cells in serving["executions"].items():
        for c, cell in cells.items():
            parts = [
                f"{size}: {int(e['executions'])} × {e['ms_per_execution']:.1f} ms "
                f"({e['ms_per_video']:.1f}/video)"
                for size, e in sorted(cell.items(), key=lambda kv: int(kv[0]))
            ]
            rows.append([layout, c, "; ".join(parts)])
    lines += _table(["layout", "concurrency", "batch size: executions × compute ms per execution"], rows)
    agreement = serving.get("agreement", {})
    if agreement:
        diffs = ", ".join(f"{k} {v:.2g}" for k, v in agreement.items() if k != "top1_equal")
        top1 = "equal" if agreement.get("top1_equal") else "**differs**"
        lines += ["", f"Answers across layouts: top-1 {top1}; largest PROBS difference {diffs or '–'}."]
    lines.append("")
    return lines


def _in_process_section(in_process: Mapping[str, Any]) -> list[str]:
    n = in_process["repeats"]
    lines = ["## In process: DALI's CPU pipeline vs the PyAV reference, per video", ""]
    lines += [
        f"Median of {n} alternating repetitions (wall ms; CPU ms of all threads in brackets). *probe* is "
        "`plan_gpu_decode`, which the served path runs in `frame_indices`; the reference's own probe is "
        "inside its figure. Ratios < 1: DALI is faster. |Δ|: the two outputs' difference in 8-bit levels.",
        "",
    ]
    for label, block in in_process["specs"].items():
        lines += [f"**{label}**", ""]
        rows = []
        for name, v in block["videos"].items():
            t = v["times"]

            def cell(key: str, t: Mapping[str, Any] = t) -> str:
                return f"{t[key]['median_ms']:.1f} ({t[key]['cpu_median_ms']:.0f})"

            lv = v["levels"]
            rows.append(
                [
                    name,
                    cell("pyav"),
                    cell("probe"),
                    cell("dali"),
                    cell("dali_with_probe"),
                    f"**{v['dali_with_probe_over_pyav']:.2f}**",
                    f"{v['dali_over_pyav']:.2f}",
                    f"{v['best_dali_with_probe_over_pyav']:.2f}",
                    f"{lv['mean']:.2f} / {lv['p99']:.1f} / {lv['max']:.1f}",
                ]
            )
        lines += _table(
            [
                "video",
                "PyAV ms",
                "probe ms",
                "DALI ms",
                "DALI + probe ms",
                "(DALI + probe) ÷ PyAV",
                "DALI ÷ PyAV",
                "same, best of each",
                "|Δ| mean / p99 / max",
            ],
            rows,
        )
        lines.append("")
    return lines


def render_markdown(results: Mapping[str, Any], plot: str | None) -> str:
    """The report: set-up, the served comparison, DALI's batches, the in-process comparison, load, machine."""
    serving = results["serving"]
    lines = [
        "# DALI: batched vs one video per execution; DALI's CPU decoder vs PyAV",
        "",
        f"Created {results['created']}{' (--quick)' if results['quick'] else ''}; {results['wall_s']:.0f} s. "
        f"Checkpoint: {results['checkpoint_source']}; spec {results['spec_summary']}.",
        "",
        "Repositories: `build_engines.build --target gpu --dali-device cpu` (DALI's CPU decoder, KIND_CPU, "
        "the cpu target's ONNX Runtime classifier), served by Triton with this project's dali backend; "
        f"common options {json.dumps(results['common_options'])}. "
        "Videos: "
        + ", ".join(f"{v['name']} ({v['size_bytes'] // 1024} KiB)" for v in results["videos"])
        + ".",
        "",
        f"perf_analyzer: {json.dumps(results['perf_settings'])}.",
        "",
    ]
    if plot:
        lines += [f"![videos/s vs concurrency]({plot})", ""]
    lines += _serving_section(serving)
    lines += _in_process_section(results["in_process"])
    lines += ["## Load (`uptime`) during the run", ""]
    lines += _table(["when", "load average 1 / 5 / 15 min"], [[w, _rounds(la)] for w, la in results["load"]])
    lines.append("")
    lines += _machine_section(results)
    for note in results.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


def plot_serving(summary: Mapping[str, Any], path: Path) -> Path:
    """videos/s against concurrency, batched and batch-1, per DALI instance count (rounds as dots)."""
    import matplotlib.pyplot as plt  # benchmarks.report selected the Agg backend

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for k, (inst, per_level) in enumerate(summary.items()):
        cs = [int(c) for c in per_level]
        for kind, key, style in ((BATCHED, "batched", "-"), (BATCH_1, "batch1", "--")):
            colour = f"C{2 * k + (kind == BATCH_1)}"
            ax.plot(
                cs,
                [per_level[str(c)][f"{key}_median"] for c in cs],
                style,
                marker="o",
                color=colour,
                label=f"{kind}, {inst} DALI instance{'s' if inst != '1' else ''}",
            )
            for c in cs:
                pts = per_level[str(c)][f"{key}_videos_per_s"]
                ax.scatter([c] * len(pts), pts, s=10, color=colour, alpha=0.5)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("videos / s (median over rounds)")
    ax.set_title("video_classifier, DALI CPU placement: batched vs batch-1")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def summary_line(results: Mapping[str, Any]) -> str:
    """One line: the ratios at each level for the first instance count, and the per-video ratios."""
    inst, per_level = next(iter(results["serving"]["summary"].items()))
    served = "/".join(f"{s['ratio']:.2f}" for s in per_level.values())
    levels = "/".join(per_level)
    first = next(iter(results["in_process"]["specs"].values()))["videos"]
    per_video = ", ".join(f"{v['dali_with_probe_over_pyav']:.2f} ({name})" for name, v in first.items())
    return (
        f"dali_speed: batched ÷ batch-1 videos/s x{served} at c={levels} ({inst} DALI instance"
        f"{'s' if inst != '1' else ''}); (DALI CPU + probe) ÷ PyAV per video {per_video}; "
        f"load {results['load'][0][1][0]:.1f} -> {results['load'][-1][1][0]:.1f} on {os.cpu_count()} cores"
    )


# ----------------------------------------------------------------------------------------------------
# The run


def run(args: argparse.Namespace) -> Path:
    """Everything the CLI does; returns the run folder."""
    import nvidia.dali

    from training.modeling.checkpoint import load_checkpoint
    from triton_models.server import DALI_BACKEND_LIBRARY

    t_all = time.perf_counter()
    plan = plan_for(args.quick)
    settings: perf.PerfSettings = plan["settings"]
    if args.request_count:
        settings = replace(settings, request_count=args.request_count)
    levels = args.concurrency or plan["levels"]
    rounds = args.rounds or plan["rounds"]
    repeats = args.repeats or plan["repeats"]
    instances = args.dali_instances or plan["dali_instances"]
    if not DALI_BACKEND_LIBRARY.is_file():
        raise BenchError(
            f"{DALI_BACKEND_LIBRARY}: Triton's dali backend is not built: run `make dali-backend`"
        )
    perf.perf_analyzer_version()  # fail early (missing libb64-0d / libcudart) before minutes of set-up
    out = Path(args.out) if args.out else RESULTS_DIR / f"dali_speed-{datetime.now():%Y%m%d-%H%M%S}"
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    load: list[tuple[str, list[float]]] = [("start", load_average())]
    results: dict[str, Any] = {
        "created": datetime.now().isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "machine": machine_info(),
        "load": load,
        "notes": [],
    }

    ckpt_path, source = bench_checkpoint("tiny", work, args.checkpoint, prefer_trained=False)
    spec = load_checkpoint(ckpt_path).preprocess
    videos = make_synthetic_videos(work / "videos", plan["videos"])
    results.update(
        checkpoint=_relative(ckpt_path, out),
        checkpoint_source=source,
        spec=spec.to_dict(),
        spec_summary=f"{spec.num_frames} frames x {spec.crop_size}², {spec.num_views} views, {spec.sampling}",
        videos=[{**asdict(v), "path": _relative(Path(v.path), out)} for v in videos],
    )

    # In process first, while no server runs.
    specs = {f"checkpoint spec ({results['spec_summary']})": spec}
    if spec.crop_size != 224:
        big = large_crop_spec(spec)
        specs[f"the same at 224 ({big.num_frames} frames x 224², short side 224, {big.num_views} views)"] = (
            big
        )
    in_process: dict[str, Any] = {"repeats": repeats, "specs": {}}
    with tqdm(total=len(specs) * len(videos) * repeats, desc="in process (PyAV vs DALI)", unit="rep") as bar:
        for label, s in specs.items():
            in_process["specs"][label] = {
                "spec": s.to_dict(),
                "videos": compare_decoders(videos, s, repeats, bar),
            }
    results["in_process"] = in_process
    load.append(("after in-process", load_average()))

    layouts = [Layout(b, n) for n in instances for b in (None, 1)]
    repos: dict[str, Path] = {}
    options: dict[str, Any] = {}
    for layout in tqdm(layouts, desc="build repositories", unit="repo"):
        repos[layout.name] = work / f"repo_{layout.name}"
        options[layout.name] = build_layout(ckpt_path, layout, repos[layout.name], args.max_batch_size)
    varying = ("dali_instances", "dali_max_batch_size")
    results["common_options"] = {k: v for k, v in options[layouts[0].name].items() if k not in varying}
    results["layouts"] = {name: {k: o[k] for k in varying} for name, o in options.items()}
    results["perf_settings"] = {k: v for k, v in asdict(settings).items() if k != "timeout_s"}
    results["levels"], results["rounds"] = list(levels), rounds
    data = perf.write_input_data(
        work / "input_video_classifier.json", [{contract.VIDEO: v.as_array()} for v in videos]
    )

    runs: list[dict[str, Any]] = []
    probs: dict[str, list[np.ndarray]] = {}
    with tqdm(total=rounds * len(layouts) * len(levels), desc="perf_analyzer", unit="level") as bar:
        for r in range(rounds):
            for layout in round_order(layouts, r):
                record, answers = measure_layout(
                    repos[layout.name], layout, r, videos, data, levels, settings, out, bar
                )
                runs.append(record)
                probs.setdefault(layout.name, answers)
                load.append((f"after {layout.name}, round {r + 1}", record["load_after"]))
    results["serving"] = {
        "runs": runs,
        "summary": serving_summary(runs),
        "executions": execution_table(runs),
        "agreement": layouts_agreement(probs),
    }
    if not results["serving"]["agreement"].get("top1_equal", 1.0):
        results["notes"].append("the layouts' top-1 answers differ: see the agreement line")
    unstable = sum(1 for r in runs for lv in r["levels"] if not lv["stable"])
    if unstable:
        results["notes"].append(
            f"{unstable} level(s) never met perf_analyzer's {settings.stability_pct:g}% stability on these "
            "shared cores; their last windows were taken (the 'unstable rounds' column counts them)"
        )
    results["versions"] = {**versions(None), "DALI": nvidia.dali.__version__}
    results["wall_s"] = time.perf_counter() - t_all
    return write_results(results, out)


def _relative(path: Path, out: Path) -> str:
    """``path`` relative to the run folder when it lies inside it (results stay valid when the folder
    moves), else as given."""
    path = path.resolve()
    return str(path.relative_to(out.resolve())) if path.is_relative_to(out.resolve()) else str(path)


def write_results(results: dict[str, Any], out: Path) -> Path:
    """``results.json``, ``report.md`` and ``dali_speed.png`` in ``out``; prints the one-line summary."""
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    plot = plot_serving(results["serving"]["summary"], out / "dali_speed.png")
    report = out / "report.md"
    report.write_text(render_markdown(results, plot.name))
    print(f"{summary_line(results)}; {results['wall_s']:.0f}s -> {report}")
    return out


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dali_speed", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint", help="native checkpoint (default: a seeded random timesformer_tiny, 8x32²)"
    )
    p.add_argument(
        "--quick", action="store_true", help="short clips, short windows, one round, 1 DALI instance"
    )
    p.add_argument("--out", help="run folder (default benchmarks/results/dali_speed-<timestamp>)")
    p.add_argument("--rounds", type=_positive, help="times each layout is served (order alternates)")
    p.add_argument(
        "--dali-instances", type=_positive, nargs="+", help="DALI instance counts to compare at (default 1 2)"
    )
    p.add_argument("--concurrency", type=_levels, help="ensemble levels, e.g. 1,4,8 (the default)")
    p.add_argument(
        "--max-batch-size", type=_positive, default=8, help="videos per batch (the batched DALI's)"
    )
    p.add_argument("--request-count", type=_positive, help="perf_analyzer requests per count window")
    p.add_argument("--repeats", type=_positive, help="in-process repetitions per video and side")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: 0 when the report is written, 2 for bad arguments, 1 when a server or perf_analyzer
    fails."""
    args = build_parser().parse_args(argv)
    if args.max_batch_size < 2:
        print("error: --max-batch-size must be >= 2 (batched is compared with batch 1)", file=sys.stderr)
        return 2
    return exit_status(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
