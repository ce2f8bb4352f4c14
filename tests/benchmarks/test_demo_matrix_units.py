"""The demo matrix's plan and report (the training itself is the benchmark: benchmarks.demo_matrix)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.demo_matrix import DEFAULT_MATRIX, Run, main, parse_run, write_report

LABELS = ["moving_left", "moving_right", "moving_up", "moving_down", "growing", "shrinking"]


def test_default_matrix_is_the_ten_runs_asked_for() -> None:
    names = [r.name for r in DEFAULT_MATRIX]
    assert len(set(names)) == 10
    assert {r.seed for r in DEFAULT_MATRIX if r.data_seed == 0 and r.threads == 2} == {0, 1, 2, 3, 4}
    assert {r.seed for r in DEFAULT_MATRIX if r.data_seed == 1 and r.threads == 2} == {0, 1, 2}
    one_thread = [r for r in DEFAULT_MATRIX if r.threads == 1]
    assert len(one_thread) == 2 and all(Run(r.data_seed, r.seed) in DEFAULT_MATRIX for r in one_thread)


def test_run_names_round_trip_and_bad_ones_are_named() -> None:
    for run in DEFAULT_MATRIX:
        assert parse_run(run.name) == run
    assert parse_run("d3-s7-t4") == Run(3, 7, 4)
    for bad in ("s1-d0", "d0", "d0-s1-x2", "d0-s1-t0", "dx-s1"):
        with pytest.raises(ValueError, match=bad):
            parse_run(bad)
    assert main(["--runs", "d0-q1"]) == 2


def _result(name: str, acc: float, per_class: list[float]) -> dict:
    run = parse_run(name)
    return {
        "run": name,
        "data_seed": run.data_seed,
        "seed": run.seed,
        "threads": run.threads,
        "accuracy": acc,
        "per_class": dict(zip(LABELS, per_class)),
        "labels": LABELS,
        "train_top1": [16.7, 33.3, 50.0, 83.3],
        "val_top1": [16.0, 33.0, 60.0, 80.0],
        "train_s": 200.0,
    }


def test_report_marks_runs_below_the_bar_and_failures(tmp_path: Path) -> None:
    results = [
        _result("d0-s0", 0.993, [1, 1, 1, 1, 1, 0.96]),
        _result("d0-s1", 0.840, [1, 1, 0.5, 0.54, 1, 1]),
        {"run": "d1-s0", "data_seed": 1, "seed": 0, "threads": 2, "error": "exit 1, see run.log"},
    ]
    text = write_report(tmp_path, results, 0.97, ["optimizer.lr=0.003"], 600.0).read_text()
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| d")}
    assert "**below**" not in rows["| d0-s0"] and "0.993" in rows["| d0-s0"]
    assert "0.840 **below**" in rows["| d0-s1"] and "| 0.50 | 0.54 |" in rows["| d0-s1"]
    assert "FAILED: exit 1" in rows["| d1-s0"]
    assert "**1 of 3 runs reach 0.97.**" in text and "optimizer.lr=0.003" in text and "CPU:" in text
    assert (tmp_path / "demo_matrix.png").stat().st_size > 0
    assert (tmp_path / "demo_matrix_curves.png").stat().st_size > 0
