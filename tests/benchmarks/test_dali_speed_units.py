"""Fast checks of ``benchmarks.dali_speed``'s arithmetic and report: round order, execution deltas, the
batched / batch-1 summary and its ratios, layout agreement, level differences, the Markdown report and
the CLI's argument errors (no server, no DALI run)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import dali_speed as ds
from benchmarks.perf import LevelResult, PerfRow, StageBreakdown


def _run(kind: str, inst: int, rnd: int, vps: dict[int, float], stable: bool = True) -> dict:
    return {
        "layout": f"{kind}_i{inst}",
        "kind": kind,
        "dali_instances": inst,
        "round": rnd,
        "levels": [
            {
                "concurrency": c,
                "videos_per_s": v,
                "p50_ms": 1000 / v,
                "p99_ms": 2000 / v,
                "stable": stable,
                "dali_requests_per_execution": 1.0 if kind == ds.BATCH_1 else float(c),
                "dali_executions": {"1": {"executions": 10, "ms_per_execution": 50.0, "ms_per_video": 50.0}},
            }
            for c, v in vps.items()
        ],
    }


RUNS = [
    _run(ds.BATCHED, 1, 0, {1: 8.0, 4: 16.0}),
    _run(ds.BATCH_1, 1, 0, {1: 8.0, 4: 8.0}, stable=False),
    _run(ds.BATCH_1, 1, 1, {1: 6.0, 4: 4.0}),
    _run(ds.BATCHED, 1, 1, {1: 6.0, 4: 12.0}),
]


def test_rounds_alternate_the_order() -> None:
    a, b = ds.Layout(None, 1), ds.Layout(1, 1)
    assert (a.kind, b.kind, b.name) == (ds.BATCHED, ds.BATCH_1, "batch-1_i1")
    assert ds.round_order([a, b], 0) == [a, b]
    assert ds.round_order([a, b], 1) == [b, a]
    assert ds.round_order([a, b], 2) == [a, b]


def test_executions_delta_counts_only_what_happened_between_snapshots() -> None:
    before = {1: (5, 500_000_000), 2: (1, 150_000_000)}
    after = {1: (7, 700_000_000), 2: (1, 150_000_000), 4: (2, 600_000_000)}
    delta = ds.executions_delta(before, after)
    assert list(delta) == [1, 4]  # batch size 2 saw no new execution
    assert delta[1] == {"executions": 2, "ms_per_execution": 100.0, "ms_per_video": 100.0}
    assert delta[4]["ms_per_execution"] == 300.0 and delta[4]["ms_per_video"] == 75.0


def test_level_record_takes_perf_row_and_mean_batch() -> None:
    nan = float("nan")
    row = PerfRow(4, 12.5, 300.0, nan, 400.0, 500.0, nan, *(0.0,) * 7)
    stages = {"preprocess": StageBreakdown(10, 0, 2.0, *(1.0,) * 6)}
    rec = ds.level_record(
        LevelResult(row=row, stages=stages, stable=False), {}, {1: (2, 10**8), 3: (2, 10**8)}
    )
    assert (rec["concurrency"], rec["videos_per_s"], rec["p50_ms"], rec["p99_ms"]) == (4, 12.5, 300.0, 500.0)
    assert rec["stable"] is False
    assert rec["dali_requests_per_execution"] == 2.0  # (2*1 + 2*3) requests / 4 executions
    assert set(rec["dali_executions"]) == {"1", "3"} and rec["stages"]["preprocess"]["batch"] == 2.0
    assert math.isnan(ds.level_record(LevelResult(row=row), {}, {})["dali_requests_per_execution"])


def test_serving_summary_pairs_rounds_and_takes_ratio_of_medians() -> None:
    summary = ds.serving_summary(RUNS)
    assert list(summary) == ["1"] and list(summary["1"]) == ["1", "4"]
    c4 = summary["1"]["4"]
    assert c4["batched_videos_per_s"] == [16.0, 12.0]  # round order, whatever the order within a round
    assert c4["batch1_videos_per_s"] == [8.0, 4.0]
    assert c4["batched_median"] == 14.0 and c4["batch1_median"] == 6.0
    assert c4["ratio"] == pytest.approx(14.0 / 6.0)
    assert c4["ratio_per_round"] == [2.0, 3.0]
    assert (
        c4["batched_dali_requests_per_execution"] == 4.0 and c4["batch1_dali_requests_per_execution"] == 1.0
    )
    assert (c4["batched_unstable_rounds"], c4["batch1_unstable_rounds"]) == (0, 1)
    assert summary["1"]["1"]["ratio"] == pytest.approx(1.0)


def test_execution_table_sums_rounds_weighted_by_executions() -> None:
    runs = [_run(ds.BATCHED, 1, 0, {4: 10.0}), _run(ds.BATCHED, 1, 1, {4: 10.0})]
    runs[1]["levels"][0]["dali_executions"] = {
        "1": {"executions": 30, "ms_per_execution": 10.0, "ms_per_video": 10.0},
        "4": {"executions": 5, "ms_per_execution": 80.0, "ms_per_video": 20.0},
    }
    cell = ds.execution_table(runs)["batched_i1"]["4"]
    assert cell["1"]["executions"] == 40
    assert cell["1"]["ms_per_execution"] == pytest.approx((10 * 50 + 30 * 10) / 40)
    assert cell["4"] == {"executions": 5, "ms_per_execution": 80.0, "ms_per_video": 20.0}


def test_layouts_agreement_sees_a_changed_answer() -> None:
    a = [np.array([0.7, 0.3]), np.array([0.2, 0.8])]
    same = ds.layouts_agreement({"x": a, "y": [p.copy() for p in a]})
    assert same == {"y vs x": 0.0, "top1_equal": 1.0}
    flipped = ds.layouts_agreement({"x": a, "y": [a[0], a[1][::-1].copy()]})
    assert flipped["top1_equal"] == 0.0 and flipped["y vs x"] == pytest.approx(0.6)


def test_level_difference_is_in_8_bit_levels() -> None:
    a = np.zeros((1, 3, 2, 4, 4), np.float32)
    b = a.copy()
    b[0, 0, 0, 0, 0] = 2 / 255
    d = ds.level_difference(a, b)
    assert d["max"] == pytest.approx(2.0) and d["mean"] == pytest.approx(2.0 / a.size)
    with pytest.raises(ValueError, match="shape"):
        ds.level_difference(a, b[:, :1])
    assert ds.timing_summary([3.0, 1.0, 2.0]) == {"median_ms": 2.0, "best_ms": 1.0, "n": 3}


def _results() -> dict:
    video = {
        "times": {
            k: {"median_ms": m, "best_ms": m, "n": 3, "cpu_median_ms": m}
            for k, m in (("pyav", 100.0), ("probe", 10.0), ("dali", 80.0), ("dali_with_probe", 90.0))
        },
        "dali_with_probe_over_pyav": 0.9,
        "dali_over_pyav": 0.8,
        "best_dali_with_probe_over_pyav": 0.9,
        "levels": {"mean": 1.4, "p99": 5.0, "max": 30.0},
    }
    return {
        "created": "2026-12-07T12:00:00",
        "quick": True,
        "wall_s": 60.0,
        "checkpoint_source": "random weights",
        "spec_summary": "8 frames x 32², 3 views, uniform",
        "common_options": {"max_batch_size": 8},
        "videos": [{"name": "a.webm", "size_bytes": 2048}],
        "perf_settings": {"request_count": 16},
        "serving": {
            "summary": ds.serving_summary(RUNS),
            "executions": ds.execution_table(RUNS),
            "agreement": {"batch-1_i1 vs batched_i1": 0.0, "top1_equal": 1.0},
        },
        "in_process": {"repeats": 3, "specs": {"checkpoint spec": {"videos": {"a.webm": video}}}},
        "load": [("start", [0.5, 1.0, 1.5]), ("end", [2.5, 1.0, 1.5])],
        "machine": {"cpu": "AMD EPYC"},
        "notes": ["a note"],
    }


def test_report_and_summary_line_show_the_ratios(tmp_path: Path) -> None:
    results = _results()
    text = ds.render_markdown(results, "dali_speed.png")
    assert "**2.33** (2.00, 3.00)" in text  # c=4: ratio of medians, then per round
    assert "| 4 | 14.00 (16.00, 12.00) | 6.00 (8.00, 4.00) |" in text
    assert "**0.90**" in text and "1.40 / 5.0 / 30.0" in text
    assert "top-1 equal" in text and "- a note" in text and "AMD EPYC" in text
    line = ds.summary_line(results)
    assert "x1.00/2.33 at c=1/4 (1 DALI instance)" in line and "0.90 (a.webm)" in line
    assert "load 0.5 -> 2.5" in line
    assert ds.plot_serving(results["serving"]["summary"], tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "argv", [["--max-batch-size", "1"], ["--dali-instances", "0"], ["--concurrency", "0"], ["--rounds", "x"]]
)
def test_cli_refuses_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = ds.main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    assert code == 2
    assert "error" in capsys.readouterr().err
