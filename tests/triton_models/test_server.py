"""The tritonserver runner: detached start/status/stop through the CLI, free ports, clear start-up errors.

Uses a one-model repository (a python-backend model that doubles its input, numpy only) so that it is
cheap to load; the real ensemble is exercised in test_serving_cpu.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from triton_models.server import ServerError, TritonServer, _is_tritonserver

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
name: "double"
backend: "python"
max_batch_size: 4
input [ { name: "X" data_type: TYPE_FP32 dims: [ 2 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", (2 * x).astype(np.float32))]))
        return out
"""


def _repo(root: Path, model_source: str = MODEL) -> Path:
    (root / "double" / "1").mkdir(parents=True)
    (root / "double" / "config.pbtxt").write_text(CONFIG)
    (root / "double" / "1" / "model.py").write_text(model_source)
    return root


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triton_models.server", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
    )


def test_cli_start_status_stop(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    state = tmp_path / "state"
    started = _cli("start", "--repository", str(repo), "--state-dir", str(state))
    try:
        assert started.returncode == 0, started.stderr
        record = json.loads((state / "server.json").read_text())
        for word in ("HTTP", "gRPC", "metrics", "log", str(record["pid"])):
            assert word in started.stdout
        assert record["http_url"].startswith("127.0.0.1:")
        assert _is_tritonserver(record["pid"])

        client = httpclient.InferenceServerClient(record["http_url"])
        x = httpclient.InferInput("X", [1, 2], "FP32")
        x.set_data_from_numpy(np.array([[1.5, -2.0]], np.float32))
        np.testing.assert_array_equal(client.infer("double", [x]).as_numpy("Y"), [[3.0, -4.0]])
        client.close()
        with urllib.request.urlopen(record["metrics_url"], timeout=10) as r:
            assert b"nv_inference_count" in r.read()

        assert _cli("status", "--state-dir", str(state)).returncode == 0
        again = _cli("start", "--repository", str(repo), "--state-dir", str(state))
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        stopped = _cli("stop", "--state-dir", str(state))
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not _is_tritonserver(record["pid"])
    assert _cli("status", "--state-dir", str(state)).returncode == 1
    assert "no server running" in _cli("stop", "--state-dir", str(state)).stdout


def test_start_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="does not exist"):
        TritonServer(tmp_path / "missing")
    broken = _repo(tmp_path / "broken", MODEL + "\nraise RuntimeError('broken on purpose')\n")
    server = TritonServer(broken, log_file=tmp_path / "log.txt")
    with pytest.raises(ServerError, match="broken on purpose"):
        server.start(timeout_s=120)
    assert server.pid is None  # nothing left running
