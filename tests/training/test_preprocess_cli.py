"""The preprocessing CLI: writes the array, prints the indices, exit 2 with a reason on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.utils_video import encode_video, index_frames, level_to_index
from training.preprocess import main

ROOT = Path(__file__).resolve().parents[2]


def test_cli_reference_and_dali(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    video = encode_video(tmp_path / "v.webm", index_frames(30), "vp9", gop=10)
    args = [str(video), "--num-frames", "4", "--short-side", "40", "--crop-size", "32", "--crops", "center"]
    assert main([*args, "-o", str(tmp_path / "ref.npy")]) == 0
    out = capsys.readouterr().out
    assert "indices: 0 10 19 29" in out  # linspace(0, 29, 4) = 0, 9.67, 19.33, 29
    ref = np.load(tmp_path / "ref.npy")
    assert ref.shape == (1, 3, 4, 32, 32) and ref.dtype == np.float32
    assert main([*args, "-o", str(tmp_path / "dali.npy"), "--backend", "dali"]) == 0
    dali = np.load(tmp_path / "dali.npy")
    assert np.abs(dali - ref).mean() * 255 < 3.0


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.preprocess",
            str(tmp_path / "junk.mp4"),
            "-o",
            str(tmp_path / "o.npy"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "junk.mp4" in proc.stderr and "not a readable video" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.npy").exists()
    video = encode_video(tmp_path / "h.mp4", index_frames(10), "h264")
    assert main([str(video), "-o", str(tmp_path / "x.npy"), "--backend", "dali"]) == 2
    assert main([str(video), "-o", str(tmp_path / "x.npy"), "--short-side", "16", "--crop-size", "32"]) == 2


def test_cli_paddle_train_prints_seeded_random_windows(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """``--sampling paddle_train --seed S``: PaddleVideo's training window, the same for the same seed."""
    from training.preprocessing.sampling import paddle_clip_size

    video = encode_video(tmp_path / "v.mp4", index_frames(56, 32, 32), "h264", fps=5, gop=12)
    clip_sz = paddle_clip_size(4, 5.0)  # 21.33 frames: delta = 34.67
    window = np.linspace(0, clip_sz - 1, 4).astype(np.int64)
    starts = set()
    for seed in range(12):
        args = [str(video), "-o", str(tmp_path / "o.npy"), "--num-frames", "4", "--short-side", "32"]
        assert main([*args, "--crop-size", "32", "--sampling", "paddle_train", "--seed", str(seed)]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("indices:"))
        idx = np.array([int(v) for v in line.split()[1:]])
        start = np.random.default_rng(seed).uniform(0, 56 - clip_sz)
        assert idx.tolist() == (int(start) + window).tolist()
        starts.add(int(idx[0]))
        frames = np.load(tmp_path / "o.npy")[0]  # (3, T, H, W): the decoded frames are the printed ones
        got = [level_to_index(float(frames[:, i].mean() * 255), 56) for i in range(4)]
        assert got == idx.tolist()
    assert len(starts) >= 6
