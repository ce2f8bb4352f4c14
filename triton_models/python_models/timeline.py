"""Triton python-backend model ``video_timeline`` (decoupled): VIDEO -> one (WINDOW, PROBS) per window.

Copied into the generated repository as ``video_timeline/1/model.py``; the work is done by
``triton_models.timeline.serve_timeline``: one forward decoding pass over the file (the reference PyAV
decoder, keyframe seeking), windows batched to the ``classifier`` model through BLS, a response per window
as soon as it is classified, then the final flag.
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

from triton_models import runtime, timeline  # noqa: E402


class TritonPythonModel:
    """Each request is served to its end (all its windows) inside ``execute``; instances serve in parallel."""

    def initialize(self, args: dict) -> None:
        self.settings = runtime.load_model_settings(args)
        self.timeline = timeline.load_timeline_settings(args["model_config"], self.settings.spec)
        self.classify = timeline.bls_classifier(pb_utils, self.timeline.classifier)

    def execute(self, requests: list) -> None:
        for request in requests:
            timeline.serve_timeline(
                pb_utils, request, self.settings.spec, self.settings.limits, self.timeline, self.classify
            )
        return None
