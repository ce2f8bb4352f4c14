"""The batch scorer end to end: the real ``video_classifier`` ensemble built from a tiny checkpoint, a real
tritonserver, real H.264 files; SIGKILL + resume, a server restarted mid-run, an endpoint killed, bad files,
and all three output formats with a torn last line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from build_engines.repository import RepositoryOptions
from clients.score import ScoreConfig, run
from clients.scoring.outputs import JsonlCodec, ResultSink, RowLog
from tests.utils_server import build_tiny_repository
from tests.utils_video import small_motion_videos
from triton_models.server import TritonServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DISTINCT = 100  # distinct encoded videos; lists repeat them (a repeated path is scored once per listing)
# A stopped server waits this long for in-flight requests (Triton's default is 30 s), and the scorer
# keeps sending them until it sees the endpoint go.
FAST_EXIT = ["--exit-timeout-secs=2"]
LABELS = ["walk", "run: fast", 'say "hi"', "swim, dive", "sit"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return small_motion_videos(tmp_path_factory.mktemp("score_videos"), DISTINCT)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The default batcher delay (5 ms), not the helper's long test delay: these tests push hundreds of videos.
    repo, _ckpt = build_tiny_repository(
        tmp_path_factory.mktemp("score_repo"), labels=LABELS, options=RepositoryOptions()
    )
    return repo


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[TritonServer]:
    with TritonServer(repository, extra_args=FAST_EXIT) as s:
        yield s


def write_list(path: Path, videos: list[Path], n: int) -> Path:
    # A fixed shuffle of the videos, cycled: every video appears several times in a long list.
    order = list(range(len(videos)))
    random.Random(1).shuffle(order)
    path.write_text("".join(f"{videos[order[i % len(order)]]}\n" for i in range(n)))
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    sink = ResultSink(path)
    return list(sink.existing()) if sink.has_rows() else []


def by_ordinal(rows: list[dict[str, Any]], n: int) -> dict[int, dict[str, Any]]:
    """Rows keyed by ordinal, asserting exactly one row per input 0..n-1."""
    ords = [r["ordinal"] for r in rows]
    assert len(ords) == len(set(ords)), "an input has two rows"
    assert sorted(ords) == list(range(n)), f"missing rows: {sorted(set(range(n)) - set(ords))[:10]}"
    return {r["ordinal"]: r for r in rows}


@pytest.fixture(scope="module")
def reference(server: TritonServer, videos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted in-process run over every distinct video: path -> its ok row."""
    tmp = tmp_path_factory.mktemp("score_ref")
    lst = write_list(tmp / "all.txt", videos, DISTINCT)
    cfg = ScoreConfig(
        input=str(lst), out=str(tmp / "ref.jsonl"), urls=[server.grpc_url], top_k=3, progress=False
    )
    summary = asyncio.run(run(cfg, log=lambda _m: None))
    assert summary.complete and summary.ok == DISTINCT
    rows = by_ordinal(read_rows(tmp / "ref.jsonl"), DISTINCT)
    ref = {r["input"]: r for r in rows.values()}
    for r in ref.values():
        assert r["status"] == "ok" and len(r["probs"]) == 3 and r["probs"] == sorted(r["probs"], reverse=True)
        assert r["labels"] == [LABELS[i] for i in r["ids"]]
    # The tiny random model still tells videos apart: results are not one constant.
    assert len({tuple(r["probs"]) for r in ref.values()}) > DISTINCT // 2
    return ref


def assert_matches_reference(rows: dict[int, dict[str, Any]], ref: dict[str, dict[str, Any]]) -> None:
    for r in rows.values():
        assert r["status"] == "ok", r
        want = ref[r["input"]]
        assert r["ids"] == want["ids"] and r["labels"] == want["labels"]
        np.testing.assert_allclose(r["probs"], want["probs"], rtol=0, atol=1e-6)


def start_cli(args: list[str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "clients.score", "--no-progress", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_rows(path: Path, at_least: int, proc: subprocess.Popen[str], timeout_s: float = 60.0) -> int:
    """Wait until ``path`` holds ``at_least`` lines (the scorer flushes about twice a second)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = path.read_bytes().count(b"\n") if path.exists() else 0
        if n >= at_least:
            return n
        if proc.poll() is not None:
            pytest.fail(f"scorer exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{path}: fewer than {at_least} rows after {timeout_s} s")


def finish(proc: subprocess.Popen[str], timeout_s: float = 120.0) -> tuple[int, str]:
    try:
        _out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        pytest.fail(f"scorer still running after {timeout_s} s: {err[-2000:]}")
    return proc.returncode, err


def test_sigkill_then_resume_gives_one_row_per_input_equal_to_an_uninterrupted_run(
    server: TritonServer, videos: list[Path], reference: dict, tmp_path: Path
) -> None:
    n = 300
    lst = write_list(tmp_path / "list.txt", videos, n)
    out = tmp_path / "out.jsonl"
    args = ["--input", str(lst), "--out", str(out), "--url", server.grpc_url, "--top-k", "3"]
    # SIGTERM: a clean stop, exit 1, the rows so far flushed.
    proc = start_cli([*args, "--concurrency", "2"])
    wait_rows(out, 20, proc)
    proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc, 30)
    assert rc == 1 and "STOPPED (interrupted)" in err, err
    stopped = len(read_rows(out))
    assert 20 <= stopped < n
    # SIGKILL at a random moment of the resumed run.
    proc = start_cli([*args, "--resume", "--concurrency", "2"])
    wait_rows(out, stopped + 30, proc)
    time.sleep(random.Random(7).uniform(0.0, 0.4))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    partial = read_rows(out)
    assert stopped + 30 <= len(partial) < n, "the kill should land mid-run"
    with open(out, "ab") as f:  # what a crash inside a write leaves: a line without its end
        f.write(JsonlCodec.encode(partial[-1]).encode()[:25])
    rc, err = finish(start_cli([*args, "--resume", "--concurrency", "4"]))
    assert rc == 0, err
    assert "repaired a torn last line" in err and f"{len(partial)} skipped of {n} inputs" in err
    rows = by_ordinal(read_rows(out), n)
    assert_matches_reference(rows, reference)
    assert all(rows[i]["input"] == line for i, line in enumerate(lst.read_text().splitlines()))


def test_endpoints_down_stops_resumably_and_a_restarted_server_completes_the_run(
    repository: Path, videos: list[Path], reference: dict, tmp_path: Path
) -> None:
    n = 120
    lst = write_list(tmp_path / "list.txt", videos, n)
    out = tmp_path / "out.csv"
    s2 = TritonServer(repository, log_file=tmp_path / "s2.log", extra_args=FAST_EXIT).start()
    ports = {"http_port": s2.http_port, "grpc_port": s2.grpc_port, "metrics_port": s2.metrics_port}
    try:
        args = [
            "--input",
            str(lst),
            "--out",
            str(out),
            "--url",
            s2.grpc_url,
            "--top-k",
            "3",
            "--concurrency",
            "2",
        ]
        # 1. The only server goes away for good: the scorer stops after --down-limit, exit 1, output kept.
        proc = start_cli([*args, "--down-limit", "2"])
        wait_rows(out, 20, proc)
        s2.stop()
        rc, err = finish(proc)
        assert rc == 1 and "STOPPED (all 1 endpoint(s) down for more than 2 s" in err, err
        first = len(read_rows(out))
        assert 0 < first < n
        # 2. Resume against the server restarted on the same ports; restart it once more mid-run.
        s2 = TritonServer(repository, log_file=tmp_path / "s2.log", extra_args=FAST_EXIT, **ports).start()
        proc = start_cli([*args, "--resume", "--down-limit", "60"])
        wait_rows(out, first + 30, proc)
        s2.stop()
        time.sleep(1.0)
        s2 = TritonServer(repository, log_file=tmp_path / "s2.log", extra_args=FAST_EXIT, **ports).start()
        rc, err = finish(proc)
        assert rc == 0, err
        assert "down" in err and "back up" in err  # the outage was seen and ridden out
    finally:
        s2.stop()
    rows = by_ordinal(read_rows(out), n)
    assert_matches_reference(rows, reference)


def test_two_endpoints_one_killed_mid_run_completes_on_the_other(
    server: TritonServer, repository: Path, videos: list[Path], reference: dict, tmp_path: Path
) -> None:
    n = 120
    lst = write_list(tmp_path / "list.txt", videos, n)
    out = tmp_path / "out.jsonl"
    s2 = TritonServer(repository, log_file=tmp_path / "s2.log").start()
    try:
        proc = start_cli(
            ["--input", str(lst), "--out", str(out), "--url", s2.grpc_url, "--url", server.grpc_url]
            + ["--top-k", "3", "--concurrency", "4", "--balance", "round-robin"]
        )
        wait_rows(out, 30, proc)
        assert s2.pid is not None
        # A SIGKILLed tritonserver cannot stop its python-backend stubs: remember them to clean up.
        stubs = psutil.Process(s2.pid).children(recursive=True)
        os.kill(s2.pid, signal.SIGKILL)
        rc, err = finish(proc)
    finally:
        s2.stop()
        for stub in locals().get("stubs", []):
            with contextlib.suppress(psutil.Error):
                stub.kill()
    assert rc == 0, err
    assert f"endpoint {s2.grpc_url} down" in err
    rows = by_ordinal(read_rows(out), n)
    assert_matches_reference(rows, reference)
    served = {r["endpoint"] for r in rows.values()}
    assert served == {s2.grpc_url, server.grpc_url}
    last = sorted(rows.values(), key=lambda r: r["ordinal"])[-20:]
    assert all(r["endpoint"] == server.grpc_url for r in last)  # after the kill only the survivor serves


def test_bad_files_become_error_rows_naming_the_reason(
    server: TritonServer, videos: list[Path], reference: dict, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "random.mp4").write_bytes(
        np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    )
    good = videos[0].read_bytes()
    (bad / "truncated.mp4").write_bytes(good[: len(good) // 3])
    (bad / "empty.mp4").write_bytes(b"")
    (bad / "text.mp4").write_text("this is not a video\n")
    (bad / "huge.mp4").write_bytes(good * 40)  # larger than --max-bytes below
    (bad / "adir.mp4").mkdir()
    entries = {
        str(videos[0]): "ok",
        str(bad / "missing.mp4"): "missing file",
        str(bad / "random.mp4"): "INVALID_ARGUMENT",
        str(bad / "truncated.mp4"): "INVALID_ARGUMENT",
        str(videos[1]): "ok",
        str(bad / "empty.mp4"): "empty file",
        str(bad / "text.mp4"): "INVALID_ARGUMENT",
        str(bad / "huge.mp4"): "too large",
        str(bad / "adir.mp4"): "not a regular file",
        str(videos[2]): "ok",
    }
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{p}\n" for p in entries))
    out = tmp_path / "out.jsonl"
    cfg = ScoreConfig(
        input=str(lst),
        out=str(out),
        urls=[server.grpc_url],
        top_k=3,
        max_bytes=len(good) * 10,
        progress=False,
    )
    summary = asyncio.run(run(cfg, log=lambda _m: None))
    assert summary.complete and summary.ok == 3 and summary.errors == 7
    rows = by_ordinal(read_rows(out), len(entries))
    for row in rows.values():
        want = entries[row["input"]]
        if want == "ok":
            assert row["status"] == "ok"
            np.testing.assert_allclose(row["probs"], reference[row["input"]]["probs"], atol=1e-6)
        else:
            assert row["status"] == "error" and want in row["error"], row
            assert row["probs"] == [] and "\n" not in row["error"]
    # The server's own reason reaches the row (not just a status code).
    assert "video" in rows[2]["error"].lower() or "container" in rows[2]["error"].lower()


@pytest.mark.parametrize(("suffix", "protocol"), [(".jsonl", "grpc"), (".csv", "http"), (".parquet", "grpc")])
def test_output_formats_resume_after_a_torn_last_line(
    server: TritonServer, videos: list[Path], reference: dict, tmp_path: Path, suffix: str, protocol: str
) -> None:
    n = 40
    lst = write_list(tmp_path / "list.txt", videos, n)
    url = server.grpc_url if protocol == "grpc" else server.http_url

    def score(out: Path, resume: bool) -> Any:
        cfg = ScoreConfig(
            input=str(lst),
            out=str(out),
            urls=[url],
            protocol=protocol,
            top_k=3,
            resume=resume,
            progress=False,
        )
        return asyncio.run(run(cfg, log=lambda _m: None))

    full = tmp_path / f"full{suffix}"
    assert score(full, False).complete
    full_rows = by_ordinal(read_rows(full), n)
    assert_matches_reference(full_rows, reference)

    # The state a crash leaves: 25 rows durable, the 26th half-written (Parquet: in the journal).
    crashed = tmp_path / f"crashed{suffix}"
    sink = ResultSink(crashed)
    kept = sorted(full_rows.values(), key=lambda r: r["ordinal"])[:26]
    log = sink.log
    log.open()
    for row in kept[:25]:
        log.write(row)
    log.close()
    with open(log.path, "ab") as f:
        f.write(log.codec.encode(kept[25]).encode()[:30])
    summary = score(crashed, True)
    assert (
        summary.complete and summary.skipped == 25 and summary.ok == n - 25 and summary.repaired_bytes == 30
    )
    rows = by_ordinal(read_rows(crashed), n)
    assert_matches_reference(rows, reference)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        assert not sink.journal_path.exists() and pq.read_table(crashed).num_rows == n
    else:
        assert list(RowLog(crashed, log.codec).recover()) == list(read_rows(crashed))
    # Resuming a finished output is a no-op that still reports completion.
    again = score(crashed, True)
    assert again.complete and again.skipped == n and again.scored == 0
