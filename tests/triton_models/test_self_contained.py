"""Generated repositories are the deployable unit: every python model imports and serves with torch
unavailable, without this checkout on the path, from a copy of the repository elsewhere.

Each model runs in a fresh interpreter whose ``sys.path`` holds only the standard library and the
environment's site-packages (what the server's stub gets), with ``sys.modules["torch"] = None`` (any
``import torch`` raises) and a ``triton_python_backend_utils`` module made of the few classes the
models use. ``initialize`` gets the config as Triton passes it (JSON), ``execute`` real encoded videos.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format

from build_engines.repository import parse_config
from tests.utils_server import build_tiny_repository
from tests.utils_video import encode_video, moving_square_frames
from triton_models import contract

ROOT = Path(__file__).resolve().parents[2]

HARNESS = r"""
import importlib.util, json, sys
sys.modules["torch"] = None  # any import of torch now raises ImportError
checkout, model_py, config_json, args_json, out_path = sys.argv[1:6]
import types
import numpy as np

pb = types.ModuleType("triton_python_backend_utils")

class Tensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)
    def name(self):
        return self._name
    def as_numpy(self):
        return self._array

class TritonError:
    INVALID_ARG, INTERNAL = 3, 13
    def __init__(self, message, code=13):
        self.message, self.code = message, code

class InferenceResponse:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = output_tensors or [], error

class Request:
    def __init__(self, tensors):
        self.tensors = tensors

def get_input_tensor_by_name(request, name):
    return request.tensors.get(name)

pb.Tensor, pb.TritonError, pb.InferenceResponse = Tensor, TritonError, InferenceResponse
pb.get_input_tensor_by_name = get_input_tensor_by_name
sys.modules["triton_python_backend_utils"] = pb

spec = importlib.util.spec_from_file_location("model", model_py)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
model = mod.TritonPythonModel()
model.initialize(json.loads(open(args_json).read()))
requests = []
for item in json.loads(open(config_json).read()):
    requests.append(Request({k: Tensor(k, np.load(v)) for k, v in item.items()}))
responses = model.execute(requests)
result = {"responses": []}
for i, r in enumerate(responses):
    if r.error is not None:
        result["responses"].append({"error": r.error.message, "code": r.error.code})
        continue
    outs = {}
    for t in r.output_tensors:
        path = f"{out_path}.{i}.{t.name()}.npy"
        np.save(path, t.as_numpy())
        outs[t.name()] = path
    result["responses"].append({"outputs": outs})
import os
root = os.path.realpath(checkout) + os.sep
env = os.path.realpath(sys.prefix) + os.sep  # the environment may live inside the checkout (.venv)
from_checkout = sorted(
    m for m, x in sys.modules.items()
    if getattr(x, "__file__", None)
    and os.path.realpath(x.__file__).startswith(root)
    and not os.path.realpath(x.__file__).startswith(env)
)
result["from_checkout"] = from_checkout
result["torch_loaded"] = sys.modules.get("torch") is not None
open(out_path, "w").write(json.dumps(result))
"""


def _clean_env_path() -> str:
    """stdlib + site-packages only (what the server's stub sees), never the checkout."""
    paths = sysconfig.get_paths()
    return ":".join(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def run_python_model(repo: Path, model: str, requests: list[dict[str, np.ndarray]], work: Path) -> dict:
    """Import ``repo/model/1/model.py`` in a clean interpreter and serve ``requests``; returns what it
    answered (arrays loaded back) and which modules came from the checkout."""
    work.mkdir(parents=True, exist_ok=True)
    cfg = parse_config(repo / model / "config.pbtxt")
    args = {
        "model_config": json_format.MessageToJson(cfg, preserving_proto_field_name=True),
        "model_repository": str(repo / model),
        "model_version": "1",
        "model_name": model,
    }
    (work / "args.json").write_text(json.dumps(args))
    items = []
    for i, req in enumerate(requests):
        item = {}
        for name, arr in req.items():
            np.save(work / f"in{i}_{name}.npy", arr)
            item[name] = str(work / f"in{i}_{name}.npy")
        items.append(item)
    (work / "requests.json").write_text(json.dumps(items))
    (work / "harness.py").write_text(HARNESS)
    out = work / "result.json"
    r = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            f"import sys; sys.path[:0] = {_clean_env_path().split(':')!r}; "
            f"exec(open({str(work / 'harness.py')!r}).read())",
            str(ROOT),
            str(repo / model / "1" / "model.py"),
            str(work / "requests.json"),
            str(work / "args.json"),
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=work,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    for resp in result["responses"]:
        for name, path in resp.get("outputs", {}).items():
            resp["outputs"][name] = np.load(path)
    return result


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for target in contract.TARGETS:
        built, _ = build_tiny_repository(tmp_path_factory.mktemp(f"build_{target}"), target=target)
        # Deployed elsewhere: a copy, away from the build folder and the checkout.
        out[target] = Path(shutil.copytree(built, tmp_path_factory.mktemp(f"deployed_{target}") / "repo"))
    return out


def _video(tmp_path: Path) -> np.ndarray:
    path = encode_video(tmp_path / "v.webm", moving_square_frames(16, 128, 160, seed=3), "vp9", gop=4)
    return np.fromfile(path, np.uint8)[None]  # (1, n): a batch of one, as Triton hands it


def test_cpu_target_python_models_serve_without_torch_or_the_checkout(repos, tmp_path: Path) -> None:
    repo = repos["cpu"]
    video = _video(tmp_path)
    pre = run_python_model(
        repo,
        contract.PREPROCESS,
        [{contract.VIDEO: video}, {contract.VIDEO: np.zeros((1, 9), np.uint8)}],
        tmp_path / "pre",
    )
    assert pre["from_checkout"] == [] and not pre["torch_loaded"]
    good, bad = pre["responses"]
    views = good["outputs"][contract.VIEWS]
    assert views.shape == (1, 3, 3, 4, 32, 32) and views.dtype == np.float32
    assert bad["code"] == 3 and "bytes" in bad["error"]  # INVALID_ARG naming the problem
    cls = run_python_model(repo, contract.CLASSIFIER, [{contract.VIEWS: views}], tmp_path / "cls")
    assert cls["from_checkout"] == [] and not cls["torch_loaded"]
    probs = cls["responses"][0]["outputs"][contract.PROBS]
    assert probs.shape == (1, 5) and abs(float(probs.sum()) - 1.0) < 1e-5


def test_gpu_target_python_model_serves_without_torch_or_the_checkout(repos, tmp_path: Path) -> None:
    repo = repos["gpu"]
    video = _video(tmp_path)
    tiny = encode_video(tmp_path / "t.webm", moving_square_frames(8, 48, 64, seed=1), "vp9")
    res = run_python_model(
        repo,
        contract.FRAME_SAMPLER,
        [{contract.VIDEO: video}, {contract.VIDEO: np.fromfile(tiny, np.uint8)[None]}],
        tmp_path / "fi",
    )
    assert res["from_checkout"] == [] and not res["torch_loaded"]
    good, small = res["responses"]
    assert good["outputs"][contract.FRAME_INDICES].shape == (1, 4)
    assert good["outputs"][contract.GEOMETRY].tolist() == [[0, 32, 40, 0, 0, 0, 8, 0, 4]]
    # NVDEC takes VP9 from 128x128: refused by name in this request alone, before DALI could fail a batch.
    assert small["code"] == 3 and "GPU decoder" in small["error"]
