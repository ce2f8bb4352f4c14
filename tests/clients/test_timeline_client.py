"""The timeline client's summary, segments, output and CLI wiring (the stream itself: tests/e2e)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clients import classify
from clients.timeline import (
    TimelineResult,
    WindowResult,
    format_summary,
    format_window,
    merge_segments,
    plot_timeline,
)
from training.test_timeline import predicted_boundaries, timeline_metrics, true_boundaries, window_truth

LABELS = ["left", "right", "up"]


def _w(i: int, start: float, end: float, top: int, p: float = 0.8) -> WindowResult:
    probs = np.full(3, (1 - p) / 2, np.float32)
    probs[top] = p
    return WindowResult(i, start, end, probs)


def test_consecutive_windows_with_the_same_top1_merge() -> None:
    ws = [_w(0, 0, 2, 0), _w(1, 2, 4, 0, 0.6), _w(2, 4, 6, 2), _w(3, 6, 7, 0)]
    segs = merge_segments(ws, LABELS)
    assert [(s.start, s.end, s.label, s.windows) for s in segs] == [
        (0, 4, "left", 2),
        (4, 6, "up", 1),
        (6, 7, "left", 1),
    ]
    assert segs[0].mean_prob == pytest.approx(0.7)


def test_overlapping_windows_hand_the_overlap_to_the_later_segment() -> None:
    ws = [_w(0, 0, 4, 0), _w(1, 2, 6, 1), _w(2, 4, 8, 1)]
    segs = merge_segments(ws, LABELS)
    assert [(s.start, s.end) for s in segs] == [(0, 2), (2, 8)]


def test_summary_is_the_mean_of_window_probabilities() -> None:
    r = TimelineResult("v.mp4", LABELS, [_w(0, 0, 2, 0, 0.9), _w(1, 2, 4, 1, 0.5)])
    np.testing.assert_allclose(r.mean_probs(), [0.575, 0.275, 0.15], rtol=1e-6)
    text = format_summary(r, 2)
    assert "1. left (class 0): 0.5750" in text and "00:02.000-00:04.000  right" in text
    assert format_window(r.windows[1], LABELS, 2).startswith("[   1] 00:02.000-00:04.000  right 0.500")
    d = r.to_dict(top_k=2)
    assert json.loads(json.dumps(d))["segments"][1]["label"] == "right"
    assert [x["label"] for x in d["summary"]] == ["left", "right"]


def test_plot_is_written(tmp_path: Path) -> None:
    r = TimelineResult("v.mp4", LABELS, [_w(i, 2 * i, 2 * i + 2, i % 3) for i in range(20)])
    out = plot_timeline(r, tmp_path / "t.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timeline_needs_grpc(capsys: pytest.CaptureFixture) -> None:
    assert classify.main(["v.mp4", "--timeline", "--protocol", "http"]) == 2
    assert "needs --protocol grpc" in capsys.readouterr().err


def test_json_flag_before_files_still_means_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = {}

    def fake_classify_files(paths, *a, **k):
        seen["paths"] = paths
        return []

    monkeypatch.setattr(classify, "classify_files", fake_classify_files)
    classify.main(["--json", "a.mp4", "b.mp4"])
    assert seen["paths"] == ["a.mp4", "b.mp4"]


def test_metrics_of_aligned_windows() -> None:
    segs = [
        {"start": 0, "end": 2, "class_id": 0},
        {"start": 2, "end": 4, "class_id": 0},
        {"start": 4, "end": 6, "class_id": 2},
    ]
    assert true_boundaries(segs) == [4]
    assert window_truth(segs, 3.5, 5.0) == 2 and window_truth(segs, 3.0, 4.5) == 0
    spans = [(0, 2), (2, 4), (4, 6)]
    probs = np.eye(3)[[0, 1, 2]]
    assert predicted_boundaries(spans, [0, 1, 2]) == [2, 4]
    m = timeline_metrics(segs, spans, probs)
    assert m["window_accuracy"] == pytest.approx(2 / 3)
    assert m["boundary_error_mean_s"] == 0.0 and m["predicted_boundaries"] == 2
    shifted = timeline_metrics(segs, spans, np.eye(3)[[0, 0, 0]])
    assert shifted["boundary_error_max_s"] == float("inf")  # no predicted boundary at all
