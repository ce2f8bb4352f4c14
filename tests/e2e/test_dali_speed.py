"""``python -m benchmarks.dali_speed --quick`` end to end against Triton's real dali backend (built by
``make dali-backend``): both layouts served, the batches seen to form in one and never in the other,
the same answers from both, and DALI's CPU output within the twin's tolerance of the reference. It fails,
never skips, when the backend is not built. One level, short windows (about 40 s): this checks the command,
not the figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from build_engines.dali_backend import is_current
from triton_models.server import DALI_BACKEND_LIBRARY

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_measures_both_layouts(tmp_path: Path) -> None:
    assert DALI_BACKEND_LIBRARY.is_file(), "Triton's dali backend is not built: run `make dali-backend`"
    assert is_current(), (
        "the dali backend is out of date with its sources or patches: run `make dali-backend`"
    )
    out = tmp_path / "run"
    argv = ["--quick", "--out", str(out), "--concurrency", "4", "--request-count", "8", "--repeats", "1"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.dali_speed", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("dali_speed: batched ÷ batch-1 videos/s x")

    results = json.loads((out / "results.json").read_text())
    per_level = results["serving"]["summary"]["1"]
    assert list(per_level) == ["4"]
    for s in per_level.values():
        assert s["batched_median"] > 0 and s["batch1_median"] > 0 and math.isfinite(s["ratio"])
    executions = results["serving"]["executions"]
    assert set(executions["batch-1_i1"]["4"]) == {"1"}, executions  # DALI batch 1: never more
    assert max(int(size) for size in executions["batched_i1"]["4"]) > 1, executions  # batches did form
    agreement = results["serving"]["agreement"]
    assert agreement["top1_equal"] == 1.0 and agreement["batch-1_i1 vs batched_i1"] < 1e-5, agreement

    for block in results["in_process"]["specs"].values():
        for video in block["videos"].values():
            assert video["levels"]["mean"] < 3.0, video["levels"]  # the twin's tolerance (test_dali.py)
            assert video["times"]["dali_with_probe"]["median_ms"] > video["times"]["dali"]["median_ms"] > 0
    assert (out / "report.md").read_text().count("batched ÷ batch-1") >= 2
    assert (out / "dali_speed.png").stat().st_size > 1000
