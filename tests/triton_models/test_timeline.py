"""``video_timeline``'s request handling without Triton (a minimal ``pb_utils``), and its generated config
for both targets parsed as Triton's ModelConfig."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from build_engines.repository import RepositoryOptions, generate_configs
from tests.utils_video import encode_video, index_frames, png_bytes
from training.preprocessing.limits import DecodeLimits
from training.preprocessing.spec import PreprocessSpec
from training.preprocessing.windows import TimelineDecoder, default_window_seconds
from triton_models import contract
from triton_models.timeline import TimelineSettings, load_timeline_settings, serve_timeline

SPEC = PreprocessSpec(num_frames=4, sampling="uniform", short_side=32, crop_size=32, crops="center")
K = 3
FINAL = 1


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Error:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message: str, code: str | None = None) -> None:
        self.msg, self.code = message, code


class _Response:
    def __init__(self, output_tensors: list | None = None, error: _Error | None = None) -> None:
        self.tensors = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error


class PbUtils:
    """The part of ``triton_python_backend_utils`` the handler uses, with the same call shapes."""

    Tensor = _Tensor
    TritonError = _Error
    InferenceResponse = _Response
    TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL

    @staticmethod
    def get_input_tensor_by_name(request: Any, name: str) -> _Tensor | None:
        return request.inputs.get(name)


class Sender:
    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[tuple[Any, int]] = []
        self.fail_after = fail_after

    def send(self, response: Any = None, flags: int = 0) -> None:
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise RuntimeError("the stream is closed")
        self.sent.append((response, flags))


class Request:
    def __init__(
        self, video: bytes, window: float | None = None, stride: float | None = None, **kw: Any
    ) -> None:
        self.inputs = {contract.VIDEO: _Tensor(contract.VIDEO, np.frombuffer(video, np.uint8)[None])}
        for name, value in ((contract.WINDOW_SECONDS, window), (contract.STRIDE_SECONDS, stride)):
            if value is not None:
                self.inputs[name] = _Tensor(name, np.asarray([[value]], np.float32))
        self.sender = Sender(kw.get("fail_after"))
        self.cancel_after = kw.get("cancel_after")

    def get_response_sender(self) -> Sender:
        return self.sender

    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.sender.sent) >= self.cancel_after


def brightness_probs(views: np.ndarray) -> np.ndarray:
    """A deterministic classifier of the mean brightness: (B, V, 3, T, S, S) -> (B, K) summing to 1."""
    m = views.reshape(len(views), -1).mean(axis=1)  # (B,)
    logits = np.stack([m * 10, -m * 10, np.zeros_like(m)], axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fail = fail

    def __call__(self, views: np.ndarray) -> np.ndarray:
        if self.fail:
            raise RuntimeError("classifier: out of memory")
        self.batches.append(len(views))
        time.sleep(0.01)  # a classifier takes time: windows queue up and batch
        return brightness_probs(views)


SETTINGS = TimelineSettings(window_seconds=1.0, stride_seconds=1.0, classifier_batch=3)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = encode_video(
        tmp_path_factory.mktemp("tl") / "v.mp4", index_frames(100, 32, 32), "h264", fps=10, gop=25
    )
    return path.read_bytes()


def _serve(request: Request, classify: Any = None, settings: TimelineSettings = SETTINGS) -> Any:
    return serve_timeline(PbUtils, request, SPEC, DecodeLimits(), settings, classify or Recorder())


def test_one_response_per_window_in_time_order_then_the_final_flag(video: bytes) -> None:
    req = Request(video, 2.0, 1.5)
    rec = Recorder()
    stats = _serve(req, rec)
    *windows, (last, flags) = req.sender.sent
    assert last is None and flags == FINAL
    assert all(f == 0 and r.error is None for r, f in windows)
    with TimelineDecoder(video, SPEC, 2.0, 1.5) as tl:
        expect = [(c.window.start, c.window.end, brightness_probs(c.views[None])[0]) for c in tl.clips()]
    assert len(windows) == len(expect) == stats.sent == stats.windows == 7
    for (r, _), (start, end, probs) in zip(windows, expect):
        assert r.tensors[contract.WINDOW].shape == (1, 2) and r.tensors[contract.WINDOW].dtype == np.float32
        np.testing.assert_allclose(r.tensors[contract.WINDOW][0], [start, end], rtol=1e-6)
        np.testing.assert_allclose(r.tensors[contract.PROBS][0], probs, rtol=1e-6)
    assert max(rec.batches) <= 3 and sum(rec.batches) == 7
    assert stats.max_held_frames <= 2 * SPEC.num_frames


def test_window_inputs_and_defaults(video: bytes) -> None:
    req = Request(video)  # no WINDOW_SECONDS: the model's default (1 s), stride = window
    _serve(req)
    assert len(req.sender.sent) == 10 + 1
    req = Request(video, None, 5.0)  # a stride alone strides the default window
    _serve(req)
    spans = [r.tensors[contract.WINDOW][0].tolist() for r, _ in req.sender.sent[:-1]]
    assert spans == [[0.0, 1.0], [5.0, 6.0]]


@pytest.mark.parametrize(
    ("payload", "window", "stride", "message"),
    [
        (b"\x00" * 2048, None, None, "not a readable video container"),
        (png_bytes(), None, None, "still image"),
        (None, -1.0, None, "WINDOW_SECONDS must be a positive"),
        (None, 1.0, 0.0, "STRIDE_SECONDS must be a positive"),
        (None, 1e-5, None, "limit of"),
    ],
)
def test_bad_requests_get_one_error_naming_the_problem(
    video: bytes, payload, window, stride, message
) -> None:
    req = Request(payload or video, window, stride)
    _serve(req)
    ((err, flags),) = req.sender.sent  # the error response itself carries the final flag
    assert err.error.code == "INVALID_ARG" and message in err.error.msg and flags == FINAL


def test_empty_video_is_refused(video: bytes) -> None:
    req = Request(video)
    req.inputs[contract.VIDEO] = _Tensor(contract.VIDEO, np.zeros((1, 0), np.uint8))
    _serve(req)
    assert "0 bytes" in req.sender.sent[0][0].error.msg


def _decode_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "timeline-decode")


def test_a_cancelled_request_stops_early_and_leaves_no_thread(video: bytes) -> None:
    req = Request(video, 0.2, cancel_after=3)  # 50 windows; the client goes away after 3
    stats = _serve(req)
    assert stats.cancelled and stats.sent < 10
    assert req.sender.sent[-1] == (None, FINAL)
    assert _decode_threads() == 0


def test_a_closed_stream_stops_the_request(video: bytes) -> None:
    req = Request(video, 0.2, fail_after=2)
    stats = _serve(req)
    assert stats.cancelled and stats.sent == 2
    assert _decode_threads() == 0


def test_classifier_failure_is_an_internal_error(video: bytes) -> None:
    req = Request(video, 2.0)
    _serve(req, Recorder(fail=True))
    (err, _), (last, flags) = req.sender.sent
    assert err.error.code == "INTERNAL" and "out of memory" in err.error.msg
    assert last is None and flags == FINAL


# --- the generated config --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_generated_config_is_a_decoupled_model_for_both_targets(tmp_path: Path, target: str) -> None:
    opts = RepositoryOptions(target=target, max_batch_size=4, timeline_window_s=2.0)
    generate_configs(tmp_path, SPEC, ["a", "b", "c"], opts)
    folder = tmp_path / contract.TIMELINE
    cfg = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())  # what Triton parses
    assert cfg.backend == "python" and cfg.model_transaction_policy.decoupled
    assert cfg.max_batch_size == 1  # one file per request, sent as [1, nbytes] like video_classifier's
    ins = {i.name: (i.data_type, list(i.dims), i.optional) for i in cfg.input}
    assert ins == {
        contract.VIDEO: (mc.TYPE_UINT8, [-1], False),
        contract.WINDOW_SECONDS: (mc.TYPE_FP32, [1], True),
        contract.STRIDE_SECONDS: (mc.TYPE_FP32, [1], True),
    }
    outs = {o.name: (o.data_type, list(o.dims)) for o in cfg.output}
    assert outs == {contract.WINDOW: (mc.TYPE_FP32, [2]), contract.PROBS: (mc.TYPE_FP32, [3])}
    assert (folder / contract.LABELS_FILE).read_text().splitlines() == ["a", "b", "c"]
    assert (folder / "1" / "model.py").is_file() and (folder / contract.SPEC_FILE).is_file()
    # What the python backend hands initialize(): the config as JSON.
    as_json = json_format.MessageToDict(cfg, preserving_proto_field_name=True)
    settings = load_timeline_settings(as_json, SPEC)
    assert settings == TimelineSettings(2.0, 2.0, contract.CLASSIFIER, 4)


def test_default_window_comes_from_the_spec(tmp_path: Path) -> None:
    generate_configs(tmp_path, SPEC, ["a"], RepositoryOptions())
    cfg = text_format.Parse((tmp_path / contract.TIMELINE / "config.pbtxt").read_text(), mc.ModelConfig())
    settings = load_timeline_settings(json_format.MessageToDict(cfg, preserving_proto_field_name=True), SPEC)
    assert settings.window_seconds == settings.stride_seconds == pytest.approx(default_window_seconds(SPEC))
