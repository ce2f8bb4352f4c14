"""``clients.score --timeline`` end to end: the real ``video_timeline`` model on a real tritonserver, real
H.264 files. A scorer SIGKILLed mid-run and resumed (with a window group cut short at the end of its file)
ends with exactly the rows of an uninterrupted run: one row per (input, window), none lost, none doubled,
the same probabilities; sharded CSV runs merged give the same rows."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from build_engines.repository import RepositoryOptions
from clients.score import ScoreConfig, run
from clients.scoring.outputs import ResultSink
from tests.utils_server import build_tiny_repository
from tests.utils_video import encode_video, moving_square_frames
from triton_models.server import TritonServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VIDEOS = 20
WINDOW = 0.5  # seconds: 2 s videos give 4 windows each
LABELS = ["walk", "run", "swim", "sit", "jump"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TritonServer, Path, Path]]:
    work = tmp_path_factory.mktemp("score_timeline")
    paths = []
    for k in range(VIDEOS):
        frames = moving_square_frames(num=20, height=32, width=32, size=8, dx=1 + k % 4, dy=k % 3 - 1, seed=k)
        paths.append(encode_video(work / f"v{k:02d}.mp4", frames, fps=10))
    bad = work / "bad.mp4"
    bad.write_bytes(b"not a video" * 100)
    lst = work / "videos.txt"
    lst.write_text("".join(f"{p}\n" for p in paths[:10] + [bad] + paths[10:]))
    repo, _ = build_tiny_repository(work / "repo", labels=LABELS, options=RepositoryOptions())
    with TritonServer(repo, extra_args=["--exit-timeout-secs=2"]) as server:
        yield server, lst, work


def rows_of(path: Path) -> list[dict[str, Any]]:
    return list(ResultSink(path, timeline=True).existing())


def keyed(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Rows by (input, window_index), asserting each key appears exactly once."""
    counts = Counter((r["input"], r["window_index"]) for r in rows)
    doubled = [k for k, n in counts.items() if n > 1]
    assert not doubled, f"doubled rows: {doubled[:5]}"
    return {(r["input"], r["window_index"]): r for r in rows}


def assert_same(
    got: dict[tuple[str, int], dict[str, Any]], want: dict[tuple[str, int], dict[str, Any]]
) -> None:
    assert set(got) == set(want), (sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5])
    for key, w in want.items():
        g = got[key]
        assert (g["status"], g["ids"], g["labels"], g["windows"]) == (
            w["status"],
            w["ids"],
            w["labels"],
            w["windows"],
        )
        assert (g["window_start"], g["window_end"]) == (w["window_start"], w["window_end"])
        np.testing.assert_allclose(g["probs"], w["probs"], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def reference(setup) -> dict[tuple[str, int], dict[str, Any]]:
    """An uninterrupted in-process run, to Parquet."""
    server, lst, work = setup
    out = work / "ref.parquet"
    cfg = ScoreConfig(
        input=str(lst),
        out=str(out),
        urls=[server.grpc_url],
        top_k=3,
        progress=False,
        timeline=True,
        window=WINDOW,
    )
    summary = asyncio.run(run(cfg, log=lambda _m: None))
    assert summary.complete and (summary.ok, summary.errors) == (VIDEOS, 1)
    assert out.exists() and not ResultSink(out).journal_path.exists()
    ref = keyed(rows_of(out))
    ok = [r for r in ref.values() if r["status"] == "ok"]
    assert len(ok) == VIDEOS * 4 == summary.rows - 1
    assert all(r["windows"] == 4 and r["labels"] == [LABELS[i] for i in r["ids"]] for r in ok)
    (bad,) = [r for r in ref.values() if r["status"] == "error"]
    assert (bad["window_index"], bad["windows"]) == (-1, 0) and "not a readable video" in bad["error"]
    assert len({tuple(r["probs"]) for r in ok}) > VIDEOS  # windows differ: not one constant answer
    return ref


def cli(*args: str) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "clients.score",
        "--no-progress",
        "--timeline",
        "--window",
        str(WINDOW),
        *args,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_and_resume_gives_each_window_row_exactly_once(setup, reference) -> None:
    server, lst, work = setup
    out = work / "killed.jsonl"
    args = [
        "--input",
        str(lst),
        "--out",
        str(out),
        "--url",
        server.grpc_url,
        "--top-k",
        "3",
        "--concurrency",
        "2",
    ]
    proc = cli(*args)
    deadline = time.monotonic() + 60
    while (out.read_bytes().count(b"\n") if out.exists() else 0) < 12:
        assert proc.poll() is None, f"scorer exited before the kill: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no rows after 60 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    before = out.read_bytes()
    lines = before.splitlines(keepends=True)
    assert 12 <= len(lines) < len(reference), "the kill did not land mid-run"
    # What a kill inside a group's write leaves, made certain whatever instant the kill hit: the last
    # group cut after its first row, then a torn half line.
    complete = [json.loads(line) for line in lines if line.endswith(b"\n")]
    second = max(j for j, r in enumerate(complete) if r["window_index"] == 1)
    out.write_bytes(b"".join(lines[:second]) + lines[second][: len(lines[second]) // 2])

    resumed = cli(*args, "--resume")
    _out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err[-2000:]
    assert "repaired a torn last line" in err and "dropped an incomplete window group" in err, err
    rows = rows_of(out)
    keys = Counter((r["input"], r["window_index"]) for r in rows)
    lost, doubled = len(set(reference) - set(keys)), sum(n - 1 for n in keys.values())
    print(f"\ntimeline kill/resume: {len(lines)} lines at SIGKILL; {len(rows)} rows after resume")
    print(f"timeline kill/resume: expected {len(reference)}, lost {lost}, doubled {doubled}")
    assert_same(keyed(rows), reference)
    assert len(rows) == len(reference)

    # A finished output resumed again scores nothing and stays as it is.
    again = cli(*args, "--resume")
    _out, err = again.communicate(timeout=60)
    assert again.returncode == 0 and "0 ok, 0 failed, 21 skipped" in err, err
    assert len(rows_of(out)) == len(reference)


def test_shards_to_csv_merge_to_the_same_rows(setup, reference) -> None:
    server, lst, work = setup
    parts = []
    for i in range(2):
        part = work / f"part-{i}.csv"
        proc = cli(
            "--input",
            str(lst),
            "--out",
            str(part),
            "--url",
            server.grpc_url,
            "--top-k",
            "3",
            "--shard",
            f"{i}/2",
        )
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        parts.append(str(part))
    merged = work / "merged.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "clients.score", "merge", "--input", str(lst), "--out", str(merged), *parts],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "21 rows of 21 inputs" in proc.stderr and "0 missing, 0 doubled" in proc.stderr, proc.stderr
    assert_same(keyed(rows_of(merged)), reference)


def test_timeline_needs_grpc(setup) -> None:
    _server, lst, work = setup
    proc = cli("--input", str(lst), "--out", str(work / "http.jsonl"), "--protocol", "http")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--timeline needs --protocol grpc" in err, err
