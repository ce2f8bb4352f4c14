"""The ``video_timeline`` model's request handling, as plain functions that tests call without Triton.

One request = one whole encoded file (``VIDEO``), optionally ``WINDOW_SECONDS`` / ``STRIDE_SECONDS``. The
model is decoupled: it answers one response per window, in time order, each as soon as the window is
classified (``WINDOW`` = [start, end] seconds, ``PROBS`` = class probabilities as ``video_classifier``
gives them), then a final empty response with the COMPLETE_FINAL flag. A bad video or bad arguments get
one error response (INVALID_ARGUMENT, naming the problem) and the final flag.

Work is split in two threads so that decoding the next windows overlaps classifying the current ones:

* a decoding thread runs :class:`~training.preprocessing.windows.TimelineDecoder` (one forward pass over
  the file) and puts ready windows on a small bounded queue -- so it never runs more than a couple of
  batches ahead, and memory stays bounded by the window, not the video;
* the calling thread (the model's ``execute``) takes whatever windows are ready (at least one, at most the
  classifier's batch size), sends them to the ``classifier`` model in one BLS request -- the same model
  and dynamic batcher the ``video_classifier`` ensemble uses -- and sends one response per window.

A client that goes away (the request is cancelled, or a send fails) stops the decoding thread at its next
window and the request ends; nothing else on the server is affected.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.preprocessing.limits import DecodeLimits
from training.preprocessing.spec import PreprocessSpec
from training.preprocessing.windows import TimelineDecoder, WindowClip, check_window_args
from triton_models import contract
from triton_models.runtime import RequestError, error_response, video_payload

_DONE = object()  # end-of-stream marker on the decoder's queue


@dataclass(frozen=True)
class TimelineSettings:
    """What ``video_timeline`` reads at ``initialize`` besides the spec: defaults and batching."""

    window_seconds: float
    stride_seconds: float
    classifier: str = contract.CLASSIFIER
    classifier_batch: int = 1  # windows per BLS request (the classifier's max_batch_size)


def load_timeline_settings(model_config: dict[str, Any] | str, spec: PreprocessSpec) -> TimelineSettings:
    """Read the model config's ``parameters`` (written by the repository generator)."""
    from training.preprocessing.windows import default_window_seconds

    config = json.loads(model_config) if isinstance(model_config, str) else model_config
    params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
    window = float(params.get("window_seconds") or default_window_seconds(spec))
    stride = float(params.get("stride_seconds") or window)
    window, stride = check_window_args(window, stride)
    return TimelineSettings(
        window_seconds=window,
        stride_seconds=stride,
        classifier=params.get("classifier") or contract.CLASSIFIER,
        classifier_batch=max(1, int(params.get("classifier_max_batch_size") or 1)),
    )


def optional_seconds(pb_utils: Any, request: Any, name: str) -> float | None:
    """The value of an optional fp32 [1] input (``None`` when the request does not carry it)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    array = tensor.as_numpy()
    if array.size != 1:
        raise RequestError(f"{name} must hold one number of seconds, got shape {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.floating):
        raise RequestError(f"{name} must be FP32, got {array.dtype}")
    return float(array.reshape(-1)[0])


def timeline_arguments(
    pb_utils: Any, request: Any, settings: TimelineSettings, limits: DecodeLimits
) -> tuple[bytes, float, float]:
    """``(encoded bytes, window, stride)`` of one request; ``ValueError`` (INVALID_ARG) naming a bad one.

    A request with ``WINDOW_SECONDS`` only strides by its window; with neither, the model's defaults.
    """
    video = pb_utils.get_input_tensor_by_name(request, contract.VIDEO)
    if video is None:
        raise RequestError(f"missing input {contract.VIDEO}")
    data = video_payload(video.as_numpy(), limits)
    window = optional_seconds(pb_utils, request, contract.WINDOW_SECONDS)
    stride = optional_seconds(pb_utils, request, contract.STRIDE_SECONDS)
    if window is None:
        window = settings.window_seconds
        stride = settings.stride_seconds if stride is None else stride
    window, stride = check_window_args(window, stride)
    return data, window, stride


def bls_classifier(
    pb_utils: Any, model_name: str = contract.CLASSIFIER
) -> Callable[[np.ndarray], np.ndarray]:
    """``views (B, V, 3, T, S, S) -> probs (B, K)`` through a BLS request to the ``classifier`` model."""

    def run(views: np.ndarray) -> np.ndarray:
        request = pb_utils.InferenceRequest(
            model_name=model_name,
            requested_output_names=[contract.PROBS],
            inputs=[pb_utils.Tensor(contract.VIEWS, np.ascontiguousarray(views, dtype=np.float32))],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model_name}: {response.error().message()}")
        return pb_utils.get_output_tensor_by_name(response, contract.PROBS).as_numpy()  # (B, K)

    return run


def window_response(pb_utils: Any, start: float, end: float, probs: np.ndarray) -> Any:
    """One window's response: ``WINDOW`` (1, 2) and ``PROBS`` (1, K) (the batch dim of one request)."""
    window = np.asarray([[start, end]], dtype=np.float32)  # (1, 2)
    probs = np.asarray(probs, dtype=np.float32).reshape(1, -1)  # (1, K)
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(contract.WINDOW, window), pb_utils.Tensor(contract.PROBS, probs)]
    )


def _cancelled(request: Any) -> bool:
    check = getattr(request, "is_cancelled", None)
    try:
        return bool(check()) if check is not None else False
    except Exception:  # a request whose client is gone may not even answer that
        return True


@dataclass
class TimelineStats:
    """What one request did (for logs and tests)."""

    windows: int = 0  # windows planned
    sent: int = 0  # window responses sent
    batches: int = 0  # BLS requests
    max_held_frames: int = 0
    decoded_frames: int = 0
    error: str | None = None
    cancelled: bool = False


def serve_timeline(
    pb_utils: Any,
    request: Any,
    spec: PreprocessSpec,
    limits: DecodeLimits,
    settings: TimelineSettings,
    classify: Callable[[np.ndarray], np.ndarray],
    *,
    queue_batches: int = 2,
) -> TimelineStats:
    """Answer one decoupled request: a response per window in time order, then the final flag.

    ``classify`` maps a batch of views (B, V, 3, T, S, S) to probabilities (B, K) (:func:`bls_classifier`
    in the server). The decoding thread runs at most ``queue_batches`` classifier batches ahead.
    """
    sender = request.get_response_sender()
    final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
    stats = TimelineStats()
    try:
        data, window, stride = timeline_arguments(pb_utils, request, settings, limits)
        timeline = TimelineDecoder(data, spec, window, stride, limits=limits.for_serving())
    except Exception as exc:  # bad input: one error response, then the final flag
        stats.error = str(exc)
        _send(sender, error_response(pb_utils, exc), final)
        return stats
    del data  # the decoder holds its own reference to the bytes
    stats.windows = len(timeline.windows)
    batch = max(1, settings.classifier_batch)
    ready: queue.Queue = queue.Queue(maxsize=batch * max(1, queue_batches))
    stop = threading.Event()

    def produce() -> None:
        try:
            for clip in timeline.clips():
                while not stop.is_set():
                    try:
                        ready.put(clip, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            _put_last(ready, _DONE, stop)
        except BaseException as exc:  # handed to the sending thread, which answers with it
            _put_last(ready, exc, stop)

    worker = threading.Thread(target=produce, name="timeline-decode", daemon=True)
    worker.start()
    try:
        while True:
            if _cancelled(request):
                stats.cancelled = True
                break
            item = ready.get()
            items = [item]
            while len(items) < batch and isinstance(items[-1], WindowClip):
                try:
                    items.append(ready.get_nowait())
                except queue.Empty:
                    break
            clips = [x for x in items if isinstance(x, WindowClip)]
            if clips:
                probs = classify(np.stack([c.views for c in clips]))  # (B, K)
                stats.batches += 1
                for clip, p in zip(clips, probs):
                    if not _send(sender, window_response(pb_utils, clip.window.start, clip.window.end, p)):
                        stats.cancelled = True
                        break
                    stats.sent += 1
                if stats.cancelled:
                    break
            tail = items[-1]
            if tail is _DONE:
                break
            if isinstance(tail, BaseException):
                raise tail
    except Exception as exc:  # decode error mid-stream, classifier failure: one error response
        stats.error = str(exc)
        _send(sender, error_response(pb_utils, exc))
    finally:
        stop.set()
        worker.join(timeout=30)
        timeline.close()
        stats.max_held_frames = timeline.max_held_frames
        stats.decoded_frames = timeline.decoded_frames
        _send(sender, None, final)
    return stats


def _put_last(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _send(sender: Any, response: Any, flags: int = 0) -> bool:
    """Send, returning False when the client is gone (the stub raises on a cancelled/closed stream)."""
    try:
        sender.send(response, flags=flags)
        return True
    except Exception:
        return False
