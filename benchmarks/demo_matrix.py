"""The CPU demo's recipe over a matrix of seeds and thread counts: does it learn all six classes every time?

    python -m benchmarks.demo_matrix [--out DIR] [--jobs 2] [--runs d0-s0,d1-s2,...] [--per-class N]
                                     [-o key=value ...]

One run = ``training.synth --demo --seed D`` (made once per data seed), then ``training.train`` on
``training/configs/synthetic_tiny.yaml`` with ``seed=S`` under ``T`` torch threads, then the held-out
accuracy of its ``best.pt`` on that data's ``val.list`` (one centre view, uniform sampling: what the demo
serves), overall and per class, with the final epoch's train top-1 (a stuck run does not fit its own
training clips either). The default matrix (10 runs):

* ``d0-s0`` .. ``d0-s4``: training seeds 0-4 on the demo data (synthetic seed 0, what ``make demo`` makes);
* ``d1-s0`` .. ``d1-s2``: training seeds 0-2 on data made with synthetic seed 1;
* ``d0-s1-t1``, ``d1-s1-t1``: two of those again with 1 torch thread instead of 2 (another order of the
  floating-point sums, i.e. another machine).

Runs are independent processes; ``--jobs 2`` runs two at a time (the thread count, not the machine's load,
decides the arithmetic, so results do not depend on ``--jobs``; wall times do). ``-o`` overrides apply to
every run (e.g. ``-o optimizer.lr=0.003`` to test a variant); ``--runs`` picks a subset.

Writes ``DIR/results.json`` (every run: accuracy, per-class accuracy, confusion, train top-1 per epoch,
wall time), ``DIR/report.md`` (the tables, the CPU model, torch version, load average) and
``DIR/demo_matrix.png`` (per-class accuracy per run), ``DIR/demo_matrix_curves.png`` (train top-1 per
epoch per run). Exit 0 when every run reaches ``--bar`` (0.97),
1 when one does not, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

CONFIG = Path("training/configs/synthetic_tiny.yaml")


@dataclass(frozen=True)
class Run:
    """One cell of the matrix: data seed, training seed, torch threads."""

    data_seed: int
    seed: int
    threads: int = 2

    @property
    def name(self) -> str:
        return f"d{self.data_seed}-s{self.seed}" + (f"-t{self.threads}" if self.threads != 2 else "")


DEFAULT_MATRIX: tuple[Run, ...] = (
    *(Run(0, s) for s in range(5)),
    *(Run(1, s) for s in range(3)),
    Run(0, 1, threads=1),
    Run(1, 1, threads=1),
)


def parse_run(name: str) -> Run:
    """``d<data>-s<seed>[-t<threads>]`` -> :class:`Run` (ValueError naming the bad name)."""
    parts = name.split("-")
    try:
        if len(parts) not in (2, 3) or parts[0][0] != "d" or parts[1][0] != "s":
            raise ValueError
        threads = int(parts[2][1:]) if len(parts) == 3 and parts[2][0] == "t" else 2
        if len(parts) == 3 and parts[2][0] != "t":
            raise ValueError
        run = Run(int(parts[0][1:]), int(parts[1][1:]), threads)
    except (ValueError, IndexError):
        raise ValueError(f"run {name!r} is not d<data seed>-s<training seed>[-t<threads>]") from None
    if run.threads < 1:
        raise ValueError(f"run {name!r}: threads must be >= 1")
    return run


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ensure_data(root: Path, data_seed: int, per_class: int | None = None) -> Path:
    """The demo set made with ``data_seed`` under ``root`` (made once, reused); ``per_class`` other than
    the demo's makes the demo classes with that many training clips each."""
    from training.synth_clips import DEMO_CLASSES

    data = root / (f"data_s{data_seed}" if per_class is None else f"data_s{data_seed}_n{per_class}")
    if not (data / "val.list").is_file():
        size = (
            ["--demo"]
            if per_class is None
            else ["--classes", ",".join(DEMO_CLASSES), "--per-class", str(per_class)]
        )
        cmd = [sys.executable, "-m", "training.synth", "--out", str(data), "--seed", str(data_seed), *size]
        subprocess.run(cmd, check=True)
    return data


def run_one(run: Run, data: Path, out: Path, overrides: list[str]) -> dict:
    """Train and evaluate one run in a child process with ``run.threads`` torch threads; a run whose
    ``result.json`` is already there with the same overrides is reused (delete ``DIR/<run>`` to retrain),
    so an interrupted matrix goes on where it stopped."""
    done = out / run.name / "result.json"
    if done.is_file():
        previous = json.loads(done.read_text())
        if previous.get("overrides") == overrides and "accuracy" in previous:
            previous["reused"] = True
            return previous
    env = dict(os.environ, OMP_NUM_THREADS=str(run.threads), MKL_NUM_THREADS=str(run.threads))
    # Idle OpenMP threads sleep instead of spinning: with --jobs 2 on two cores, spinning threads of one
    # run steal the other's time (epochs several times slower). The arithmetic does not change.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [sys.executable, "-m", "benchmarks.demo_matrix", "--worker", run.name, "--data", str(data)]
    cmd += ["--out", str(out), *[a for o in overrides for a in ("-o", o)]]
    log = out / run.name / "run.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    result_file = out / run.name / "result.json"
    if proc.returncode != 0 or not result_file.is_file():
        return {"run": run.name, **asdict(run), "error": f"exit {proc.returncode}, see {log}"}
    result = json.loads(result_file.read_text())
    result["wall_s"] = time.perf_counter() - t0
    return result


def worker(run: Run, data: Path, out: Path, overrides: list[str]) -> int:
    """The child: train, then evaluate best.pt on val.list (one centre view) per class."""
    import torch

    from training.config import load_config
    from training.data.lists import read_file_list
    from training.test import run_test
    from training.train import train

    torch.set_num_threads(run.threads)
    run_dir = out / run.name
    cfg = load_config(
        CONFIG,
        [
            f"data.root={data}",
            f"output_dir={run_dir}",
            f"seed={run.seed}",
            "train.plot_every_epochs=0",
            *overrides,
        ],
    )
    cfg["test"]["output_dir"] = str(run_dir / "test")
    t0 = time.perf_counter()
    train(cfg)
    train_s = time.perf_counter() - t0
    samples = [(data / e.path, e.label) for e in read_file_list(data / "val.list")]
    m = run_test(cfg, run_dir / "best.pt", samples)
    confusion = [[int(v) for v in row] for row in m["confusion"]]
    per_class = {
        name: (row[i] / sum(row) if sum(row) else 0.0)
        for i, (name, row) in enumerate(zip(m["labels"], confusion))
    }
    with (run_dir / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    result = {
        "run": run.name,
        **asdict(run),
        "accuracy": m["top1"] / 100.0,
        "per_class": per_class,
        "confusion": confusion,
        "labels": m["labels"],
        "train_s": train_s,
        "torch_threads": torch.get_num_threads(),
        "train_top1": [float(r["train_top1"]) for r in rows if r.get("train_top1")],
        "val_top1": [float(r["val_top1"]) for r in rows if r.get("val_top1")],
        "overrides": overrides,
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    return 0


def write_report(out: Path, results: list[dict], bar: float, overrides: list[str], wall_s: float) -> Path:
    """report.md (tables) and demo_matrix.png (per-class accuracy per run)."""
    ok = [r for r in results if "accuracy" in r]
    labels = ok[0]["labels"] if ok else []
    lines = [
        "# The demo recipe over seeds and threads",
        "",
        f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); torch {_torch_version()}; "
        f"load average at the end {os.getloadavg()[0]:.1f}; {len(results)} runs in {wall_s / 60:.1f} min; "
        f"overrides: {' '.join(overrides) or 'none'}; bar {bar:.2f}.",
        "",
        "| run | data seed | seed | threads | held-out top-1 | final train top-1 | best val epoch | train s "
        + "| "
        + " | ".join(labels)
        + " |",
        "| --- " * (8 + len(labels)) + "|",
    ]
    for r in results:
        if "accuracy" not in r:
            lines.append(
                f"| {r['run']} | {r['data_seed']} | {r['seed']} | {r['threads']} | FAILED: {r['error']} |"
            )
            continue
        best_epoch = (
            1 + max(range(len(r["val_top1"])), key=lambda i: r["val_top1"][i]) if r["val_top1"] else 0
        )
        final_train = r["train_top1"][-1] / 100 if r["train_top1"] else float("nan")
        mark = "" if r["accuracy"] >= bar else " **below**"
        cells = " | ".join(f"{r['per_class'][c]:.2f}" for c in labels)
        lines.append(
            f"| {r['run']} | {r['data_seed']} | {r['seed']} | {r['threads']} | {r['accuracy']:.3f}{mark} | "
            f"{final_train:.3f} | {best_epoch} | {r['train_s']:.0f} | {cells} |"
        )
    passed = sum(1 for r in ok if r["accuracy"] >= bar)
    lines += ["", f"**{passed} of {len(results)} runs reach {bar:.2f}.**", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    if ok:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        grid = np.array([[r["per_class"][c] for c in labels] for r in ok])
        fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 0.45 * len(ok) + 1.5))
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.set_yticks(range(len(ok)), [f"{r['run']} ({r['accuracy']:.2f})" for r in ok])
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, label="held-out accuracy")
        ax.set_title("per-class held-out accuracy per run")
        fig.tight_layout()
        fig.savefig(out / "demo_matrix.png", dpi=110)
        plt.close(fig)
        # Train top-1 per epoch: direction is learnt pair by pair, so the curves climb in steps of one
        # pair (1/3 of the classes at a time = 16.7 points) from the 33 % plateau where only the
        # axis / kind of motion is known.
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in ok:
            ax.plot(range(1, len(r["train_top1"]) + 1), r["train_top1"], label=r["run"], lw=1.2)
        for k in range(2, 7):
            ax.axhline(100 * k / 6, color="grey", lw=0.5, ls=":")
        ax.set_xlabel("epoch")
        ax.set_ylabel("train top-1 (%)")
        ax.set_ylim(0, 101)
        ax.set_title("train top-1 per run (dotted: k of 6 classes)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "demo_matrix_curves.png", dpi=110)
        plt.close(fig)
    return report


def _torch_version() -> str:
    try:
        import torch

        return torch.__version__
    except ImportError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.demo_matrix", description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", default="runs/demo_matrix", help="runs, data and the report (default runs/demo_matrix)"
    )
    p.add_argument(
        "--runs", default=None, help="comma-separated subset, e.g. d0-s1,d1-s0-t1 (default: all 10)"
    )
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument(
        "--per-class", type=int, default=None, help="training clips per class (default: the demo's)"
    )
    p.add_argument("--bar", type=float, default=0.97, help="held-out top-1 every run must reach")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out)
    try:
        runs = [parse_run(n) for n in args.runs.split(",")] if args.runs else list(DEFAULT_MATRIX)
        if args.worker:
            return worker(parse_run(args.worker), Path(args.data), out, args.override)
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    except ValueError as exc:
        print(f"demo_matrix: {exc}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    datas = {s: ensure_data(out, s, args.per_class) for s in sorted({r.data_seed for r in runs})}
    t0 = time.perf_counter()
    done: list[dict] = []

    def one(run: Run) -> dict:
        result = run_one(run, datas[run.data_seed], out, args.override)
        done.append(result)
        acc = f"{result['accuracy']:.3f}" if "accuracy" in result else result["error"]
        print(f"demo_matrix: {run.name}: held-out top-1 {acc} ({len(done)}/{len(runs)})", flush=True)
        return result

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, runs))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    report = write_report(out, results, args.bar, args.override, time.perf_counter() - t0)
    print(report.read_text())
    return 0 if all(r.get("accuracy", 0.0) >= args.bar for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
