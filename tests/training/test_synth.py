"""The synthetic motion dataset: layout, determinism, and that only motion tells the classes apart."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from training.data.lists import read_file_list, read_label_list
from training.preprocessing import decode_all_frames, probe_video
from training.synth import CLASSES, main, make_synthetic_dataset, render_clip


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_layout_lists_and_determinism(tmp_path: Path) -> None:
    counts = make_synthetic_dataset(tmp_path / "a", per_class=1, val_per_class=1, seed=5, progress=False)
    assert counts == {"train": 8, "val": 8}
    names = read_label_list(tmp_path / "a" / "labels.txt")
    assert names == list(CLASSES)
    train = read_file_list(tmp_path / "a" / "train.list", labels=names)
    val = read_file_list(tmp_path / "a" / "val.list", labels=names)
    assert sorted(e.label for e in train) == list(range(8))
    assert not {e.path for e in train} & {e.path for e in val}
    for e in train:
        info = probe_video(tmp_path / "a" / e.path)
        assert info.codec == "h264" and 64 <= min(info.width, info.height) <= 128
        assert 1.4 <= info.total_frames / info.fps <= 3.1
        assert info.frame_pts is not None
        key_frames = [info.frame_pts.index(k) for k in info.keyframe_pts]
        assert key_frames == list(range(0, info.total_frames, round(2 * info.fps)))  # keyframe every 2 s
    make_synthetic_dataset(tmp_path / "b", per_class=1, val_per_class=1, seed=5, progress=False)
    # Same seed: the same rendered frames exactly, and encodes that decode to the same pictures within
    # codec error (x264 output bytes were seen to vary between runs in one process for a few clips).
    for e in train:
        a = np.stack(decode_all_frames(tmp_path / "a" / e.path)).astype(np.int16)
        b = np.stack(decode_all_frames(tmp_path / "b" / e.path)).astype(np.int16)
        assert a.shape == b.shape and np.abs(a - b).mean() < 1.0
    rng = np.random.SeedSequence([5, 0, 3, 0])
    assert np.array_equal(
        render_clip(3, np.random.default_rng(rng))[0], render_clip(3, np.random.default_rng(rng))[0]
    )
    make_synthetic_dataset(tmp_path / "c", per_class=1, val_per_class=1, seed=6, progress=False)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def _centroid_and_area(frames: np.ndarray, clip_background: int = 130) -> tuple[np.ndarray, np.ndarray]:
    bright = frames.max(axis=-1) > clip_background  # the object is brighter than any background texel
    ys, xs = np.nonzero(bright[0])
    area = bright.reshape(len(frames), -1).sum(axis=1)
    return np.array([xs.mean(), ys.mean()]), area


@pytest.mark.parametrize("label", range(len(CLASSES)))
def test_motion_defines_the_class(label: int) -> None:
    frames, fps = render_clip(label, np.random.default_rng(label))
    assert frames.dtype == np.uint8 and frames.ndim == 4 and fps in (12, 15, 20, 24, 25, 30)
    t, h, w, _ = frames.shape
    bright = frames.max(axis=-1) > 130  # (T, H, W)
    area = bright.reshape(t, -1).sum(axis=1)
    name = CLASSES[label]
    if name.startswith("moving"):
        axis = 2 if name in ("moving_left", "moving_right") else 1
        size = w if axis == 2 else h
        prof = bright.sum(axis=3 - axis)  # (T, size): object mass along the motion axis
        # Wrapped displacement between consecutive frames (circular cross-correlation), summed.
        shift = 0
        for a, b in zip(prof[:-1], prof[1:]):
            corr = [np.dot(a, np.roll(b, -s)) for s in range(size)]
            step = int(np.argmax(corr))
            shift += step - size if step > size // 2 else step
        sign = 1 if name in ("moving_right", "moving_down") else -1
        assert sign * shift > 0.3 * size
    elif name in ("growing", "shrinking"):
        ratio = area[-1] / area[0]
        assert ratio > 2.5 if name == "growing" else ratio < 0.4
    else:
        assert abs(area[-1] / area[0] - 1) < 0.35  # a rotating bar keeps its size


def test_frames_without_their_order_do_not_reveal_the_pair() -> None:
    """Paths are symmetric about the middle frame: grow and shrink clips show the same sizes (in opposite
    orders), left and right clips the same positions, and the object never wraps around a border."""

    def area(f: np.ndarray) -> np.ndarray:  # (T,) object pixels per frame, as a fraction of the frame
        return (f.max(axis=-1) > 130).reshape(len(f), -1).mean(axis=1)

    grow = [render_clip(4, np.random.default_rng(s))[0] for s in range(12)]
    shrink = [render_clip(5, np.random.default_rng(100 + s))[0] for s in range(12)]
    g = np.median([area(f).mean() for f in grow])
    s = np.median([area(f).mean() for f in shrink])
    assert 0.75 < g / s < 1.33
    assert all(area(f)[-1] > 3 * area(f)[0] for f in grow) and all(
        area(f)[0] > 3 * area(f)[-1] for f in shrink
    )
    for seed in range(6):
        frames = render_clip(0, np.random.default_rng(seed))[0]  # moving left
        xs = [np.nonzero(f.max(axis=-1) > 130)[1] for f in frames]
        # One connected object all the time (no part wrapped to the other border), moving steadily left.
        assert all(x.max() - x.min() < frames.shape[2] / 2 for x in xs)
        centre = np.array([x.mean() for x in xs])
        assert np.all(np.diff(centre) <= 0.5) and centre[0] - centre[-1] > 0.4 * min(frames.shape[1:3])


def test_class_subset(tmp_path: Path) -> None:
    counts = make_synthetic_dataset(
        tmp_path, per_class=1, val_per_class=1, progress=False, classes=("moving_right", "moving_left")
    )
    assert counts == {"train": 2, "val": 2}
    assert read_label_list(tmp_path / "labels.txt") == ["moving_right", "moving_left"]
    assert (tmp_path / "train.list").read_text().split("\n")[0] == "train/moving_right/00000.mp4 0"
    with pytest.raises(ValueError, match="classes"):
        make_synthetic_dataset(tmp_path, per_class=1, progress=False, classes=("jumping",))


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path), "--per-class", "1", "--val-per-class", "0", "--codec", "mjpeg"]) == 0
    assert "8 train + 0 val" in capsys.readouterr().out
    assert (tmp_path / "train" / "growing" / "00000.avi").is_file()
    assert main(["--out", str(tmp_path), "--per-class", "0"]) == 2


def test_demo_preset_sets_its_own_classes_and_size() -> None:
    from training.synth import DEMO_CLASSES, main

    assert main(["--out", "/nonexistent-never-written", "--demo", "--classes", "growing"]) == 2
    assert main(["--out", "/nonexistent-never-written", "--demo", "--per-class", "3"]) == 2
    # Paired classes only: every direction class comes with its reversal.
    pairs = {"moving_left": "moving_right", "moving_up": "moving_down", "growing": "shrinking"}
    for a, b in pairs.items():
        assert (a in DEMO_CLASSES) == (b in DEMO_CLASSES)
