"""Triton python-backend model ``preprocess`` (cpu target): VIDEO bytes -> VIEWS (V, 3, T, H, W).

Copied into the generated repository as ``preprocess/1/model.py``; the work is done by
``triton_models.runtime.preprocess_payload`` (the reference PyAV implementation).
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
    """Decodes only the sampled frames of each request's video; a bad video fails only its request."""

    def initialize(self, args: dict) -> None:
        self.settings = runtime.load_model_settings(args)

    def execute(self, requests: list) -> list:
        spec, limits = self.settings.spec, self.settings.limits
        return runtime.serve_each(
            pb_utils,
            requests,
            contract.VIDEO,
            contract.VIEWS,
            lambda video: runtime.preprocess_payload(video, spec, limits),
        )
