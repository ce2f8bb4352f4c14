"""The client core: one client factory, one request builder, one response parser, for every caller.

``clients.classify``, the demo, offline scoring (asyncio clients) and the benchmarks all send the same
request (one whole encoded file as ``VIDEO``, uint8, batch of one) and read the classification extension's
``prob:index:label`` strings the same way::

    client = make_client("127.0.0.1:8001", "grpc")
    probs = infer_probs(client, read_video_bytes("clip.mp4"))            # (K,) float32, sums to 1
    top = request_top_k(client, read_video_bytes("clip.mp4"), top_k=5)  # [Prediction(...), ...]
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from triton_models import contract

PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}


class ClientError(ValueError):
    """A request that failed; ``status`` is Triton's (e.g. ``400`` or ``StatusCode.INVALID_ARGUMENT``)."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def is_invalid_input(self) -> bool:
        """Whether the server refused the request's content (HTTP 400 / gRPC INVALID_ARGUMENT)."""
        return self.status is not None and ("INVALID_ARGUMENT" in self.status or self.status == "400")


@dataclass(frozen=True)
class Prediction:
    """One entry of a top-k answer."""

    label: str
    class_id: int
    prob: float


def client_module(protocol: str, *, aio: bool = False) -> Any:
    """The tritonclient module of ``protocol`` (its asyncio flavour with ``aio``)."""
    if protocol == "grpc":
        if aio:
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.grpc as module
    elif protocol == "http":
        if aio:
            import tritonclient.http.aio as module
        else:
            import tritonclient.http as module
    else:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return module


def make_client(
    url: str, protocol: str = "grpc", *, aio: bool = False, timeout_s: float = 300.0, concurrency: int = 100
) -> Any:
    """A tritonclient ``InferenceServerClient`` for ``url`` ("host:port", no scheme).

    Blocking clients: gRPC ones are thread-safe, make one HTTP client per thread. ``aio``: an asyncio client
    (the batch scorer), HTTP with ``concurrency`` connections and no total timeout of its own (the caller
    applies one per request).
    """
    module = client_module(protocol, aio=aio)
    if protocol == "grpc":
        return module.InferenceServerClient(url)
    if aio:
        return module.InferenceServerClient(url, conn_limit=max(concurrency, 1), conn_timeout=None)
    return module.InferenceServerClient(url, connection_timeout=timeout_s, network_timeout=timeout_s)


def protocol_of(client: Any) -> str:
    """``grpc`` or ``http`` for a tritonclient client object."""
    return "grpc" if type(client).__module__.startswith("tritonclient.grpc") else "http"


def video_request(
    module: Any, video: np.ndarray, *, batched: bool = True, class_count: int = 0
) -> tuple[list[Any], list[Any]]:
    """The ensemble's request for one encoded file: ``([VIDEO input], [PROBS output])`` built with
    ``module`` (any tritonclient flavour). ``batched``: the model has a batch dimension, so the file is sent
    as a batch of one ``(1, nbytes)``; ``class_count`` > 0 asks for the top-k classification strings."""
    data = np.ascontiguousarray(video, dtype=np.uint8).reshape(-1)
    data = data[None, :] if batched else data  # (1, nbytes) or (nbytes,)
    inp = module.InferInput(contract.VIDEO, list(data.shape), "UINT8")
    inp.set_data_from_numpy(data)
    return [inp], [module.InferRequestedOutput(contract.PROBS, class_count=class_count)]


def read_video_bytes(path: str | Path) -> np.ndarray:
    """The file's raw bytes as uint8 (what ``VIDEO`` carries); ``ValueError`` naming a missing file."""
    path = Path(path)
    if not path.is_file():
        raise ClientError(f"{path}: no such file")
    return np.fromfile(path, dtype=np.uint8)


def _request(client: Any, video: np.ndarray, class_count: int) -> Any:
    inputs, outputs = video_request(client_module(protocol_of(client)), video, class_count=class_count)
    try:
        return client.infer(contract.ENSEMBLE, inputs, outputs=outputs)
    except Exception as exc:  # tritonclient raises InferenceServerException (and socket errors)
        raise as_client_error(exc) from exc


def as_client_error(exc: BaseException) -> ClientError:
    """One-line :class:`ClientError` from a tritonclient exception (keeps the server's status)."""
    status = None
    message = str(exc)
    if hasattr(exc, "status") and callable(exc.status):
        status = exc.status()
        status = None if status is None else str(status)
    if hasattr(exc, "message") and callable(exc.message):
        message = exc.message() or message
    message = " ".join(str(message).split())  # one line
    return ClientError(message, status)


def infer_probs(client: Any, video: np.ndarray) -> np.ndarray:
    """The ensemble's ``PROBS`` for one encoded video: (K,) float32."""
    result = _request(client, video, class_count=0)
    return result.as_numpy(contract.PROBS)[0]


def parse_classification(entries: Any) -> list[Prediction]:
    """Parse the classification extension's ``b"prob:index:label"`` strings (labels may contain ':')."""
    out = []
    for entry in np.asarray(entries).reshape(-1):
        text = entry.decode("utf-8") if isinstance(entry, bytes) else str(entry)
        parts = text.split(":", 2)
        if len(parts) < 2:
            raise ValueError(f"not a classification entry: {text!r}")
        label = parts[2] if len(parts) == 3 else parts[1]
        out.append(Prediction(label=label, class_id=int(parts[1]), prob=float(parts[0])))
    return out


def request_top_k(client: Any, video: np.ndarray, top_k: int = 5) -> list[Prediction]:
    """Top-k predictions for one encoded video, through Triton's classification extension."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    result = _request(client, video, class_count=top_k)
    return parse_classification(result.as_numpy(contract.PROBS)[0])


def predictions_to_dict(preds: list[Prediction]) -> list[dict[str, Any]]:
    return [asdict(p) for p in preds]


def model_statistics(http_url: str, model: str) -> dict[str, Any]:
    """Triton's statistics for ``model`` (execution vs inference counts, queue/compute times) over HTTP."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=10) as r:
        stats = json.load(r)["model_stats"]
    if not stats:
        raise ClientError(f"no statistics for model {model!r}")
    return stats[0]
