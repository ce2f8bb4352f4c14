"""What the python-backend models do, as plain functions that tests can call without Triton.

The ``model.py`` files copied into a generated repository stay thin: ``initialize`` calls
:func:`load_model_settings`, ``execute`` calls :func:`serve_each` (one request at a time, for decoding) or
:func:`serve_batched` (all requests at once, for the classifier) with one of the functions below. A request
that fails gets its own error response -- ``INVALID_ARG`` for bad input (any ``ValueError``, which is what
``VideoDecodeError`` is), ``INTERNAL`` for anything else -- while the rest of the batch is served.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.preprocessing.limits import DecodeLimits
from training.preprocessing.spec import PreprocessSpec
from triton_models import contract


class RequestError(ValueError):
    """A request that cannot be served as sent (wrong type/shape, empty); the message names the problem."""


@dataclass(frozen=True)
class ModelSettings:
    """What a python-backend model reads at ``initialize``: the spec and limits of its repository."""

    spec: PreprocessSpec
    limits: DecodeLimits
    model_dir: Path
    version_dir: Path
    instances: int
    max_batch_size: int
    parameters: dict[str, str]  # the config's string parameters


def write_spec_file(model_dir: str | Path, spec: PreprocessSpec, limits: DecodeLimits) -> Path:
    """Write ``preprocess.json`` (spec + limits) into a model folder of a generated repository."""
    path = Path(model_dir) / contract.SPEC_FILE
    path.write_text(json.dumps({"preprocess": spec.to_dict(), "limits": limits.to_dict()}, indent=2) + "\n")
    return path


def read_spec_file(model_dir: str | Path) -> tuple[PreprocessSpec, DecodeLimits]:
    """Inverse of :func:`write_spec_file`; a missing or malformed file is a ``ValueError`` naming it."""
    path = Path(model_dir) / contract.SPEC_FILE
    try:
        d = json.loads(path.read_text())
        return PreprocessSpec.from_dict(d["preprocess"]), DecodeLimits.from_dict(d.get("limits", {}))
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable preprocessing spec ({type(exc).__name__}: {exc})") from exc


def load_model_settings(args: dict[str, str]) -> ModelSettings:
    """Parse the python backend's ``initialize(args)`` into :class:`ModelSettings`."""
    config = json.loads(args["model_config"])
    model_dir = Path(args["model_repository"])
    version_dir = model_dir / str(args["model_version"])
    groups = config.get("instance_group") or [{}]
    instances = sum(int(g.get("count", 1)) for g in groups)
    spec_file = model_dir / contract.SPEC_FILE
    if spec_file.is_file():
        spec, limits = read_spec_file(model_dir)
    else:  # the classifier needs no spec; keep a default so the dataclass stays total
        spec, limits = PreprocessSpec(), DecodeLimits()
    return ModelSettings(
        spec=spec,
        limits=limits,
        model_dir=model_dir,
        version_dir=version_dir,
        instances=max(1, instances),
        max_batch_size=int(config.get("max_batch_size", 0)),
        parameters={
            str(k): str(v.get("string_value", "")) if isinstance(v, dict) else str(v)
            for k, v in (config.get("parameters") or {}).items()
        },
    )


def available_cores() -> int:
    """CPU cores this process may run on (affinity-aware, unlike ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------------
# Request payloads
# ---------------------------------------------------------------------------------------------------
def video_payload(array: np.ndarray, limits: DecodeLimits) -> bytes:
    """The encoded file carried by one request's ``VIDEO`` tensor ((1, n) with batching, or (n,))."""
    if array.dtype != np.uint8:
        raise RequestError(f"VIDEO must be uint8 bytes, got {array.dtype}")
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise RequestError(f"VIDEO must hold one encoded file per request, got shape {tuple(array.shape)}")
    if array.size == 0:
        raise RequestError("empty payload: VIDEO has 0 bytes")
    if array.size > limits.max_bytes:
        raise RequestError(f"payload of {array.size} bytes exceeds the limit of {limits.max_bytes} bytes")
    return array.tobytes()


def preprocess_payload(array: np.ndarray, spec: PreprocessSpec, limits: DecodeLimits) -> np.ndarray:
    """cpu target's ``preprocess`` model: encoded bytes -> views ``(V, 3, T, H, W)`` float32 with the
    reference implementation (PyAV decode of only the sampled frames, then resize/crop/normalise)."""
    from training.preprocessing.decode import preprocess_video

    data = video_payload(array, limits)
    clip = preprocess_video(data, spec, limits=limits.for_serving())
    return np.ascontiguousarray(clip.views, dtype=np.float32)  # (V, 3, T, H, W)


def frame_indices_payload(
    array: np.ndarray, spec: PreprocessSpec, limits: DecodeLimits, decoder: str = "mixed"
) -> dict[str, np.ndarray]:
    """gpu target's ``frame_indices`` model: probe the container (demux only, plus one frame for the display
    rotation), refuse what the DALI decoder (``decoder``: ``mixed`` NVDEC, or the ``cpu`` placement's) cannot
    decode or would count differently, pick the frames with the sampling every implementation shares and
    work out the resize/crop geometry. Returns ``{FRAME_INDICES: int32 (T,), GEOMETRY: int32 (3 + 2V,)}``."""
    from training.preprocessing.nvdec import plan_gpu_decode

    data = video_payload(array, limits)
    indices, geometry = plan_gpu_decode(data, spec, limits=limits.for_serving(), device=decoder)
    return {
        contract.FRAME_INDICES: np.ascontiguousarray(indices, dtype=np.int32),  # (T,)
        contract.GEOMETRY: np.ascontiguousarray(geometry, dtype=np.int32),  # (3 + 2V,)
    }


# ---------------------------------------------------------------------------------------------------
# The classifier: ONNX Runtime on the view-averaging graph
# ---------------------------------------------------------------------------------------------------
def ort_cpu_session(onnx_path: str | Path, *, intra_op_threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session set up as serving runs it, for every ONNX graph this project runs
    (serving, export checks, benchmarks): all graph optimisations, ``intra_op_threads`` (default: every
    available core), inter-op 1 and sequential execution (the graph is one chain; parallel branches
    would only contend)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads or available_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


class OrtClassifier:
    """ONNX Runtime session over the serving graph ``VIEWS (B, V, 3, T, H, W) -> PROBS (B, K)``.

    Threads: intra-op = available cores / instances of this model (instances run concurrently, so more
    would oversubscribe).
    """

    def __init__(
        self, onnx_path: str | Path, *, instances: int = 1, intra_op_threads: int | None = None
    ) -> None:
        self.threads = intra_op_threads or max(1, available_cores() // max(1, instances))
        self.session = ort_cpu_session(onnx_path, intra_op_threads=self.threads)
        inp = self.session.get_inputs()[0]
        self.view_shape = tuple(int(d) for d in inp.shape[1:])  # (V, 3, T, H, W)

    def __call__(self, views: np.ndarray) -> np.ndarray:
        """(B, V, 3, T, H, W) float32 -> (B, K) probabilities."""
        if views.dtype != np.float32 or tuple(views.shape[1:]) != self.view_shape:
            raise RequestError(
                f"{contract.VIEWS} must be float32 (B, {', '.join(map(str, self.view_shape))}), "
                f"got {views.dtype} {tuple(views.shape)}"
            )
        return self.session.run([contract.PROBS], {contract.VIEWS: views})[0]


def classify_batch(classifier: Callable[[np.ndarray], np.ndarray], inputs: Sequence[np.ndarray]) -> list:
    """Run one batch made of every request's views; returns per request its (1, K) probs or the error.

    Each request carries (1, V, 3, T, H, W) (or (V, 3, T, H, W)); malformed ones are answered with their
    own error and left out of the batch.
    """
    results: list[Any] = [None] * len(inputs)
    good: list[int] = []
    arrays: list[np.ndarray] = []
    for i, x in enumerate(inputs):
        x = x[None] if x.ndim == 5 else x
        shape = getattr(classifier, "view_shape", None)
        if x.dtype != np.float32 or x.ndim != 6 or (shape is not None and tuple(x.shape[1:]) != shape):
            results[i] = RequestError(f"{contract.VIEWS} has dtype {x.dtype} shape {tuple(x.shape)}")
            continue
        good.append(i)
        arrays.append(x)
    if arrays:
        probs = classifier(np.concatenate(arrays, axis=0))  # (B, K)
        start = 0
        for i, x in zip(good, arrays):
            results[i] = probs[start : start + x.shape[0]]  # (b, K)
            start += x.shape[0]
    return results


# ---------------------------------------------------------------------------------------------------
# Python-backend glue: one response per request, errors stay per request
# ---------------------------------------------------------------------------------------------------
def error_response(pb_utils: Any, exc: BaseException) -> Any:
    """An error response naming the problem: INVALID_ARG (HTTP 400 / gRPC INVALID_ARGUMENT) for bad input,
    INTERNAL otherwise."""
    err_cls = pb_utils.TritonError
    if isinstance(exc, ValueError):
        code = getattr(err_cls, "INVALID_ARG", None)
        msg = str(exc) or type(exc).__name__
    else:
        code = getattr(err_cls, "INTERNAL", None)
        msg = f"{type(exc).__name__}: {exc}"
    error = err_cls(msg, code) if code is not None else err_cls(msg)
    return pb_utils.InferenceResponse(error=error)


def serve_each(
    pb_utils: Any, requests: Sequence[Any], input_name: str, output_name: str, fn: Callable[[np.ndarray], Any]
) -> list:
    """Call ``fn`` on each request's input and answer it; outputs get the leading batch dim of 1.

    ``fn`` returns the array for ``output_name``, or a dict of output name -> array for several outputs.
    """
    responses = []
    for request in requests:
        try:
            array = pb_utils.get_input_tensor_by_name(request, input_name).as_numpy()
            result = fn(array)
            outs = result if isinstance(result, dict) else {output_name: result}
            tensors = [pb_utils.Tensor(name, np.asarray(x)[None]) for name, x in outs.items()]  # (1, ...)
            responses.append(pb_utils.InferenceResponse(tensors))
        except Exception as exc:  # every failure is this request's alone
            responses.append(error_response(pb_utils, exc))
    return responses


def serve_batched(
    pb_utils: Any,
    requests: Sequence[Any],
    input_name: str,
    output_name: str,
    fn: Callable[[Sequence[np.ndarray]], list],
) -> list:
    """Hand every request's input to ``fn`` at once (one model run for the whole dynamic batch)."""
    arrays: list[Any] = []
    for request in requests:
        try:
            arrays.append(pb_utils.get_input_tensor_by_name(request, input_name).as_numpy())
        except Exception as exc:
            arrays.append(exc)
    idx = [i for i, a in enumerate(arrays) if isinstance(a, np.ndarray)]
    try:
        outs = fn([arrays[i] for i in idx])
    except Exception as exc:  # the shared run failed: every request in it gets the reason
        outs = [exc] * len(idx)
    results: list[Any] = list(arrays)
    for i, out in zip(idx, outs):
        results[i] = out
    responses = []
    for r in results:
        if isinstance(r, BaseException):
            responses.append(error_response(pb_utils, r))
        else:
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(output_name, np.asarray(r))]))
    return responses
