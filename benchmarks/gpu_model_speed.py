"""ViT-B 8x224 PP-TimeSformer speed on an NVIDIA GPU, in PyTorch: views/s and the share of the GPU's
own bf16 matmul rate that the model reaches, both measured in the same run.

    python -m benchmarks.gpu_model_speed [--batch-sizes 1 4 16] [--modes eager compile] [--out DIR]

Variants: ``eager`` (bf16 autocast, fused SDPA attention) and ``compile`` (the same under
``torch.compile(mode="reduce-overhead")``, which captures CUDA graphs). The model's FLOPs per view are
counted by PyTorch's ``FlopCounterMode`` on the real forward (not taken from a paper), and the reference
rate is a bf16 ``N x N x N`` matmul timed with CUDA events right before. Results go to
``benchmarks/results/gpu-<timestamp>/`` as ``gpu_model_speed.json`` and ``gpu_model_speed.md``.

Where no CUDA GPU is visible the script prints one line saying so and exits 0 without writing anything:
GPU figures are only ever measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
MODES = ("eager", "compile")


def cuda_unavailable_reason() -> str | None:
    """Why no GPU measurement can run here, or None when a CUDA device is usable."""
    if not torch.cuda.is_available():
        build = "CPU-only PyTorch build" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
        return f"no CUDA GPU visible ({build}, torch {torch.__version__})"
    return None


def time_cuda(fn: Callable[[], Any], *, warmup: int, iters: int, repeats: int = 5) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` runs of ``iters`` calls, timed with CUDA events
    (device time, not host time) after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / iters)
    times.sort()
    return times[len(times) // 2]


def matmul_tflops(n: int, *, iters: int = 20) -> float:
    """Achieved bf16 TFLOP/s of an ``n x n @ n x n`` matmul on random data (the ceiling to compare with)."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    # Random data, several operand pairs: zeros run faster than real data and one pair sits in L2.
    pairs = [
        (
            torch.randn(n, n, device="cuda", dtype=torch.bfloat16, generator=gen),
            torch.randn(n, n, device="cuda", dtype=torch.bfloat16, generator=gen),
        )
        for _ in range(2)
    ]
    out = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    k = [0]

    def step() -> None:
        a, b = pairs[k[0] % len(pairs)]
        k[0] += 1
        torch.mm(a, b, out=out)

    sec = time_cuda(step, warmup=5, iters=iters)
    return 2.0 * n**3 / sec / 1e12


def flops_per_view(model: torch.nn.Module, num_frames: int, size: int) -> float:
    """FLOPs of one view's forward as PyTorch's FlopCounterMode counts them (matmuls, convs, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, num_frames, size, size, device="cuda")  # (1, 3, T, H, W)
    with (
        torch.inference_mode(),
        torch.autocast("cuda", dtype=torch.bfloat16),
        FlopCounterMode(display=False) as fc,
    ):
        model(x)
    return float(fc.get_total_flops())


def measure_model(
    mode: str, batch_sizes: Sequence[int], *, warmup: int, iters: int, num_classes: int = 400
) -> list[dict[str, Any]]:
    """views/s of ``pptimesformer_base_8x224`` (random weights) per batch size in one mode."""
    from training.modeling.model import pptimesformer_base_8x224

    torch.manual_seed(0)
    model = pptimesformer_base_8x224(num_classes=num_classes, fused_attn=True).cuda().eval()
    cfg = model.model_config
    t, s = int(cfg["num_frames"]), int(cfg["img_size"])
    flops = flops_per_view(model, t, s)
    fwd: Callable[[torch.Tensor], torch.Tensor] = model
    if mode == "compile":
        # reduce-overhead = CUDA graphs: one replay per call, no per-kernel launch cost.
        # dynamic=False: one static graph per batch size, the fastest kernels for each.
        fwd = torch.compile(model, mode="reduce-overhead", dynamic=False)
    rows = []
    for b in batch_sizes:
        inputs = [torch.randn(b, 3, t, s, s, device="cuda") for _ in range(2)]  # (B, 3, T, H, W)
        k = [0]

        def step(inputs: list[torch.Tensor] = inputs, k: list[int] = k) -> None:
            x = inputs[k[0] % len(inputs)]
            k[0] += 1
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                fwd(x)

        t0 = time.perf_counter()
        sec = time_cuda(step, warmup=warmup, iters=iters)
        wall = time.perf_counter() - t0
        rows.append(
            {
                "mode": mode,
                "batch": b,
                "ms_per_batch": sec * 1e3,
                "views_per_s": b / sec,
                "videos_per_s_3views": b / sec / 3,
                "tflops": flops * b / sec / 1e12,
                "flops_per_view": flops,
                "measure_wall_s": wall,
            }
        )
        del inputs
        torch.cuda.empty_cache()
    return rows


def render_markdown(doc: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    lines = [
        f"# PP-TimeSformer ViT-B 8x224 on {doc['gpu']} ({doc['created']})",
        "",
        f"bf16 matmul {doc['matmul_n']}³: **{doc['matmul_tflops']:.0f} TFLOP/s** (measured in this run). "
        f"Model: {doc['gflops_per_view']:.0f} GFLOP per view (FlopCounterMode), bf16 autocast, "
        "SDPA attention.",
        "",
        "| mode | batch (views) | ms / batch | views/s | videos/s (3 views) | TFLOP/s | of matmul |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['mode']} | {r['batch']} | {r['ms_per_batch']:.2f} | {r['views_per_s']:.1f} | "
            f"{r['videos_per_s_3views']:.1f} | {r['tflops']:.0f} | {100 * r['fraction_of_matmul']:.0f}% |"
        )
    lines += ["", f"torch {doc['torch']}, CUDA {doc['cuda']}, driver-visible device: {doc['gpu']}.", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_model_speed", description=__doc__.split("\n")[0]
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 32], help="views per forward")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="eager and/or compile")
    p.add_argument("--matmul-n", type=int, default=8192, help="size of the reference bf16 matmul")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls before timing (compile needs a few)")
    p.add_argument("--iters", type=int, default=10, help="calls per timed repeat")
    p.add_argument(
        "--out", help="folder for the JSON and Markdown (default benchmarks/results/gpu-<timestamp>)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: 0 after measuring, or after saying there is no GPU; 2 for bad arguments."""
    args = build_parser().parse_args(argv)
    if any(b < 1 for b in args.batch_sizes) or args.iters < 1 or args.warmup < 0 or args.matmul_n < 256:
        print(
            "error: batch sizes and --iters must be >= 1, --warmup >= 0, --matmul-n >= 256", file=sys.stderr
        )
        return 2
    reason = cuda_unavailable_reason()
    if reason is not None:
        print(f"gpu_model_speed: {reason}; nothing measured, nothing written")
        return 0
    gpu = torch.cuda.get_device_name(0)
    print(f"gpu_model_speed: {gpu}; bf16 matmul {args.matmul_n}^3 ...", flush=True)
    ceiling = matmul_tflops(args.matmul_n)
    print(f"gpu_model_speed: matmul {ceiling:.0f} TFLOP/s", flush=True)
    rows: list[dict[str, Any]] = []
    for mode in args.modes:
        for r in measure_model(mode, args.batch_sizes, warmup=args.warmup, iters=args.iters):
            r["fraction_of_matmul"] = r["tflops"] / ceiling
            rows.append(r)
            print(
                f"  {mode:8s} batch {r['batch']:3d}: {r['views_per_s']:8.1f} views/s, "
                f"{r['tflops']:6.1f} TFLOP/s "
                f"({100 * r['fraction_of_matmul']:.0f}% of matmul)",
                flush=True,
            )
    out = Path(args.out) if args.out else RESULTS_DIR / f"gpu-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "created": datetime.now().isoformat(timespec="seconds"),
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "matmul_n": args.matmul_n,
        "matmul_tflops": ceiling,
        "gflops_per_view": rows[0]["flops_per_view"] / 1e9 if rows else float("nan"),
        "rows": rows,
    }
    (out / "gpu_model_speed.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "gpu_model_speed.md").write_text(render_markdown(doc))
    best = max(rows, key=lambda r: r["views_per_s"])
    print(
        f"gpu_model_speed: best {best['views_per_s']:.1f} views/s ({best['mode']}, batch {best['batch']}), "
        f"{100 * best['fraction_of_matmul']:.0f}% of the bf16 matmul rate -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
