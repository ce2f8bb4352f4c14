"""The CPU demo's proof: train synthetic_tiny, then show that temporal attention decides.

    python -m training.demo_check [--data data/synthetic] [--out runs/synthetic_tiny] [-o key=value ...]

1. makes the synthetic motion set if ``--data`` holds none (``python -m training.synth``);
2. trains ``training/configs/synthetic_tiny.yaml`` and times it;
3. tests best.pt on the val split (three crops, uniform sampling), then on the SAME videos with their
   sampled frames in reverse order. Every class played backwards is its paired class (left/right,
   up/down, grow/shrink, clockwise/anticlockwise), so a model that reads motion direction must fall to at
   most chance on the reversed clips -- predicting the paired class instead.

Prints the figures and exits 1 when a goal is missed: val top-1 >= 95 %, training <= ``--budget-s``
seconds, reversed top-1 <= chance (1/8).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from training.config import ConfigError, load_config
from training.test import run_test
from training.train import train

CONFIG = Path(__file__).parent / "configs" / "synthetic_tiny.yaml"
PAIRS = {
    "moving_left": "moving_right",
    "moving_up": "moving_down",
    "growing": "shrinking",
    "rotating_clockwise": "rotating_anticlockwise",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.demo_check", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="data/synthetic", help="synthetic set (made here when missing)")
    p.add_argument("--out", default="runs/synthetic_tiny", help="training output directory")
    p.add_argument("--budget-s", type=float, default=300.0, help="training wall-time goal (s)")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / "val.list").is_file():
        from training.synth import DEMO_CLASSES, DEMO_PER_CLASS, make_synthetic_dataset

        make_synthetic_dataset(data, DEMO_PER_CLASS, classes=DEMO_CLASSES)
    try:
        cfg = load_config(CONFIG, [f"data.root={data}", f"output_dir={args.out}", *args.override])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"demo_check: torch threads {torch.get_num_threads()}, data {data}, config {CONFIG.name}")
    t0 = time.perf_counter()
    train(cfg)
    train_s = time.perf_counter() - t0
    best = Path(args.out) / "best.pt"
    fwd = run_test(cfg | {"test": {**cfg["test"], "output_dir": str(Path(args.out) / "test")}}, best)
    rev_cfg = cfg | {
        "test": {**cfg["test"], "reverse_frames": True, "output_dir": str(Path(args.out) / "test_reversed")}
    }
    rev = run_test(rev_cfg, best)

    labels = fwd["labels"]
    chance = 100.0 / len(labels)
    pairs = {**PAIRS, **{v: k for k, v in PAIRS.items()}}
    conf = torch.tensor(rev["confusion"], dtype=torch.float64)  # rows: true, cols: predicted
    lines = []
    for i, name in enumerate(labels):
        n = float(conf[i].sum())
        to_pair = float(conf[i, labels.index(pairs[name])]) / n * 100 if name in pairs and n else float("nan")
        f_acc, r_acc = fwd["per_class_top1"][i], rev["per_class_top1"][i]
        lines.append(
            f"  {name:22s} forward {f_acc:5.1f}%  reversed {r_acc:5.1f}%  reversed->paired {to_pair:5.1f}%"
        )
    summary = {
        "train_wall_s": round(train_s, 1),
        "val_top1": round(fwd["top1"], 2),
        "reversed_top1": round(rev["top1"], 2),
        "chance": round(chance, 2),
        "videos": fwd["count"],
    }
    print("\n".join(["per class:", *lines]))
    (Path(args.out) / "demo_check.json").write_text(json.dumps(summary, indent=1))
    ok = summary["val_top1"] >= 95.0 and train_s <= args.budget_s and summary["reversed_top1"] <= chance
    print(
        f"demo_check: training {train_s:.0f} s (goal <= {args.budget_s:.0f}), val top-1 {fwd['top1']:.1f}% "
        f"(goal >= 95), reversed frames top-1 {rev['top1']:.1f}% (chance {chance:.1f}%): "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
