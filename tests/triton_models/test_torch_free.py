"""The serving side never imports torch: the preprocessing package and every python-backend model's module
chain import (and preprocess a real video) in an interpreter where ``import torch`` fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.utils_video import encode_video, moving_square_frames

ROOT = Path(__file__).resolve().parents[2]
MODELS = sorted((ROOT / "triton_models" / "python_models").glob("*.py"))


def _run_without_torch(code: str) -> subprocess.CompletedProcess:
    prelude = textwrap.dedent(
        f"""
        import sys, types
        sys.modules["torch"] = None  # any import of torch now raises ImportError
        sys.path.insert(0, {str(ROOT)!r})
        fake = types.ModuleType("triton_python_backend_utils")  # the backend's module, absent outside Triton
        sys.modules["triton_python_backend_utils"] = fake
        """
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_preprocessing_package_imports_and_runs_without_torch(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    encode_video(video, moving_square_frames(16, 64, 80), codec="h264", fps=8)
    proc = _run_without_torch(
        f"""
        import training.preprocessing as pp
        spec = pp.PreprocessSpec(num_frames=4, short_side=48, crop_size=48, crops="three")
        views = pp.preprocess_video({str(video)!r}, spec).views
        assert views.shape == (3, 3, 4, 48, 48), views.shape
        assert "training.loop" not in sys.modules and "training.modeling" not in sys.modules
        print("ok")
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_every_serving_model_module_imports_and_serves_without_torch(tmp_path: Path) -> None:
    """Each model.py loads, and the functions its ``execute`` calls answer a real video."""
    assert MODELS, "no python-backend models found"
    video = tmp_path / "clip.mp4"
    encode_video(video, moving_square_frames(16, 64, 80), codec="h264", fps=8)
    proc = _run_without_torch(
        f"""
        import importlib.util
        for i, path in enumerate({[str(p) for p in MODELS]!r}):
            spec = importlib.util.spec_from_file_location(f"model{{i}}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            assert hasattr(module, "TritonPythonModel"), path
        import numpy as np
        from triton_models import runtime
        from training.preprocessing import DecodeLimits, PreprocessSpec
        data = np.fromfile({str(video)!r}, dtype=np.uint8)
        spec = PreprocessSpec(num_frames=4, short_side=48, crop_size=48, crops="center")
        assert runtime.preprocess_payload(data, spec, DecodeLimits()).shape == (1, 3, 4, 48, 48)
        from triton_models import contract
        indices = runtime.frame_indices_payload(data, spec, DecodeLimits())[contract.FRAME_INDICES]
        assert indices.shape == (4,), indices.shape
        print("ok")
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
