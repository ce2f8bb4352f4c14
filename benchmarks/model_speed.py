"""Model speed on this CPU: ViT-B PP-TimeSformer 8x224, PyTorch eager vs ONNX Runtime, against a matmul.

    python -m benchmarks.model_speed [--quick] [--threads N] [--out DIR] [--no-precision]

The model is ``pptimesformer_base_8x224`` with random weights (speed does not depend on the values). It runs
one view (batch 1) and three views (batch 3, the test-time three crops) in PyTorch eager (fused attention)
and in ONNX Runtime (the exported graph, graph optimisation level ALL, intra-op threads = physical cores).
Throughput is reported as GFLOP/s (one view = 195.9 GMAC = 391.8 GFLOP) and as a ratio to a 2048x2048 fp32
matmul measured in the same run -- the machine's attainable dense rate right now, which moves with load on a
shared host, so only the ratio is comparable across runs.

Precision rows (``precision`` in the JSON): the serving graph of the cpu target (``VIEWS -> PROBS``, one
view) at fp32, at int8 as ``build_engines.build --precision int8`` makes it (static QDQ calibrated on two
seeded random views, and dynamic), and through OpenVINO at fp32 and bf16 (``INFERENCE_PRECISION_HINT``)
when ``openvino`` is installed. All of them are timed round-robin on the same input in this one process,
so each ratio to ONNX Runtime fp32 compares runs under the same load; the CPU's flags are printed and
recorded with them. Results go to
``benchmarks/results/model_speed-<timestamp>/`` as JSON, Markdown and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

GMAC_PER_VIEW = 195.9
GFLOP_PER_VIEW = 2 * GMAC_PER_VIEW  # 391.8
MATMUL_N = 2048
RESULTS = Path(__file__).resolve().parent / "results"


def physical_cores() -> int:
    """Physical cores (hyper-threads share FMA units, so they do not add dense throughput)."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except ImportError:  # psutil is pinned, but the benchmark should still run without it
        n = None
    return int(n or os.cpu_count() or 1)


def timeit(fn: Callable[[], Any], reps: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``reps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def matmul_gflops(reps: int) -> dict[str, float]:
    """Best-of-``reps`` GFLOP/s of a 2048^3 fp32 matmul in torch and in numpy."""
    n = MATMUL_N
    flop = 2.0 * n**3
    a, b = torch.randn(n, n), torch.randn(n, n)
    an, bn = a.numpy(), b.numpy()
    t_torch = min(timeit(lambda: torch.mm(a, b), reps))
    t_numpy = min(timeit(lambda: an @ bn, reps))
    return {"torch": flop / t_torch / 1e9, "numpy": flop / t_numpy / 1e9}


def precision_rows(model: torch.nn.Module, threads: int, reps: int, tmp: Path, verify: bool) -> list[dict]:
    """fp32 / int8 / bf16 of the ViT-B serving graph (one view), timed round-robin on one input."""
    from build_engines.export_onnx import export_onnx
    from build_engines.quantize import (
        graph_node_groups,
        has_vnni,
        preprocess_graph,
        quantize_dynamic_graph,
        quantize_static_graph,
        random_views,
    )
    from training.modeling.checkpoint import Checkpoint
    from training.preprocessing.spec import PreprocessSpec
    from triton_models import contract
    from triton_models.runtime import ort_cpu_session

    ckpt = Checkpoint(
        model_config=dict(model.model_config),
        preprocess=PreprocessSpec(num_frames=8, short_side=224, crop_size=224, crops="center"),  # V = 1
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
    )
    fp32 = export_onnx(ckpt, tmp / "serving_fp32.onnx", verify=verify, graph="serving")
    pre = preprocess_graph(fp32, tmp / "serving_pre.onnx")
    keep = graph_node_groups(pre)["fp32"]
    reduce_range = not has_vnni()
    calib = random_views(ckpt.preprocess.output_shape, 2, seed=1)
    static = quantize_static_graph(
        pre, tmp / "serving_int8.onnx", calib, keep, reduce_range=reduce_range, cache=tmp / "ranges.json"
    )
    dynamic = quantize_dynamic_graph(pre, tmp / "serving_int8_dynamic.onnx", keep, reduce_range=reduce_range)
    (x,) = random_views(ckpt.preprocess.output_shape, 1, seed=0)  # (1, 1, 3, 8, 224, 224)

    def ort_fn(path: Path) -> Callable[[], np.ndarray]:
        sess = ort_cpu_session(path, intra_op_threads=threads)
        return lambda: sess.run([contract.PROBS], {contract.VIEWS: x})[0]

    runners: dict[str, Callable[[], np.ndarray]] = {
        "onnxruntime-fp32": ort_fn(fp32),
        "onnxruntime-int8": ort_fn(static),
        "onnxruntime-int8-dynamic": ort_fn(dynamic),
    }
    try:
        import openvino as ov
    except ImportError:
        ov = None
    if ov is not None:
        core = ov.Core()
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        ov_model = core.read_model(str(fp32))
        hints = ["f32"] + (["bf16"] if "BF16" in caps else [])
        for hint in hints:
            compiled = core.compile_model(
                ov_model,
                "CPU",
                {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint, "NUM_STREAMS": 1},
            )
            name = "openvino-" + ("fp32" if hint == "f32" else hint)
            runners[name] = lambda compiled=compiled: compiled({contract.VIEWS: x})[contract.PROBS]
    ref = runners["onnxruntime-fp32"]()  # (1, K)
    times: dict[str, list[float]] = {k: [] for k in runners}
    diffs = {k: float(np.abs(np.asarray(fn()) - ref).max()) for k, fn in runners.items()}  # + warm-up
    for _ in range(reps):
        for k, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    base = times["onnxruntime-fp32"]
    rows = []
    for k, ts in times.items():
        rows.append(
            {
                "backend": k,
                "views": 1,
                "seconds_best": min(ts),
                "seconds_median": statistics.median(ts),
                "seconds_all": ts,
                "seconds_per_view": statistics.median(ts),
                "gflops": GFLOP_PER_VIEW / statistics.median(ts),
                "speedup_vs_ort_fp32_best": min(base) / min(ts),
                "speedup_vs_ort_fp32_median": statistics.median(base) / statistics.median(ts),
                "max_prob_diff_vs_fp32": diffs[k],
            }
        )
    return rows


def run(quick: bool, threads: int, out_dir: Path, precision: bool = True) -> dict[str, Any]:
    from build_engines.export_onnx import ONNX_INPUT, ONNX_OUTPUT, export_model
    from training.modeling.model import pptimesformer_base_8x224
    from triton_models.runtime import ort_cpu_session

    torch.set_num_threads(threads)
    reps = 2 if quick else 3
    mm_reps = 3 if quick else 5
    steps = ["matmul", "build", "torch x1", "torch x3", "matmul", "export", "ort x1", "ort x3", "matmul"]
    if precision:
        steps += ["precision", "matmul"]
    bar = tqdm(steps, desc="model_speed", unit="step")
    results: dict[str, Any] = {"rows": [], "matmul": []}

    def step(name: str) -> None:
        bar.set_postfix_str(name)

    def record(backend: str, views: int, times: list[float]) -> None:
        t = statistics.median(times)
        results["rows"].append(
            {
                "backend": backend,
                "views": views,
                "seconds_median": t,
                "seconds_all": times,
                "seconds_per_view": t / views,
                "gflops": GFLOP_PER_VIEW * views / t,
            }
        )

    step("matmul")
    results["matmul"].append(matmul_gflops(mm_reps))
    bar.update()

    step("build")
    torch.manual_seed(0)
    model = pptimesformer_base_8x224(num_classes=400).eval()
    bar.update()
    with torch.inference_mode():
        for views in (1, 3):
            step(f"torch x{views}")
            x = torch.randn(views, 3, 8, 224, 224)
            record("pytorch-eager", views, timeit(lambda x=x: model(x), reps))
            bar.update()

    step("matmul")
    results["matmul"].append(matmul_gflops(mm_reps))
    bar.update()

    with tempfile.TemporaryDirectory(prefix="model_speed-") as tmp:
        step("export")
        onnx_path = Path(tmp) / "pptimesformer_base_8x224.onnx"
        model.set_fused_attn(False)
        t0 = time.perf_counter()
        export_model(model, torch.zeros(1, 3, 8, 224, 224), onnx_path, verify=not quick)
        results["export_seconds"] = time.perf_counter() - t0
        sess = ort_cpu_session(onnx_path, intra_op_threads=threads)
        bar.update()
        for views in (1, 3):
            step(f"ort x{views}")
            xn = np.random.default_rng(0).standard_normal((views, 3, 8, 224, 224), dtype=np.float32)
            record(
                "onnxruntime", views, timeit(lambda xn=xn: sess.run([ONNX_OUTPUT], {ONNX_INPUT: xn}), reps)
            )
            bar.update()

    step("matmul")
    results["matmul"].append(matmul_gflops(mm_reps))
    bar.update()
    if precision:
        step("precision")
        with tempfile.TemporaryDirectory(prefix="model_speed-") as tmp:
            results["precision"] = precision_rows(model, threads, 3 if quick else 5, Path(tmp), not quick)
        bar.update()
        step("matmul")
        results["matmul"].append(matmul_gflops(mm_reps))
        bar.update()
    bar.close()

    mm_torch = statistics.median(m["torch"] for m in results["matmul"])
    mm_numpy = statistics.median(m["numpy"] for m in results["matmul"])
    for row in results["rows"] + results.get("precision", []):
        row["ratio_to_torch_matmul"] = row["gflops"] / mm_torch
        row["ratio_to_numpy_matmul"] = row["gflops"] / mm_numpy
    import onnxruntime as ort

    from build_engines.quantize import cpu_flags

    results["cpu_flags"] = cpu_flags()
    results["env"] = {
        "threads": threads,
        "logical_cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "openvino": _openvino_version(),
        "quick": quick,
        "reps": reps,
    }
    results["matmul_gflops"] = {"torch_median": mm_torch, "numpy_median": mm_numpy}
    results["model"] = {"name": "pptimesformer_base_8x224", "gmac_per_view": GMAC_PER_VIEW}
    write_outputs(results, out_dir)
    return results


def _openvino_version() -> str | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov.get_version()


def _flags_line(flags: dict[str, bool]) -> str:
    return "CPU flags: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())


def _markdown(r: dict[str, Any]) -> str:
    mm = r["matmul_gflops"]
    lines = [
        "# Model speed: PP-TimeSformer ViT-B 8x224 on this CPU",
        "",
        f"{r['env']['threads']} threads, torch {r['env']['torch']}, onnxruntime {r['env']['onnxruntime']}. "
        f"2048^3 fp32 matmul in the same run: torch {mm['torch_median']:.1f} GFLOP/s, "
        f"numpy {mm['numpy_median']:.1f} GFLOP/s. One view = {GFLOP_PER_VIEW:.1f} GFLOP.",
        "",
        "| backend | views | s / view | GFLOP/s | vs torch matmul | vs numpy matmul |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['backend']} | {row['views']} | {row['seconds_per_view']:.2f} | {row['gflops']:.1f} | "
            f"{row['ratio_to_torch_matmul']:.0%} | {row['ratio_to_numpy_matmul']:.0%} |"
        )
    if r.get("precision"):
        lines += [
            "",
            "Serving graph (VIEWS -> PROBS, one view), timed round-robin on one input. "
            + _flags_line(r["cpu_flags"]),
            "",
            "| backend | best s | median s | x fp32 (best) | x fp32 (median) | effective GFLOP/s | "
            "vs numpy matmul | max prob diff |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in r["precision"]:
            lines.append(
                f"| {row['backend']} | {row['seconds_best']:.3f} | {row['seconds_median']:.3f} | "
                f"{row['speedup_vs_ort_fp32_best']:.2f} | {row['speedup_vs_ort_fp32_median']:.2f} | "
                f"{row['gflops']:.0f} | {row['ratio_to_numpy_matmul']:.0%} | "
                f"{row['max_prob_diff_vs_fp32']:.2g} |"
            )
    return "\n".join(lines) + "\n"


def write_outputs(r: dict[str, Any], out_dir: Path) -> None:
    """JSON (everything), Markdown (the table) and a PNG bar chart against the matmul rate."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model_speed.json").write_text(json.dumps(r, indent=2))
    (out_dir / "model_speed.md").write_text(_markdown(r))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{row['backend']}\n{row['views']} view(s)" for row in r["rows"]]
    ax.bar(labels, [row["gflops"] for row in r["rows"]], color=["#4c72b0", "#4c72b0", "#dd8452", "#dd8452"])
    if r.get("precision"):
        ax.tick_params(axis="x", labelsize=7)
        for row in r["precision"]:
            label = f"{row['backend'].replace('onnxruntime', 'ort')}\nserving x1"
            ax.bar([label], [row["gflops"]], color="#55a868")
    mm = r["matmul_gflops"]
    ax.axhline(mm["torch_median"], color="k", ls="--", label=f"torch matmul {mm['torch_median']:.0f}")
    ax.axhline(0.7 * mm["torch_median"], color="g", ls=":", label="70% of matmul")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"PP-TimeSformer ViT-B 8x224, {r['env']['threads']} threads")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / "model_speed.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ViT-B TimeSformer speed: PyTorch eager vs ONNX Runtime")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, no export verification")
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/model_speed-<ts>")
    parser.add_argument("--no-precision", action="store_true", help="skip the fp32/int8/bf16 rows")
    args = parser.parse_args(argv)
    threads = args.threads or physical_cores()
    out_dir = args.out or RESULTS / f"model_speed-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    from build_engines.quantize import cpu_flags

    print(_flags_line(cpu_flags()))
    r = run(args.quick, threads, out_dir, precision=not args.no_precision)
    print(_markdown(r))
    best = {row["backend"]: row for row in r["rows"] if row["views"] == 3}
    ort_row, pt_row = best["onnxruntime"], best["pytorch-eager"]
    print(
        f"summary: ONNX Runtime {ort_row['gflops']:.1f} GFLOP/s = {ort_row['ratio_to_torch_matmul']:.0%} "
        f"of the torch matmul ({r['matmul_gflops']['torch_median']:.1f}), PyTorch eager "
        f"{pt_row['ratio_to_torch_matmul']:.0%}; {ort_row['seconds_per_view']:.2f} s/view; "
        f"written to {out_dir}"
    )
    for row in r.get("precision", []):
        if row["backend"] != "onnxruntime-fp32":
            print(
                f"summary: {row['backend']} {row['seconds_best']:.3f} s best, "
                f"{row['seconds_median']:.3f} s median = {row['speedup_vs_ort_fp32_best']:.2f}x / "
                f"{row['speedup_vs_ort_fp32_median']:.2f}x ONNX Runtime fp32 "
                f"(same run, same input); {row['ratio_to_numpy_matmul']:.0%} of the numpy matmul rate"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
