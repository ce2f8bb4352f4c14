"""The benchmark suite end to end against a real tiny server: perf_analyzer's real CSVs, the stage
statistics, the baselines' agreement with the server, a short soak, and the written report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import perf
from benchmarks.run import main as bench_main
from benchmarks.videos import encode_video, synthetic_frames
from build_engines.repository import RepositoryOptions
from tests.utils_server import build_tiny_repository, running_server
from triton_models import contract

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A tiny cpu repository, its checkpoint, two real videos, and a running server."""
    base = tmp_path_factory.mktemp("bench_server")
    # A short batcher wait: the suite measures latency, a 100 ms wait would dominate it.
    opts = RepositoryOptions(target="cpu", max_batch_size=4, max_queue_delay_us=1000)
    repo, ckpt = build_tiny_repository(base, options=opts)
    videos = [
        encode_video(base / "a.mp4", synthetic_frames(96, 64, 20, seed=1), "h264"),
        encode_video(base / "b.avi", synthetic_frames(64, 48, 16, seed=2), "mjpeg"),
    ]
    with running_server(repo, log_file=base / "server.log") as server:
        yield {"repo": repo, "ckpt": ckpt, "videos": videos, "server": server, "base": base}


@pytest.fixture(scope="module")
def bench_run(served) -> Path:
    """One CLI run against the fixture's server: short sweep, baselines, a 6 s soak."""
    server = served["server"]
    out = served["base"] / "run"
    rc = bench_main(
        [
            "--quick",
            "--url",
            server.http_url,
            "--grpc-url",
            server.grpc_url,
            "--repository",
            str(served["repo"]),
            "--checkpoint",
            str(served["ckpt"]),
            "--server-pid",
            str(server.pid),
            "--videos",
            *map(str, served["videos"]),
            "--concurrency",
            "1,2",
            "--composing-concurrency",
            "1",
            "--request-count",
            "6",
            "--repeats",
            "2",
            "--soak",
            "0.1",
            "--soak-concurrency",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return out


def test_sweeps_hold_real_measurements(bench_run: Path) -> None:
    results = json.loads((bench_run / "results.json").read_text())
    assert set(results["sweeps"]) == {contract.ENSEMBLE, contract.PREPROCESS, contract.CLASSIFIER}
    ens = perf.SweepResult.from_dict(results["sweeps"][contract.ENSEMBLE])
    assert [lv.row.concurrency for lv in ens.levels] == [1, 2]
    for lv in ens.levels:
        assert lv.row.throughput > 0
        assert 0 < lv.row.p50_ms <= lv.row.p99_ms
        # The server saw at least perf_analyzer's window of requests, and every ensemble request ran
        # each composing model exactly once.
        whole = lv.stages[contract.ENSEMBLE]
        assert whole.requests >= 6 and whole.failures == 0
        for m in (contract.PREPROCESS, contract.CLASSIFIER):
            assert lv.stages[m].requests == whole.requests
            assert lv.stages[m].compute_infer_ms > 0
    # The classifier was measured alone on the views the preprocessing model made.
    assert "VIEWS" in results["input_data"][contract.CLASSIFIER]
    assert "(3, 3, 4, 32, 32)" in results["input_data"][contract.CLASSIFIER]


def test_raw_csv_parses_to_the_reported_rows(bench_run: Path) -> None:
    results = json.loads((bench_run / "results.json").read_text())
    for name, sweep in results["sweeps"].items():
        for path, level in zip(sweep["csv_paths"], sweep["levels"]):
            rows = perf.parse_perf_csv(path)
            assert len(rows) == 1
            assert rows[0].concurrency == level["row"]["concurrency"], name
            assert rows[0].throughput == pytest.approx(level["row"]["throughput"])
            assert rows[0].p99_ms == pytest.approx(level["row"]["p99_ms"])


def test_baselines_compute_what_the_server_computes(bench_run: Path) -> None:
    results = json.loads((bench_run / "results.json").read_text())
    base = results["baselines"]
    assert set(base) == {"in-process", "naive"}
    for b in base.values():
        assert b["count"] == 2 * 2  # two videos, two passes
        assert b["videos_per_s"] > 0 and b["p50_ms"] <= b["p99_ms"]
    agree = results["agreement"]
    assert agree["server vs in-process"] < 1e-5
    assert agree["ensemble steps vs in-process"] < 1e-5
    assert agree["naive vs in-process"] < 1e-4


def test_soak_counts_requests_and_samples_memory(bench_run: Path) -> None:
    soak = json.loads((bench_run / "results.json").read_text())["soak"]
    assert soak["errors"] == 0
    assert soak["requests"] > 0
    assert len(soak["rss_samples"]) >= 2
    assert all(s["rss_mb"] > 10 and s["processes"] >= 3 for s in soak["rss_samples"])  # server + 2 stubs
    assert soak["rss_growth_mb"] == pytest.approx(soak["rss_last_mb"] - soak["rss_first_mb"])


def test_report_and_plots_written(bench_run: Path) -> None:
    results = json.loads((bench_run / "results.json").read_text())
    report = (bench_run / "report.md").read_text()
    best = max(lv["row"]["throughput"] for lv in results["sweeps"][contract.ENSEMBLE]["levels"])
    assert f"**{best:.2f} videos/s**" in report
    assert "ensemble p99 at c=1 ÷ in-process p99" in report
    assert "## Soak" in report and "**0 errors**" in report
    assert "triton 2.51.0" in report
    for png in ("throughput_vs_concurrency", "latency_vs_throughput", "stage_breakdown", "soak_rss"):
        data = (bench_run / f"{png}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, png
        assert f"({png}.png)" in report


def test_perf_analyzer_failure_is_a_named_error(served, tmp_path: Path) -> None:
    server = served["server"]
    data = perf.write_input_data(
        tmp_path / "in.json", [{"VIDEO": np.fromfile(served["videos"][0], np.uint8)}]
    )
    with pytest.raises(perf.PerfError, match="no_such_model|exited"):
        perf.sweep(
            "no_such_model",
            url=server.grpc_url,
            http_url=server.http_url,
            input_data=data,
            concurrencies=[1],
            settings=perf.PerfSettings(request_count=2, max_trials=1, timeout_s=60),
            out_dir=tmp_path,
        )


def test_request_errors_surface_with_the_servers_message(served, tmp_path: Path) -> None:
    server = served["server"]
    garbage = np.arange(100, dtype=np.uint8)  # not a video container
    data = perf.write_input_data(tmp_path / "in.json", [{contract.VIDEO: garbage}])
    with pytest.raises(perf.PerfError, match="not a readable video container"):
        perf.sweep(
            contract.ENSEMBLE,
            url=server.grpc_url,
            http_url=server.http_url,
            input_data=data,
            concurrencies=[1],
            settings=perf.PerfSettings(request_count=2, max_trials=1, timeout_s=60),
            out_dir=tmp_path,
        )
