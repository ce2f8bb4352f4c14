"""A local run of the Kubernetes scoring Job: N scorer processes, each ``--shard i/N --resume`` over one list
into its own output, against two real Triton servers on loopback; some are SIGKILLed mid-run and started
again with the same index (what the Job controller does with a failed pod). Afterwards ``merge`` must find
every input scored exactly once across the shards, the shards evenly loaded, and every row equal to an
uninterrupted, unsharded run. Also: a list and its videos served over HTTP score like local files."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from clients.score import ScoreConfig, run
from clients.scoring.outputs import ResultSink
from tests.utils_server import build_tiny_repository
from tests.utils_video import small_motion_videos
from triton_models.server import TritonServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VIDEOS = 120
SHARDS = 3
# Per shard: SIGKILL when its output holds this many rows (0: as soon as it started, before any row).
KILLS = {0: [6], 1: [3, 18], 2: [0]}
FAST_EXIT = ["--exit-timeout-secs=2"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return small_motion_videos(tmp_path_factory.mktemp("shard_videos"), VIDEOS)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[TritonServer]]:
    # The helper's 100 ms batcher delay keeps each request slow enough for the kills to land mid-run.
    repo, _ = build_tiny_repository(tmp_path_factory.mktemp("shard_repo"))
    with TritonServer(repo, extra_args=FAST_EXIT) as a, TritonServer(repo, extra_args=FAST_EXIT) as b:
        yield [a, b]


@pytest.fixture(scope="module")
def reference(
    servers: list[TritonServer], videos: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """An uninterrupted, unsharded in-process run: path -> its row."""
    tmp = tmp_path_factory.mktemp("shard_ref")
    lst = tmp / "all.txt"
    lst.write_text("".join(f"{v}\n" for v in videos))
    cfg = ScoreConfig(input=str(lst), out=str(tmp / "ref.jsonl"), urls=[servers[0].grpc_url], progress=False)
    summary = asyncio.run(run(cfg, log=lambda _m: None))
    assert summary.complete and summary.ok == VIDEOS
    return {r["input"]: r for r in ResultSink(tmp / "ref.jsonl").existing()}


def rows_in(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def start(shard: int, lst: Path, out: Path, servers: list[TritonServer]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "clients.score", "--no-progress", "--input", str(lst), "--out", str(out)]
    cmd += ["--shard", f"{shard}/{SHARDS}", "--resume", "--concurrency", "2"]
    for s in servers:
        cmd += ["--url", s.grpc_url]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sharded_job_with_sigkills_scores_every_input_exactly_once(
    servers: list[TritonServer], videos: list[Path], reference: dict, tmp_path: Path
) -> None:
    lst = tmp_path / "videos.txt"
    lst.write_text("".join(f"{v}\n" for v in videos))
    outs = [tmp_path / "results" / f"scores-{i}.jsonl" for i in range(SHARDS)]
    procs = {i: start(i, lst, outs[i], servers) for i in range(SHARDS)}
    started_at = {i: time.monotonic() for i in range(SHARDS)}
    pending = {i: list(KILLS.get(i, [])) for i in range(SHARDS)}
    killed_at: list[tuple[int, int]] = []  # (shard, rows durable at the kill)
    logs: dict[int, list[str]] = {i: [] for i in range(SHARDS)}
    deadline = time.monotonic() + 240
    while procs:
        assert time.monotonic() < deadline, f"shards {sorted(procs)} still running"
        for i, proc in list(procs.items()):
            n = rows_in(outs[i])
            due = pending[i] and (
                (pending[i][0] == 0 and time.monotonic() - started_at[i] > 0.5) or (0 < pending[i][0] <= n)
            )
            if proc.poll() is None and due:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()
                killed_at.append((i, rows_in(outs[i])))
                pending[i].pop(0)
                procs[i] = start(i, lst, outs[i], servers)  # the same index again, as the Job controller does
                started_at[i] = time.monotonic()
            elif proc.poll() is not None:
                _out, err = proc.communicate()
                logs[i].append(err)
                assert proc.returncode == 0, f"shard {i} exited {proc.returncode}: {err[-2000:]}"
                assert not pending[i], f"shard {i} finished before its kill at {pending[i][0]} rows"
                del procs[i]
        time.sleep(0.02)

    per_shard = VIDEOS // SHARDS
    assert len(killed_at) == sum(len(k) for k in KILLS.values())
    assert all(n < per_shard for _i, n in killed_at), f"a kill landed after its shard finished: {killed_at}"
    # The resumed runs skipped what their killed predecessors had written.
    assert any(" skipped of " in e and not e.split(" skipped of ")[0].endswith(" 0") for e in logs[1])

    merged = tmp_path / "merged.jsonl"
    cmd = [sys.executable, "-m", "clients.score", "merge", "--input", str(lst), "--out", str(merged)]
    res = subprocess.run([*cmd, *map(str, outs)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"{VIDEOS} rows of {VIDEOS} inputs" in res.stderr and "0 missing, 0 doubled" in res.stderr

    # Independently of merge: count the shard outputs' rows ourselves.
    rows = [r for out in outs for r in ResultSink(out).existing()]
    per_ordinal = Counter(r["ordinal"] for r in rows)
    lost = VIDEOS - len(per_ordinal)
    doubled = sum(c - 1 for c in per_ordinal.values())
    counts = [sum(1 for _ in ResultSink(out).existing()) for out in outs]
    imbalance = max(abs(c - VIDEOS / SHARDS) for c in counts) / (VIDEOS / SHARDS)
    print(
        f"simulation: {SHARDS} shards {counts}, kills {killed_at}, lost {lost}, doubled {doubled}, "
        f"imbalance {100 * imbalance:.1f} %"
    )
    assert lost == 0 and doubled == 0 and imbalance <= 0.2
    assert {r["endpoint"] for r in rows} == {s.grpc_url for s in servers}  # both servers served
    for r in rows:
        want = reference[r["input"]]
        assert r["status"] == "ok" and r["ids"] == want["ids"]
        np.testing.assert_allclose(r["probs"], want["probs"], rtol=0, atol=1e-6)
    assert sorted(json.loads(x)["ordinal"] for x in merged.read_text().splitlines()) == list(range(VIDEOS))


@pytest.fixture(scope="module")
def http_videos(videos: list[Path]) -> Iterator[str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(videos[0].parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_list_and_videos_over_http_score_like_local_files(
    servers: list[TritonServer], videos: list[Path], reference: dict, http_videos: str, tmp_path: Path
) -> None:
    names = [v.name for v in videos[:12]]
    (videos[0].parent / "http-list.txt").write_text("".join(f"{n}\n" for n in names) + "missing.mp4\n")
    cfg = ScoreConfig(
        input=f"{http_videos}/http-list.txt",
        root=http_videos,  # relative entries are URLs under it
        out=str(tmp_path / "http.jsonl"),
        urls=[s.grpc_url for s in servers],
        progress=False,
    )
    summary = asyncio.run(run(cfg, log=lambda _m: None))
    assert summary.complete and summary.ok == len(names) and summary.errors == 1
    rows = {r["ordinal"]: r for r in ResultSink(tmp_path / "http.jsonl").existing()}
    for i, name in enumerate(names):
        want = reference[str(videos[i])]
        assert rows[i]["input"] == name and rows[i]["ids"] == want["ids"]
        np.testing.assert_allclose(rows[i]["probs"], want["probs"], rtol=0, atol=1e-6)
    assert rows[len(names)]["status"] == "error" and rows[len(names)]["error"].startswith("missing file")
