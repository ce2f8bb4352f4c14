"""Turn one benchmark run's ``results.json`` into ``report.md`` and PNG plots, in the same folder.

The run (``benchmarks/run.py``) only measures and writes ``results.json``; everything a reader sees is
made here, so a report can be rebuilt or restyled later without measuring again::

    python -m benchmarks.report benchmarks/results/<timestamp>
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.perf import SweepResult  # noqa: E402

STAGES = ("queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms", "overhead_ms")
STAGE_LABELS = {
    "queue_ms": "queue",
    "compute_input_ms": "compute input",
    "compute_infer_ms": "compute infer",
    "compute_output_ms": "compute output",
    "overhead_ms": "other",
}

# The goals the serving stack is held to, as ratios from one run.
TARGET_VS_IN_PROCESS = 0.9  # ensemble best videos/s >= 0.9 x in-process
TARGET_VS_NAIVE = 3.0  # ensemble best videos/s >= 3 x naive
TARGET_P99_C1 = 1.2  # ensemble p99 at concurrency 1 <= 1.2 x in-process p99


class ReportError(ValueError):
    """A results file that cannot be reported (missing or malformed); the message names it."""


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """``results.json`` of a run folder, checked for the keys the report needs."""
    path = Path(run_dir) / "results.json"
    try:
        results = json.loads(path.read_text())
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(results, dict):
        raise ReportError(f"{path}: expected a JSON object")
    for key in ("sweeps", "ensemble"):
        if key not in results:
            raise ReportError(f"{path}: missing key {key!r}")
    return results


def _fmt(x: Any, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


# ----------------------------------------------------------------------------------------------------
# Figures


def ratios(results: Mapping[str, Any]) -> dict[str, float]:
    """The headline ratios: ensemble best throughput over each baseline's, p99 at c=1 over in-process."""
    sweeps = results["sweeps"]
    ens = sweeps.get(results["ensemble"])
    base = results.get("baselines", {})
    out: dict[str, float] = {}
    if not ens:
        return out
    sweep = SweepResult.from_dict(ens)
    best = sweep.best.row
    out["ensemble_best_videos_per_s"] = best.throughput
    out["ensemble_best_concurrency"] = float(best.concurrency)
    c1 = sweep.at(1)
    if c1 is not None:
        out["ensemble_c1_p99_ms"] = c1.row.p99_ms
        out["ensemble_c1_p50_ms"] = c1.row.p50_ms
    ip = base.get("in-process")
    if ip and ip.get("videos_per_s"):
        out["vs_in_process"] = best.throughput / ip["videos_per_s"]
        if c1 is not None:
            out["p99_c1_vs_in_process_p99"] = c1.row.p99_ms / ip["p99_ms"]
            out["p50_c1_vs_in_process_p50"] = c1.row.p50_ms / ip["p50_ms"]
    nv = base.get("naive")
    if nv and nv.get("videos_per_s"):
        out["vs_naive"] = best.throughput / nv["videos_per_s"]
    return out


def bottleneck(results: Mapping[str, Any]) -> str | None:
    """One sentence naming where the ensemble's time goes at its best concurrency."""
    ens = results["sweeps"].get(results["ensemble"])
    if not ens:
        return None
    best = SweepResult.from_dict(ens).best
    composing = {k: v for k, v in best.stages.items() if k != results["ensemble"]}
    if not composing:
        return None
    busy = {k: v.compute_input_ms + v.compute_infer_ms + v.compute_output_ms for k, v in composing.items()}
    top = max(busy, key=busy.get)
    total = sum(busy.values()) or 1.0
    queued = max(composing, key=lambda k: composing[k].queue_ms)
    return (
        f"At concurrency {best.row.concurrency} (best throughput), `{top}` takes "
        f"{100 * busy[top] / total:.0f}% of the composing models' compute time "
        f"({busy[top]:.1f} ms per video); "
        f"requests wait longest in front of `{queued}` ({composing[queued].queue_ms:.1f} ms queue)."
    )


# ----------------------------------------------------------------------------------------------------
# Plots


def _save(fig: Any, path: Path) -> Path:
    """Lay out, write the PNG and free the figure (every plot ends the same way)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_throughput(results: Mapping[str, Any], path: Path) -> Path:
    """Videos/s against concurrency for each measured model, baselines as horizontal lines."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, d in results["sweeps"].items():
        sw = SweepResult.from_dict(d)
        xs = [lv.row.concurrency for lv in sw.levels]
        ys = [lv.row.throughput for lv in sw.levels]
        style = "-o" if name == results["ensemble"] else "--."
        ax.plot(xs, ys, style, label=f"{name} (Triton)")
    for i, (name, b) in enumerate(results.get("baselines", {}).items()):
        ax.axhline(b["videos_per_s"], color=f"C{5 + i}", ls=":", label=f"{name} baseline")
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("inferences / s (videos / s)")
    ax.set_title(f"Throughput vs concurrency ({results.get('model', '?')} model)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    _, hi = ax.get_ylim()
    ys = [ln.get_ydata() for ln in ax.get_lines()]
    finite = [float(y) for yy in ys for y in yy if float(y) > 0]
    if finite and max(finite) / min(finite) > 20:
        # A cheap composing model (the tiny classifier) would flatten every other line on a linear axis.
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0, top=hi)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_latency(results: Mapping[str, Any], path: Path) -> Path:
    """p50/p95/p99 latency of the ensemble against its throughput (one point per concurrency)."""
    sw = SweepResult.from_dict(results["sweeps"][results["ensemble"]])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [lv.row.throughput for lv in sw.levels]
    for key, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        ax.plot(xs, [getattr(lv.row, key) for lv in sw.levels], "-o", label=label)
    for lv in sw.levels:
        ax.annotate(f"c={lv.row.concurrency}", (lv.row.throughput, lv.row.p99_ms), fontsize=7)
    ip = results.get("baselines", {}).get("in-process")
    if ip:
        ax.plot([ip["videos_per_s"]], [ip["p99_ms"]], "k*", ms=10, label="in-process p99")
    ax.set_xlabel("videos / s")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{results['ensemble']}: latency percentiles vs throughput")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_stages(results: Mapping[str, Any], path: Path) -> Path:
    """Stacked bars per concurrency: each composing model's queue / compute input / infer / output."""
    ensemble = results["ensemble"]
    sw = SweepResult.from_dict(results["sweeps"][ensemble])
    models = sorted({m for lv in sw.levels for m in lv.stages if m != ensemble})
    fig, ax = plt.subplots(figsize=(10, 4.8))
    labels = [f"c={lv.row.concurrency}" for lv in sw.levels]
    bottoms = [0.0] * len(sw.levels)
    cmap = plt.get_cmap("tab20")
    k = 0
    for m in models:
        for stage in STAGES:
            vals = [getattr(lv.stages[m], stage) if m in lv.stages else 0.0 for lv in sw.levels]
            if not any(v > 0 for v in vals):
                continue
            ax.bar(labels, vals, bottom=bottoms, label=f"{m}: {STAGE_LABELS[stage]}", color=cmap(k % 20))
            bottoms = [b + v for b, v in zip(bottoms, vals)]
            k += 1
    p50 = [lv.row.p50_ms for lv in sw.levels]
    ax.plot(labels, p50, "k_", ms=30, mew=2, label="client p50 latency")
    ax.set_ylabel("ms per video")
    ax.set_title(f"{ensemble}: where a request's time goes (server statistics)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_soak(soak: Mapping[str, Any], path: Path) -> Path:
    """Server RSS (with its backend stub processes) over the soak, and throughput per interval."""
    samples = soak.get("rss_samples", [])
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if samples:
        t = [s["t_s"] / 60 for s in samples]
        ax.plot(t, [s["rss_mb"] for s in samples], "-", label="server + stubs RSS (MB)")
        ax.set_ylabel("RSS (MB)")
    ax.set_xlabel("minutes")
    ax.set_title(f"Soak at concurrency {soak.get('concurrency')}: {soak.get('errors', '?')} errors")
    ax.grid(alpha=0.3)
    windows = soak.get("windows", [])
    if windows:
        ax2 = ax.twinx()
        ax2.plot(
            [w["t_s"] / 60 for w in windows], [w["videos_per_s"] for w in windows], "C1.", label="videos/s"
        )
        ax2.set_ylabel("videos / s", color="C1")
        ax2.set_ylim(bottom=0)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------
# Markdown


def _targets_section(results: Mapping[str, Any], r: Mapping[str, float]) -> list[str]:
    rows = []

    def row(name: str, value: float | None, goal: str, ok: bool | None) -> None:
        verdict = "–" if ok is None else ("met" if ok else "**missed**")
        rows.append([name, _fmt(value, 2), goal, verdict])

    v = r.get("vs_in_process")
    row(
        "best ensemble videos/s ÷ in-process",
        v,
        f">= {TARGET_VS_IN_PROCESS}",
        None if v is None else v >= TARGET_VS_IN_PROCESS,
    )
    v = r.get("vs_naive")
    row(
        "best ensemble videos/s ÷ naive",
        v,
        f">= {TARGET_VS_NAIVE}",
        None if v is None else v >= TARGET_VS_NAIVE,
    )
    v = r.get("p99_c1_vs_in_process_p99")
    row(
        "ensemble p99 at c=1 ÷ in-process p99",
        v,
        f"<= {TARGET_P99_C1}",
        None if v is None else v <= TARGET_P99_C1,
    )
    v = r.get("p50_c1_vs_in_process_p50")
    row("ensemble p50 at c=1 ÷ in-process p50", v, "(for reference)", None)
    return _table(["ratio", "value", "target", ""], rows)


def _sweep_table(sw: SweepResult) -> list[str]:
    rows = [
        [
            lv.row.concurrency,
            _fmt(lv.row.throughput, 2),
            _fmt(lv.row.p50_ms),
            _fmt(lv.row.p95_ms),
            _fmt(lv.row.p99_ms),
            _fmt(lv.row.avg_ms),
            _fmt(lv.row.network_ms + lv.row.client_send_ms + lv.row.client_recv_ms),
            "yes" if lv.stable else "no",
        ]
        for lv in sw.levels
    ]
    return _table(
        ["concurrency", "videos/s", "p50 ms", "p95 ms", "p99 ms", "avg ms", "client+network ms", "stable"],
        rows,
    )


def _stage_table(sw: SweepResult, ensemble: str) -> list[str]:
    rows = []
    for lv in sw.levels:
        for m, st in sorted(lv.stages.items(), key=lambda kv: (kv[0] == ensemble, kv[0])):
            rows.append(
                [
                    lv.row.concurrency,
                    f"`{m}`" + (" (whole)" if m == ensemble else ""),
                    st.requests,
                    _fmt(st.batch, 2),
                    _fmt(st.queue_ms, 2),
                    _fmt(st.compute_input_ms, 2),
                    _fmt(st.compute_infer_ms, 2),
                    _fmt(st.compute_output_ms, 2),
                    _fmt(st.overhead_ms, 2),
                    _fmt(st.total_ms, 2),
                    st.failures,
                ]
            )
    return _table(
        [
            "c",
            "model",
            "requests",
            "batch",
            "queue",
            "compute input",
            "compute infer",
            "compute output",
            "other",
            "total ms",
            "failures",
        ],
        rows,
    )


def _header_section(results: Mapping[str, Any]) -> list[str]:
    """Title, run kind, checkpoint, model, preprocessing and server."""
    lines = [
        f"# Benchmark: {results.get('model', '?')} model through Triton ({results.get('created', '')})",
        "",
    ]
    if results.get("quick"):
        lines += [
            "Quick run (`--quick`): few videos, short windows, small sweep; figures are indicative.",
            "",
        ]
    mc = results.get("model_config", {})
    spec = results.get("spec", {})
    lines += [
        f"- checkpoint: `{results.get('checkpoint', '?')}` ({results.get('checkpoint_source', '')})",
        f"- model: embed {mc.get('embed_dim')}, depth {mc.get('depth')}, patch {mc.get('patch_size')}, "
        f"{mc.get('num_frames')} frames x {mc.get('img_size')}², {mc.get('num_classes')} classes, "
        f"attention {mc.get('attention_type')}",
        f"- preprocessing: {spec.get('num_frames')} frames ({spec.get('sampling')}), short side "
        f"{spec.get('short_side')}, {spec.get('crops')} crops of {spec.get('crop_size')} -> "
        f"{results.get('views_per_video', '?')} views per video",
        f"- server: {results.get('server', '?')}",
        f"- classifier precision: {_precision_line(results)}",
        "",
        "## Headline",
        "",
    ]
    return lines


def _headline_section(results: Mapping[str, Any]) -> list[str]:
    """Best throughput, targets, the bottleneck and the run's notes."""
    r = ratios(results)
    lines: list[str] = []
    if r:
        lines += [
            f"Best ensemble throughput **{_fmt(r.get('ensemble_best_videos_per_s'), 2)} videos/s** at "
            f"concurrency {int(r.get('ensemble_best_concurrency', 0))}; p99 at concurrency 1: "
            f"{_fmt(r.get('ensemble_c1_p99_ms'))} ms.",
            "",
        ]
        lines += _targets_section(results, r)
        lines.append("")
    note = bottleneck(results)
    if note:
        lines += [note, ""]
    for n in results.get("notes", []):
        lines += [f"- {n}"]
    if results.get("notes"):
        lines.append("")

    return lines


def _triton_section(results: Mapping[str, Any]) -> list[str]:
    """perf_analyzer tables per model and the ensemble's stage breakdown."""
    ensemble = results["ensemble"]
    lines: list[str] = []
    lines += ["## Triton (perf_analyzer)", ""]
    settings = results.get("perf_settings", {})
    if settings:
        lines += [
            "Measurement: "
            + ", ".join(f"{k} {v}" for k, v in settings.items() if k not in ("timeout_s",))
            + ". Latency is per request (one video) as the client sees it.",
            "",
        ]
    for name, d in results["sweeps"].items():
        sw = SweepResult.from_dict(d)
        kind = "ensemble (what users call)" if name == ensemble else "composing model, called directly"
        lines += [f"### `{name}` — {kind}", ""]
        inputs = results.get("input_data", {}).get(name)
        if inputs:
            lines += [f"Input data: {inputs}", ""]
        lines += _sweep_table(sw)
        lines.append("")
    ens = results["sweeps"].get(ensemble)
    if ens:
        lines += [
            "### Stage breakdown of the ensemble (server statistics, ms per video)",
            "",
            "From `/v2/models/stats` before and after each level: *queue* = waiting for a free instance, "
            "*compute input/infer/output* = the backend copying inputs in, running, copying outputs out; "
            "*other* = the rest of the request time (scheduling, ensemble hand-off). `batch` = requests per "
            "execution (dynamic batching).",
            "",
        ]
        lines += _stage_table(SweepResult.from_dict(ens), ensemble)
        lines.append("")

    return lines


def _baselines_section(results: Mapping[str, Any]) -> list[str]:
    """The in-process and naive baselines, per-video latencies and the agreement check."""
    lines: list[str] = []
    base = results.get("baselines", {})
    if base:
        lines += [
            "## Baselines (this process, sequential, same videos and weights)",
            "",
            "Each baseline ran once before and once after the perf_analyzer sweeps; the faster pass is the "
            "one compared with (background load on shared cores drifts; this keeps the ratios conservative).",
            "",
        ]
        rows = [
            [
                name,
                b.get("count", "–"),
                _fmt(b.get("videos_per_s"), 2)
                + (
                    " (passes " + ", ".join(_fmt(x, 2) for x in b["passes_videos_per_s"]) + ")"
                    if len(b.get("passes_videos_per_s", [])) > 1
                    else ""
                ),
                _fmt(b.get("p50_ms")),
                _fmt(b.get("p95_ms")),
                _fmt(b.get("p99_ms")),
                b.get("threads", ""),
                b.get("description", ""),
            ]
            for name, b in base.items()
        ]
        lines += _table(
            ["baseline", "videos", "videos/s", "p50 ms", "p95 ms", "p99 ms", "threads", "what"], rows
        )
        lines.append("")
        names = [v["name"] for v in results.get("videos", [])]
        if names:
            lines += ["Mean latency per input file (ms):", ""]
            lines += _table(
                ["video", *base.keys()],
                [[n, *(_fmt(b.get("per_video_ms", {}).get(n)) for b in base.values())] for n in names],
            )
            lines.append("")
    agree = results.get("agreement", {})
    if agree:
        lines += [
            "Same computation check (max |Δ probability| over the videos): "
            + ", ".join(f"{k} {v:.2e}" for k, v in agree.items()),
            "",
        ]

    return lines


def _videos_section(results: Mapping[str, Any]) -> list[str]:
    """The input videos."""
    lines: list[str] = []
    videos = results.get("videos", [])
    if videos:
        lines += ["## Input videos", ""]
        lines += _table(
            ["file", "source", "codec", "size", "frames", "fps", "bytes"],
            [
                [
                    v["name"],
                    v["source"],
                    v["codec"],
                    f"{v['width']}x{v['height']}",
                    v["frames"],
                    v["fps"],
                    v["size_bytes"],
                ]
                for v in videos
            ],
        )
        lines.append("")

    return lines


def _soak_section(results: Mapping[str, Any]) -> list[str]:
    """The soak: errors, throughput and server RSS over time."""
    ensemble = results["ensemble"]
    lines: list[str] = []
    soak = results.get("soak")
    if soak:
        growth = soak.get("rss_growth_mb")
        lines += [
            "## Soak",
            "",
            f"{soak.get('minutes')} min at concurrency {soak.get('concurrency')} against `{ensemble}`: "
            f"{soak.get('requests')} requests, **{soak.get('errors')} errors**, "
            f"{_fmt(soak.get('videos_per_s'), 2)} videos/s, p99 {_fmt(soak.get('p99_ms'))} ms.",
            f"Server RSS (tritonserver + python-backend stubs): {soak.get('rss_window', 'first minute')} "
            f"{_fmt(soak.get('rss_first_mb'))} MB, then last {_fmt(soak.get('rss_last_mb'))} MB, "
            f"growth **{_fmt(growth)} MB** (whole soak: min {_fmt(soak.get('rss_min_mb'))}, "
            f"max {_fmt(soak.get('rss_max_mb'))} MB); trend over the second half "
            f"{_fmt(soak.get('rss_second_half_mb_per_min'), 2)} MB/min.",
            "",
        ]
        if soak.get("error_messages"):
            lines += ["Errors seen: " + "; ".join(soak["error_messages"][:5]), ""]

    return lines


def _machine_section(results: Mapping[str, Any]) -> list[str]:
    """Machine and versions."""
    lines: list[str] = []
    machine = results.get("machine", {})
    versions = results.get("versions", {})
    if machine or versions:
        lines += ["## Machine and versions", ""]
        lines += _table(["", ""], [*machine.items(), *versions.items()])
        lines.append("")
    return lines


def render_markdown(results: Mapping[str, Any], plots: Mapping[str, str]) -> str:
    """The whole report as Markdown text, section by section."""
    lines = _header_section(results) + _headline_section(results) + _triton_section(results)
    lines += _baselines_section(results) + _videos_section(results) + _soak_section(results)
    if plots:
        lines += ["## Plots", ""]
        for title, file in plots.items():
            lines += [f"![{title}]({file})", ""]

    lines += _machine_section(results)
    return "\n".join(lines)


def _precision_line(results: Mapping[str, Any]) -> str:
    """fp32, or int8 with how it was quantized and how well it agrees with fp32 (from ``serving.json``)."""
    precision = results.get("repository_options", {}).get("precision", "fp32")
    q = results.get("quantization")
    if not q:
        return str(precision)
    a = q.get("agreement", {})
    return (
        f"{precision} ({q.get('mode')}, {q.get('variant')}): top-1 agreement with fp32 "
        f"{_fmt(a.get('top1_agreement'), 4)}, largest probability difference "
        f"{_fmt(a.get('max_prob_diff'), 4)} on {a.get('samples')} {a.get('evaluated_on')}"
    )


def write_report(results: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write the PNG plots and ``report.md`` into ``out_dir``; returns the report's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    if results["sweeps"]:
        plot_throughput(results, out_dir / "throughput_vs_concurrency.png")
        plots["throughput vs concurrency"] = "throughput_vs_concurrency.png"
    if results["ensemble"] in results["sweeps"]:
        plot_latency(results, out_dir / "latency_vs_throughput.png")
        plots["latency percentiles vs throughput"] = "latency_vs_throughput.png"
        plot_stages(results, out_dir / "stage_breakdown.png")
        plots["stage breakdown"] = "stage_breakdown.png"
    if results.get("soak"):
        plot_soak(results["soak"], out_dir / "soak_rss.png")
        plots["soak: RSS over time"] = "soak_rss.png"
    path = out_dir / "report.md"
    path.write_text(render_markdown(results, plots) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: rebuild report.md and the plots of a run folder from its results.json."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a benchmarks/results/<timestamp> folder holding results.json")
    args = p.parse_args(argv)
    try:
        results = load_results(args.run_dir)
        try:
            path = write_report(results, args.run_dir)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ReportError(
                f"{args.run_dir}/results.json: malformed ({type(exc).__name__}: {exc})"
            ) from exc
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
