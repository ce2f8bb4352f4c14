"""Names shared by the model repository generator, the python-backend models and every client.

Defined once here so that a rename is one edit: UPPER_CASE names are tensors at model boundaries,
lower_snake names are the ensemble's intermediate tensors and the composing models.

The ensemble users call::

    VIDEO (uint8 [-1], one encoded file) ─┬─> [frame_indices] ─> frame_indices, geometry ─┐  (gpu only)
                                          └──────────────────────────────────────────────┴─> [preprocess]
        [preprocess] ─> views (V, 3, T, H, W) ─> [classifier] ─> PROBS (num_classes)

``PROBS`` is the softmax of each view's logits averaged over the V views, so it sums to 1 (unlike
PaddleVideo's predict tool, which applies softmax a second time).

For long videos, the decoupled ``video_timeline`` model (not an ensemble) takes the same ``VIDEO`` plus
optional ``WINDOW_SECONDS`` / ``STRIDE_SECONDS`` and sends each window's views to the same ``classifier``
through BLS, answering one ``WINDOW`` + ``PROBS`` response per window, in time order.
"""

from __future__ import annotations

# --- models ------------------------------------------------------------------------------------------
ENSEMBLE = "video_classifier"
"""The model users call."""
PREPROCESS = "preprocess"
"""Decode + sample + resize + crop + normalise: python backend (cpu target) or dali backend (gpu)."""
FRAME_SAMPLER = "frame_indices"
"""gpu target only: probes the container with PyAV and picks the frame indices DALI decodes."""
CLASSIFIER = "classifier"
"""Views -> view-averaged probabilities: ONNX Runtime in the python backend (cpu) or a TensorRT plan (gpu)."""
TIMELINE = "video_timeline"
"""Decoupled model for long videos: one VIDEO in, one (WINDOW, PROBS) response per window, in time order."""

# --- tensors -----------------------------------------------------------------------------------------
VIDEO = "VIDEO"
"""uint8 [-1]: the bytes of one encoded video file (container and all)."""
FRAME_INDICES = "FRAME_INDICES"
"""int32 [T]: frame numbers to decode, in output order."""
GEOMETRY = "GEOMETRY"
"""int32 [3 + 2V]: display rotation, resized size and crop corners for the DALI step (gpu target only;
see ``training.preprocessing.geometry``)."""
VIEWS = "VIEWS"
"""float32 [V, 3, T, H, W]: the normalised crops of one video."""
PROBS = "PROBS"
"""float32 [num_classes]: class probabilities averaged over the views."""
WINDOW_SECONDS = "WINDOW_SECONDS"
"""float32 [1], optional input of ``video_timeline``: window length in seconds (default: the spec's)."""
STRIDE_SECONDS = "STRIDE_SECONDS"
"""float32 [1], optional input of ``video_timeline``: seconds between window starts (default: the window)."""
WINDOW = "WINDOW"
"""float32 [2], output of ``video_timeline``: a window's start and end in seconds from the first frame."""

# Ensemble-internal tensor names (lower_snake, as in dali_backend's examples).
ENSEMBLE_FRAME_INDICES = "frame_indices"
ENSEMBLE_GEOMETRY = "geometry"
ENSEMBLE_VIEWS = "views"

# --- files inside a generated repository ------------------------------------------------------------
LABELS_FILE = "labels.txt"
"""In the ensemble's folder, one label per line, referenced by PROBS' ``label_filename``."""
SPEC_FILE = "preprocess.json"
"""In each model folder that needs it: ``PreprocessSpec.to_dict()`` plus decode limits."""
SERVING_FILE = "serving.json"
"""At the repository root: target, spec, labels, model config and provenance, for clients and tools."""
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
DALI_FILE = "model.dali"

TARGETS = ("cpu", "gpu")

# --- model config parameters ------------------------------------------------------------------------
DECODER_PARAMETER = "decoder"
"""``frame_indices`` (gpu target): the placement of the DALI decoder it screens videos for, ``mixed``
(NVDEC) or ``cpu`` (DALI's CPU decoder; see ``build_engines.build --dali-device``)."""
