"""The preprocessing CLI: writes the array, prints the indices, exit 2 with a reason on bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.utils_video import encode_video, index_frames
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
