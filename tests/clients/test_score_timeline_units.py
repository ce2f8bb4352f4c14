"""``--timeline`` scoring without a server: window groups in the output, the resume that counts only
complete groups and cuts a trailing one a crash left incomplete, merge by group, and the option checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clients.score import ScoreConfig, ScoreError, prepare
from clients.scoring.merge import merge
from clients.scoring.outputs import OutputError, ResultSink
from clients.scoring.timeline import ERROR_WINDOW, GroupReader, error_group, window_rows
from clients.timeline import WindowResult


def group(ordinal: int, path: str, windows: int) -> list[dict[str, Any]]:
    """The rows a scorer writes for one video with ``windows`` windows (0: an error row)."""
    base = {"input": path, "ordinal": ordinal, "status": "error", "error": None, "labels": [], "ids": []}
    base.update(probs=[], latency_ms=None, endpoint="127.0.0.1:1", attempt=1)
    if windows == 0:
        return error_group(dict(base, error="not a readable video"))
    ws = [
        WindowResult(i, 0.5 * i, 0.5 * i + 0.5, np.roll(np.asarray([0.6, 0.3, 0.1], np.float32), i), 0.01 * i)
        for i in range(windows)
    ]
    return window_rows(base, ws, ["a", "b", "c"], k=2)


def write(out: Path, groups: list[list[dict[str, Any]]]) -> ResultSink:
    sink = ResultSink(out, timeline=True)
    sink.open()
    for g in groups:
        sink.write_group(g)
    sink.close(complete=False)
    return sink


def test_window_rows_carry_the_span_and_top_k() -> None:
    rows = group(4, "v.mp4", 3)
    assert [(r["window_index"], r["windows"]) for r in rows] == [(0, 3), (1, 3), (2, 3)]
    assert rows[1]["ids"] == [1, 2] and rows[1]["labels"] == ["b", "c"]
    assert rows[1]["probs"] == pytest.approx([0.6, 0.3]) and rows[1]["window_start"] == 0.5
    (err,) = group(5, "bad.mp4", 0)
    assert (err["window_index"], err["windows"], err["window_start"]) == (ERROR_WINDOW, 0, None)


def test_group_reader_finds_complete_groups_and_a_cut_trailing_one() -> None:
    reader = GroupReader("out.jsonl")
    done = [
        reader.add(r, offset=10 * i)
        for i, r in enumerate(group(0, "a", 2) + group(1, "b", 0) + group(2, "c", 3)[:2])
    ]
    assert done == [None, (0, "a"), (1, "b"), None, None]
    assert reader.incomplete == (30, 2)  # the cut group starts at the 4th row's offset and has 2 rows
    reader.add(group(2, "c", 3)[2])
    assert reader.incomplete is None and reader.groups == 3


def test_a_group_cut_in_the_middle_of_the_file_is_corruption() -> None:
    reader = GroupReader("out.jsonl")
    reader.add(group(0, "a", 3)[0])
    with pytest.raises(OutputError, match="cut in the middle of the file"):
        reader.add(group(1, "b", 2)[0])
    with pytest.raises(OutputError, match="starts at window_index 1"):
        GroupReader("out.jsonl").add(group(0, "a", 3)[1])
    with pytest.raises(OutputError, match="not a --timeline row"):
        GroupReader("out.jsonl").add({"input": "a", "ordinal": 0, "status": "ok"})


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_resume_counts_complete_groups_and_cuts_the_incomplete_last_one(tmp_path: Path, suffix: str) -> None:
    videos = [tmp_path / f"v{i}.mp4" for i in range(4)]
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{v}\n" for v in videos))
    out = tmp_path / f"out{suffix}"
    keep = group(0, str(videos[0]), 3) + group(2, str(videos[2]), 0)
    sink = write(out, [keep[:3], keep[3:], group(1, str(videos[1]), 4)[:2]])
    with open(sink.log.path, "ab") as f:
        f.write(b'{"input": "torn')  # and a torn last line after the cut group
    with open(sink.log.path, "rb") as f:
        lines = f.readlines()
    size_complete = sum(len(line) for line in lines[: len(lines) - 3])  # header (csv) + the 4 complete rows

    logs: list[str] = []
    cfg = ScoreConfig(input=str(lst), out=str(out), resume=True, timeline=True, progress=False)
    _source, sink, done, total = prepare(cfg, logs.append)
    assert total == 4 and done.count == 2 and 0 in done and 2 in done and 1 not in done
    assert sink.log.path.stat().st_size == size_complete
    assert any("dropped an incomplete window group" in m and "2 rows" in m for m in logs), logs
    assert any("repaired a torn last line" in m for m in logs), logs
    assert [(r["ordinal"], r["window_index"]) for r in sink.existing()] == [(0, 0), (0, 1), (0, 2), (2, -1)]


def test_resume_refuses_to_mix_timeline_and_per_video_rows(tmp_path: Path) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text("a.mp4\n")
    write(tmp_path / "tl.jsonl", [group(0, "a.mp4", 2)])
    with pytest.raises(ScoreError, match="written with --timeline"):
        prepare(ScoreConfig(input=str(lst), out=str(tmp_path / "tl.jsonl"), resume=True), lambda _m: None)


def test_timeline_options_are_checked() -> None:
    with pytest.raises(ValueError, match="--timeline needs --protocol grpc"):
        ScoreConfig(input="x", out="o.jsonl", protocol="http", timeline=True)
    with pytest.raises(ValueError, match="--window is a --timeline option"):
        ScoreConfig(input="x", out="o.jsonl", window=2.0)
    with pytest.raises(ValueError, match="--stride must be a positive"):
        ScoreConfig(input="x", out="o.jsonl", timeline=True, stride=0.0)
    assert ScoreConfig(input="x", out="o.jsonl", timeline=True).model == "video_timeline"
    assert ScoreConfig(input="x", out="o.jsonl").model == "video_classifier"


def test_merge_counts_a_group_once(tmp_path: Path) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text("a\nb\nc\n")
    write(tmp_path / "p0.csv", [group(0, "a", 2), group(2, "c", 0)])
    # Part 1 holds input #0 again (a doubled group) and a trailing group cut short.
    write(tmp_path / "p1.jsonl", [group(1, "b", 3), group(0, "a", 2), group(2, "c", 3)[:1]])
    report = merge([tmp_path / "p0.csv", tmp_path / "p1.jsonl"], tmp_path / "all.parquet", input=str(lst))
    assert (report.written, report.doubled, report.missing, report.torn) == (
        3,
        1,
        0,
        [str(tmp_path / "p1.jsonl")],
    )
    rows = list(ResultSink(tmp_path / "all.parquet", timeline=True).existing())
    assert sorted((r["ordinal"], r["window_index"]) for r in rows) == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (1, 2),
        (2, -1),
    ]
