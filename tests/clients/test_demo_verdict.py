"""The demo's last line: a good run says only its accuracy; a weak one says so, names the confusions that
cost the most and whether the training run or serving is to blame; below the floor it fails (exit 3)."""

from __future__ import annotations

import numpy as np

from clients.demo import FLOOR, GOOD, verdict

LABELS = ["moving_left", "moving_right", "moving_up", "moving_down", "growing", "shrinking"]


def _served(wrong: dict[tuple[int, int], int], per_class: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Truth and predictions: every class right except ``wrong[(true, predicted)]`` videos."""
    truth = np.repeat(np.arange(len(LABELS)), per_class)
    predicted = truth.copy()
    for (t, p), n in wrong.items():
        idx = np.flatnonzero(truth == t)[:n]
        predicted[idx] = p
    return truth, predicted


def test_good_run_is_one_plain_line() -> None:
    truth, predicted = _served({(0, 1): 1})  # 149 of 150
    line, status = verdict(truth, predicted, LABELS, "fp32", 0.993)
    assert line == "demo: served top-1 accuracy 0.993 (fp32) on 150 held-out videos"
    assert status == 0 and 149 / 150 >= GOOD


def test_weak_training_run_names_the_pair_and_blames_training() -> None:
    truth, predicted = _served({(0, 2): 6})  # 0.96: moving_left read as moving_up
    line, status = verdict(truth, predicted, LABELS, "fp32", 0.96)
    assert line.startswith("demo: served top-1 accuracy 0.960 (fp32) on 150 held-out videos -- WEAK")
    assert "moving_left read as moving_up on 6 of 25" in line
    assert "training run is weak" in line and "retrain" in line
    assert status == 0  # weak, not failed: above the floor


def test_below_floor_fails_and_orders_confusions() -> None:
    truth, predicted = _served({(0, 2): 12, (2, 0): 11, (4, 5): 2})  # 0.833, the coin-toss run
    line, status = verdict(truth, predicted, LABELS, "fp32", 0.84)
    assert status == 3 and 125 / 150 < FLOOR
    assert "FAILED" in line
    assert line.index("moving_left read as moving_up on 12") < line.index(
        "moving_up read as moving_left on 11"
    )


def test_good_checkpoint_served_badly_blames_serving() -> None:
    truth, predicted = _served({(1, 0): 25})
    line, status = verdict(truth, predicted, LABELS, "int8", 0.99)
    assert status == 3
    assert "serving is" in line and "int8" in line


def test_unknown_training_accuracy_still_gives_a_pointer() -> None:
    truth, predicted = _served({(3, 2): 5})
    line, _ = verdict(truth, predicted, LABELS, "fp32", None)
    assert "no val accuracy" in line and "docs/training.md" in line
