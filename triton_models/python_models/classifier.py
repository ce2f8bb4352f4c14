"""Triton python-backend model ``classifier`` (cpu target): VIEWS (B, V, 3, T, H, W) -> PROBS (B, K).

Copied into the generated repository as ``classifier/1/model.py`` next to ``model.onnx`` (the serving
graph: softmax per view, mean over views, inside the graph). The dynamic batcher hands several videos'
requests to one ``execute``; they run as one ONNX Runtime call of B videos x V views.
"""

import os
import sys
from pathlib import Path

# The backend stub's embedded interpreter ignores PYTHONPATH: take the environment's packages from it.
for _p in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _p and _p not in sys.path:
        sys.path.insert(0, _p)
# The project code this model runs is bundled beside this file (the repository is self-contained): it goes
# first, so a checkout elsewhere on the path is never what runs.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton_python_backend_utils as pb_utils  # noqa: E402

from triton_models import contract, runtime  # noqa: E402


class TritonPythonModel:
    """ONNX Runtime with intra-op threads = cores / instances, inter-op 1."""

    def initialize(self, args: dict) -> None:
        settings = runtime.load_model_settings(args)
        onnx_path = settings.version_dir / contract.ONNX_FILE
        self.classifier = runtime.OrtClassifier(onnx_path, instances=settings.instances)

    def execute(self, requests: list) -> list:
        return runtime.serve_batched(
            pb_utils,
            requests,
            contract.VIEWS,
            contract.PROBS,
            lambda views: runtime.classify_batch(self.classifier, views),
        )
