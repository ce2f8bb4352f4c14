"""Triton python-backend model ``frame_indices`` (gpu target): VIDEO bytes -> FRAME_INDICES int32 (T,),
GEOMETRY int32 (3 + 2V,).

Copied into the generated repository as ``frame_indices/1/model.py``. It demuxes the container with PyAV
(one frame is decoded, for the display rotation) to learn the frame count, rate and size, applies the
sampling every implementation shares and computes the resize/crop geometry; the DALI ``preprocess`` model
then decodes exactly those frames on the GPU. Being the ensemble's first step, it is also where a bad file,
or one the GPU decoder cannot decode, is refused with a per-request INVALID_ARGUMENT error naming the
reason -- before it could fail a whole DALI batch.
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
    """Probe + sample per request; a bad video fails only its own request."""

    def initialize(self, args: dict) -> None:
        self.settings = runtime.load_model_settings(args)
        self.decoder = self.settings.parameters.get(contract.DECODER_PARAMETER, "mixed")

    def execute(self, requests: list) -> list:
        spec, limits, decoder = self.settings.spec, self.settings.limits, self.decoder
        return runtime.serve_each(
            pb_utils,
            requests,
            contract.VIDEO,
            contract.FRAME_INDICES,
            lambda video: runtime.frame_indices_payload(video, spec, limits, decoder),
        )
