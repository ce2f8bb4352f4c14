"""The scorer's server-free pieces: input streams, the resume ledger, output files with torn-tail repair,
failure classification, backoff and endpoint choice (against real, unreachable gRPC endpoints)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
from pathlib import Path

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from clients.score import ScoreConfig, ScoreError, main, prepare, read_video, top_k
from clients.scoring.endpoints import AllEndpointsDown, EndpointPool, normalize_url
from clients.scoring.inputs import InputError, InputItem, InputSource
from clients.scoring.ledger import DoneSet, LedgerError, verify_input
from clients.scoring.outputs import FIELDS, CsvCodec, JsonlCodec, OutputError, ResultSink, RowLog
from clients.scoring.retry import Backoff, triage

ODD = 'we"ird, name\nwith\\newline\r and ünïcode \udcff.mp4'


def _row(ordinal: int, path: str = "v.mp4", **kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "input": path,
        "ordinal": ordinal,
        "status": "ok",
        "error": None,
        "labels": ["a,b", 'c"d'],
        "ids": [3, 1],
        "probs": [0.7123456789012345, 0.1],
        "latency_ms": 12.5,
        "endpoint": "127.0.0.1:1",
        "attempt": 1,
    }
    row.update(kw)
    return row


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- inputs ------------------------------------------------------------------------------------------


def test_list_input_skips_blanks_and_keeps_duplicates(tmp_path: Path) -> None:
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"a.mp4\n\n# comment\nb.mp4\r\na.mp4\nsp ace.mp4\n\xff.mp4")
    src = InputSource(str(lst), root=tmp_path)
    items = list(src)
    assert [i.path for i in items] == ["a.mp4", "b.mp4", "a.mp4", "sp ace.mp4", "\udcff.mp4"]
    assert [i.ordinal for i in items] == [0, 1, 2, 3, 4]
    assert src.count() == 5
    assert src.resolve(items[1]) == tmp_path / "b.mp4"
    assert list(src) == items  # re-iterable, same order


def test_dir_and_glob_inputs(tmp_path: Path) -> None:
    (tmp_path / "x" / "y").mkdir(parents=True)
    for name in ("a.mp4", "x/b.AVI", "x/y/c.webm", "x/notes.txt"):
        (tmp_path / name).write_bytes(b"1")
    d = InputSource(str(tmp_path))
    assert d.kind == "dir" and d.count() is None
    assert sorted(Path(i.path).name for i in d) == ["a.mp4", "b.AVI", "c.webm"]
    assert list(d) == list(d)  # stable order for an unchanged tree
    g = InputSource(str(tmp_path / "**" / "*.mp4"))
    assert g.kind == "glob" and [Path(i.path).name for i in g] == ["a.mp4"]


def test_bad_input_argument(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such list file"):
        InputSource(str(tmp_path / "missing.txt"))
    with pytest.raises(InputError, match="empty"):
        InputSource("")


# --- ledger ------------------------------------------------------------------------------------------


def test_doneset_bitmap_and_duplicates() -> None:
    done = DoneSet()
    for o in (0, 7, 8, 1_000_003):
        done.add(o, f"p{o}")
    assert 7 in done and 8 in done and 1_000_003 in done and 6 not in done and 5_000_000 not in done
    assert done.count == 4 and done.nbytes < 300_000  # one bit per ordinal, not one object per row
    with pytest.raises(LedgerError, match="two rows for input #7"):
        done.add(7, "p7")


def test_verify_input_detects_a_changed_stream() -> None:
    items = [InputItem(i, f"v{i}.mp4") for i in range(10)]
    done = DoneSet()
    for it in items[:4]:
        done.add(it.ordinal, it.path)
    assert verify_input(done, iter(items), output="o") == 10
    swapped = [InputItem(i, f"v{(i + 1) % 10}.mp4") for i in range(10)]
    with pytest.raises(LedgerError, match="different input"):
        verify_input(done, iter(swapped), output="o")
    with pytest.raises(LedgerError, match="beyond the end"):
        verify_input(done, iter(items[:2]), output="o")


# --- outputs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", [JsonlCodec, CsvCodec])
def test_codecs_round_trip_odd_values(codec: type) -> None:
    rows = [
        _row(0, ODD),
        _row(1, "e.mp4", status="error", error='bad\nthing, "x"', labels=[], ids=[], probs=[]),
    ]
    for row in rows:
        line = codec.encode(row)
        assert line.endswith("\n") and line.count("\n") == 1  # one record per physical line
        back = codec.decode(line[:-1], "t")
        assert {k: back[k] for k in FIELDS} == {k: row[k] for k in FIELDS}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_rowlog_repairs_a_torn_tail_and_appends_after_it(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"r{suffix}"
    codec = CsvCodec if suffix == ".csv" else JsonlCodec
    log = RowLog(path, codec)
    log.open()
    for i in range(3):
        log.write(_row(i, f"v{i}.mp4"))
    log.close()
    good = path.stat().st_size
    with open(path, "ab") as f:
        f.write(codec.encode(_row(3, "v3.mp4")).encode()[:17])  # a crash mid-write
    log = RowLog(path, codec)
    assert [r["ordinal"] for r in log.recover()] == [0, 1, 2]
    assert log.repaired_bytes == 17 and path.stat().st_size == good
    log.open()
    log.write(_row(3, "v3.mp4"))
    log.close()
    assert [r["ordinal"] for r in RowLog(path, codec).recover()] == [0, 1, 2, 3]


def test_rowlog_drops_a_garbage_last_line_but_refuses_a_corrupt_middle(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    lines = [JsonlCodec.encode(_row(i)) for i in range(3)]
    path.write_text(lines[0] + lines[1] + '{"input": "x", \x00\x00\n')
    assert [r["ordinal"] for r in RowLog(path, JsonlCodec).recover()] == [0, 1]
    path.write_text(lines[0] + "not json\n" + lines[2])
    with pytest.raises(OutputError, match=r"r\.jsonl:2: not a JSON line"):
        list(RowLog(path, JsonlCodec).recover())
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("some,other,header\n")
    with pytest.raises(OutputError, match="not this scorer's CSV header"):
        list(RowLog(csv_path, CsvCodec).recover())


def test_parquet_journal_converts_atomically_and_resumes_from_the_finished_file(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    out = tmp_path / "r.parquet"
    sink = ResultSink(out)
    sink.open()
    sink.write(_row(0, ODD))
    sink.write(_row(1, "b.mp4", status="error", error="missing file", labels=[], ids=[], probs=[]))
    sink.close(complete=False)
    assert not out.exists() and sink.journal_path.exists()  # incomplete: only the journal
    sink = ResultSink(out)
    assert [r["ordinal"] for r in sink.existing()] == [0, 1]
    sink.open()
    sink.close(complete=True)
    assert out.exists() and not sink.journal_path.exists()
    table = pq.read_table(out)
    assert table.column_names == list(FIELDS) and table.num_rows == 2
    assert table.column("probs")[0].as_py() == [0.7123456789012345, 0.1]
    again = ResultSink(out)
    assert again.has_rows() and [r["ordinal"] for r in again.existing()] == [0, 1]
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(OutputError, match="not a readable Parquet"):
        list(ResultSink(tmp_path / "junk.parquet").existing())


def test_unknown_output_format_and_existing_output_without_resume(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="unknown format"):
        ResultSink(tmp_path / "r.txt")
    lst = tmp_path / "l.txt"
    lst.write_text("a.mp4\n")
    out = tmp_path / "r.jsonl"
    out.write_text(JsonlCodec.encode(_row(0, "a.mp4")))
    with pytest.raises(ScoreError, match="--resume"):
        prepare(ScoreConfig(input=str(lst), out=str(out)), print)
    source, _sink, done, total = prepare(ScoreConfig(input=str(lst), out=str(out), resume=True), print)
    assert total == 1 and 0 in done


def test_cli_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lst = tmp_path / "l.txt"
    lst.write_text("a.mp4\n")
    assert main(["--input", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "no such list file" in capsys.readouterr().err
    assert main(["--input", str(lst), "--out", str(tmp_path / "o.xlsx")]) == 2
    assert "unknown format" in capsys.readouterr().err
    assert main(["--input", str(lst), "--out", str(tmp_path / "o.jsonl"), "--concurrency", "0"]) == 2
    assert "--concurrency" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


# --- one video -----------------------------------------------------------------------------------------


def test_read_video_reasons(tmp_path: Path) -> None:
    (tmp_path / "ok.mp4").write_bytes(b"\x00\x01\x02")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "big.mp4").write_bytes(b"x" * 100)
    data = read_video(tmp_path / "ok.mp4", 10)
    assert isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.tolist() == [0, 1, 2]
    assert read_video(tmp_path / "missing.mp4", 10) == "missing file: no such file"
    assert read_video(tmp_path / "empty.mp4", 10) == "empty file: 0 bytes"
    assert read_video(tmp_path / "big.mp4", 10).startswith("too large: 100 bytes")
    assert read_video(tmp_path, 10) == "unreadable file: not a regular file"
    if os.geteuid() != 0:
        (tmp_path / "locked.mp4").write_bytes(b"1")
        (tmp_path / "locked.mp4").chmod(0)
        assert str(read_video(tmp_path / "locked.mp4", 10)).startswith("unreadable file")


def test_top_k_order_and_ties() -> None:
    ids, probs = top_k(np.array([0.1, 0.4, 0.4, 0.1], dtype=np.float32), 3)
    assert ids == [1, 2, 0] and probs == [pytest.approx(0.4), pytest.approx(0.4), pytest.approx(0.1)]
    assert top_k(np.array([[0.2, 0.8]], dtype=np.float32), 5)[0] == [1, 0]


# --- retry policy --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "transient", "down"),
    [
        (InferenceServerException("connect failed", status="StatusCode.UNAVAILABLE"), True, True),
        (InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED"), True, False),
        (
            InferenceServerException("bad video: no stream", status="StatusCode.INVALID_ARGUMENT"),
            False,
            False,
        ),
        (InferenceServerException("decode failed", status="StatusCode.INTERNAL"), False, False),
        (InferenceServerException("Stub process is not healthy.", status="StatusCode.INTERNAL"), True, False),
        (InferenceServerException("bad video", status="400"), False, False),
        (InferenceServerException("overloaded", status="503"), True, True),
        (InferenceServerException("gateway", status="504"), True, False),
        (
            InferenceServerException("Request for unknown model: 'm' has no available versions", "400"),
            True,
            True,
        ),
        (InferenceServerException("unknown model", status="StatusCode.NOT_FOUND"), True, True),
        (  # the dali model's decoder failed on this request's video (a request of its own)
            InferenceServerException(
                "in ensemble 'video_classifier', Runtime error: Critical error in pipeline: Error in CPU "
                "operator `nvidia.dali.fn.decoders.video`, ... Failed to send packet to decoder",
                status="StatusCode.UNKNOWN",
            ),
            False,
            False,
        ),
        (
            InferenceServerException(
                "Error in GPU operator `nvidia.dali.fn.decoders.video`: CUDA out of memory",
                status="StatusCode.UNKNOWN",
            ),
            True,
            False,
        ),
        (asyncio.TimeoutError(), True, False),
        (ConnectionRefusedError(111, "refused"), True, True),
        (ConnectionResetError(104, "reset"), True, True),
    ],
)
def test_classify(exc: BaseException, transient: bool, down: bool) -> None:
    f = triage(exc)
    assert (f.transient, f.endpoint_down) == (transient, down) and f.reason


def test_backoff_is_capped_exponential_with_jitter() -> None:
    b = Backoff(base_s=0.1, cap_s=1.0)
    assert [b.ceiling(n) for n in (1, 2, 3, 4, 5, 100)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    rng = random.Random(0)
    delays = [b.delay(4, rng) for _ in range(200)]
    assert all(0 <= d <= 0.8 for d in delays) and len(set(delays)) > 100
    with pytest.raises(ValueError):
        Backoff(base_s=0.0)


# --- endpoint pool -------------------------------------------------------------------------------------


def test_normalize_url() -> None:
    assert normalize_url("http://h:8000/") == "h:8000"
    with pytest.raises(ValueError, match="host:port"):
        normalize_url("justahost")


def test_pool_policies_and_all_down() -> None:
    async def go() -> None:
        urls = [f"127.0.0.1:{_free_port()}" for _ in range(3)]  # nothing listens there
        pool = EndpointPool(urls, model="m", balance="least-loaded", down_limit_s=0.6, cooloff_s=0.1)
        try:
            a = await pool.acquire()
            b = await pool.acquire()
            c = await pool.acquire()
            assert {a.url, b.url, c.url} == set(urls)  # least-loaded spreads the first three
            pool.release(b, ok=True)
            assert (await pool.acquire()) is b  # b is now the least loaded
            pool.release(a, ok=False, down=True, error="refused")
            assert not a.up and a.probe_task is not None
            for _ in range(6):
                ep = await pool.acquire(avoid=b)
                assert ep is c  # a is down; b avoided
                pool.release(ep, ok=True)
            # Timeouts take an endpoint out only after several in a row.
            for _ in range(pool.max_consecutive_failures - 1):
                pool.release(await pool.acquire(avoid=b), ok=False, error="timeout")
                assert c.up
            pool.release(c, ok=False, error="timeout")
            pool.release(b, ok=False, down=True, error="refused")
            pool.release(b, ok=True)
            assert not any(e.up for e in pool.endpoints)
            with pytest.raises(AllEndpointsDown, match="down for more than 0.6 s"):
                await pool.acquire()
        finally:
            await pool.close()

        rr = EndpointPool(urls, model="m", balance="round-robin")
        try:
            picks = []
            for _ in range(6):
                ep = await rr.acquire()
                picks.append(ep.url)  # never released: round-robin ignores load
            assert picks == urls + urls
            await rr.start()  # nothing is listening: every endpoint starts down
            assert not any(e.up for e in rr.endpoints) and "127.0.0.1" in rr.last_error
        finally:
            await rr.close()

    asyncio.run(go())


def test_cli_stops_with_exit_1_when_no_endpoint_comes_up(tmp_path: Path) -> None:
    lst = tmp_path / "l.txt"
    lst.write_text("a.mp4\nb.mp4\n")
    out = tmp_path / "o.jsonl"
    argv = ["--input", str(lst), "--out", str(out), "--url", f"127.0.0.1:{_free_port()}"]
    assert main([*argv, "--down-limit", "1", "--no-progress"]) == 1
    assert not out.exists() or out.read_text() == ""
    assert json.loads(JsonlCodec.encode(_row(0)))["ordinal"] == 0
