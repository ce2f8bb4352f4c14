"""``--shard I/N``: parsing, the two assignment rules and their balance (measured), a shard's resume checked
against its own slice, and ``merge`` finding missing, doubled and foreign rows. No server needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.score import ScoreConfig, ScoreError, main, prepare
from clients.scoring.inputs import InputSource
from clients.scoring.ledger import LedgerError
from clients.scoring.merge import merge
from clients.scoring.outputs import JsonlCodec, ResultSink
from clients.scoring.shards import Shard, ShardedSource


def _row(ordinal: int, path: str) -> dict[str, object]:
    return {"input": path, "ordinal": ordinal, "status": "ok", "error": None, "labels": ["a"], "ids": [0]}


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(JsonlCodec.encode(r) for r in rows))
    return path


def _list(tmp_path: Path, n: int) -> tuple[Path, list[str]]:
    paths = [f"videos/class_{i % 7}/clip_{i:05d}.mp4" for i in range(n)]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(p + "\n" for p in paths))
    return lst, paths


def test_parse_and_bad_values() -> None:
    assert Shard.parse("2/5") == Shard(2, 5) and str(Shard.parse(" 0 / 1 ")) == "0/1"
    for bad, msg in [("3/3", "0..2"), ("1", "expected I/N"), ("-1/3", "expected I/N"), ("0/0", ">= 1")]:
        with pytest.raises(ValueError, match=msg):
            Shard.parse(bad)
    with pytest.raises(ValueError, match="--shard-by"):
        Shard(0, 2, "random")
    assert main(["--input", "x", "--out", "y.jsonl", "--shard", "4/4"]) == 2


@pytest.mark.parametrize("by", ["position", "hash"])
def test_shards_partition_the_input_and_are_stable(tmp_path: Path, by: str) -> None:
    lst, paths = _list(tmp_path, 500)
    src = InputSource(str(lst))
    slices = [list(ShardedSource(src, Shard(i, 3, by))) for i in range(3)]
    ordinals = sorted(it.ordinal for s in slices for it in s)
    assert ordinals == list(range(500))  # every input in exactly one shard
    assert all(it.path == paths[it.ordinal] for s in slices for it in s)  # global ordinals kept
    # Re-reading the list gives the same slices; appending to it moves nothing already assigned.
    assert [list(ShardedSource(InputSource(str(lst)), Shard(i, 3, by))) for i in range(3)] == slices
    with open(lst, "a") as f:
        f.write("videos/new.mp4\n")
    grown = [list(ShardedSource(InputSource(str(lst)), Shard(i, 3, by))) for i in range(3)]
    assert all(g[: len(s)] == s for g, s in zip(grown, slices))
    assert sum(ShardedSource(InputSource(str(lst)), Shard(i, 3, by)).count() for i in range(3)) == 501


def test_balance_position_is_exact_hash_is_statistical(tmp_path: Path) -> None:
    # Measured: position splits any list within one item; a hash of the path only statistically, so small
    # lists can be uneven (which is why position is the default).
    for n in (60, 90, 100, 120, 1000):
        counts = [sum(1 for i in range(n) if Shard(k, 3).owns(i, f"v{i}.mp4")) for k in range(3)]
        assert max(counts) - min(counts) <= 1
    n = 30_000
    counts = [0, 0, 0]
    for i in range(n):
        counts[Shard(0, 3, "hash").of(i, f"s3://bucket/k400/val/clip_{i:06d}.mp4")] += 1
    mean = n / 3
    assert max(abs(c - mean) for c in counts) / mean < 0.03  # 3 sigma is 2.4 % at this size
    # The hash ignores the position: the same path goes to the same shard wherever it is listed.
    assert Shard(0, 3, "hash").of(5, "a.mp4") == Shard(0, 3, "hash").of(77, "a.mp4")


def test_resume_refuses_rows_of_another_shard(tmp_path: Path) -> None:
    lst, paths = _list(tmp_path, 30)
    out = _write(tmp_path / "s1.jsonl", [_row(1, paths[1]), _row(4, paths[4])])
    cfg = ScoreConfig(input=str(lst), out=str(out), resume=True, shard=Shard(1, 3))
    source, _sink, done, total = prepare(cfg, log=lambda _m: None)
    assert isinstance(source, ShardedSource) and total == 10 and done.count == 2
    # The same output resumed as shard 2/3 (outputs swapped between pods) is refused, naming the owner.
    cfg = ScoreConfig(input=str(lst), out=str(out), resume=True, shard=Shard(2, 3))
    with pytest.raises(LedgerError, match="belongs to shard 1/3, not 2/3"):
        prepare(cfg, log=lambda _m: None)
    # ... and so is a changed shard count.
    cfg = ScoreConfig(input=str(lst), out=str(out), resume=True, shard=Shard(1, 4))
    with pytest.raises(LedgerError, match="another shard count"):
        prepare(cfg, log=lambda _m: None)
    # A row of the right shard whose path no longer matches the list: the usual resume check, per slice.
    _write(out, [_row(1, "elsewhere.mp4")])
    with pytest.raises(LedgerError, match="different input"):
        prepare(
            ScoreConfig(input=str(lst), out=str(out), resume=True, shard=Shard(1, 3)), log=lambda _m: None
        )
    # An unsharded output is still unsharded-only: no --resume, no overwrite.
    with pytest.raises(ScoreError, match="already holds results"):
        prepare(ScoreConfig(input=str(lst), out=str(out), shard=Shard(1, 3)), log=lambda _m: None)


def test_merge_reports_missing_doubled_torn_and_foreign(tmp_path: Path) -> None:
    lst, paths = _list(tmp_path, 12)
    parts = [
        _write(tmp_path / f"p{k}.jsonl", [_row(i, paths[i]) for i in range(12) if i % 3 == k])
        for k in range(3)
    ]
    report = merge(parts, tmp_path / "all.jsonl", input=str(lst))
    assert report.ok and report.written == 12 and report.total == 12 and report.imbalance == 0.0
    assert sorted(r["ordinal"] for r in ResultSink(tmp_path / "all.jsonl").existing()) == list(range(12))

    # Shard 1 lost input #4 and shard 2 scored #0 too (say, run with the wrong index once).
    _write(parts[1], [_row(1, paths[1]), _row(7, paths[7]), _row(10, paths[10])])
    with open(parts[2], "a") as f:
        f.write(JsonlCodec.encode(_row(0, paths[0])))
        f.write(JsonlCodec.encode(_row(2, paths[2]))[:20])  # and a torn last line: skipped, reported
    report = merge(parts, tmp_path / "all2.csv", input=str(lst))
    assert not report.ok and report.missing == 1 and report.doubled == 1 and report.torn == [str(parts[2])]
    assert report.missing_examples == [(4, paths[4])] and report.doubled_examples == [(0, paths[0])]
    assert report.written == 11 and "INCOMPLETE" in report.lines()[3]
    merged = list(ResultSink(tmp_path / "all2.csv").existing())
    assert len(merged) == len({r["ordinal"] for r in merged}) == 11
    assert parts[2].read_bytes().endswith(JsonlCodec.encode(_row(2, paths[2])).encode()[:20])  # read-only

    # Parts scored from another list: the keys do not match.
    other = tmp_path / "other.txt"
    other.write_text("".join(f"x/{p}\n" for p in paths))
    fixed = _write(tmp_path / "p1b.jsonl", [_row(i, paths[i]) for i in (1, 4, 7, 10)])
    report = merge([parts[0], fixed], tmp_path / "all3.jsonl", input=str(other))
    assert report.mismatched and report.missing == 4 and not report.ok


def test_merge_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lst, paths = _list(tmp_path, 6)
    a = _write(tmp_path / "a.jsonl", [_row(i, paths[i]) for i in (0, 2, 4)])
    b = _write(tmp_path / "b.jsonl", [_row(i, paths[i]) for i in (1, 3, 5)])
    assert main(["merge", "--input", str(lst), "--out", str(tmp_path / "m.jsonl"), str(a), str(b)]) == 0
    err = capsys.readouterr().err
    assert "6 rows of 6 inputs" in err and "0 missing, 0 doubled" in err and "[complete]" in err
    assert main(["merge", "--input", str(lst), "--out", str(tmp_path / "n.jsonl"), str(a)]) == 1
    assert "3 missing" in capsys.readouterr().err
    # Without --input only gaps below the largest ordinal are visible.
    assert main(["merge", "--out", str(tmp_path / "g.jsonl"), str(a)]) == 1
    assert "2 missing" in capsys.readouterr().err
    assert main(["merge", "--out", str(tmp_path / "m.jsonl"), str(a)]) == 2  # exists
    assert main(["merge", "--out", str(a), str(a)]) == 2  # is a part
    assert main(["merge", "--out", str(tmp_path / "z.jsonl"), str(tmp_path / "nope.jsonl")]) == 2
    assert "no such scorer output" in capsys.readouterr().err
    assert [json.loads(x)["ordinal"] for x in (tmp_path / "m.jsonl").read_text().splitlines()] == [
        0,
        2,
        4,
        1,
        3,
        5,
    ]
