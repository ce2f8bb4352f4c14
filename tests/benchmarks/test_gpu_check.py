"""benchmarks.gpu_check on a machine without a GPU: it runs, names every step it skipped and why, and
exits 0; build_engines.dali_model re-serializes a gpu repository's DALI model with the DALI present."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils_server import build_tiny_repository
from triton_models import contract

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo, _ = build_tiny_repository(tmp_path_factory.mktemp("gpu"), target="gpu")
    return repo


def test_gpu_check_says_what_it_skipped_without_a_gpu(gpu_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--gpu-repo", str(gpu_repo), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    if report["environment"]["gpu"] is not None:
        pytest.skip("a GPU is present: the steps ran instead")
    assert {"plan", "serve", "dali", "model_speed"} <= set(report["skipped"])
    assert "skipped dali: needs DALI, an NVIDIA GPU" in r.stdout and "PASS" in r.stdout


def test_dali_model_reserializes_with_the_dali_present(gpu_repo: Path) -> None:
    pytest.importorskip("nvidia.dali")
    path = gpu_repo / contract.PREPROCESS / "1" / contract.DALI_FILE
    before = path.read_bytes()
    r = subprocess.run(
        [sys.executable, "-m", "build_engines.dali_model", "--repository", str(gpu_repo)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert path.read_bytes() == before  # same DALI, same graph, same bytes
    serving = json.loads((gpu_repo / contract.SERVING_FILE).read_text())
    import nvidia.dali

    assert serving["built_with"]["dali"] == nvidia.dali.__version__
