"""``--timeline`` scoring: every input through the decoupled ``video_timeline`` model, one row per window.

A video's rows form a *group*: ``window_index`` 0..``windows``-1 in time order, all with the same
``(ordinal, input)``; a video that cannot be scored is a group of one error row with ``window_index`` -1
and ``windows`` 0 (:data:`ERROR_WINDOW`). Exactly-once rests on two rules:

- The scorer collects all windows of a video before writing anything, then writes the whole group in one
  write (:meth:`ResultSink.write_group`). Groups therefore lie contiguously in the file, in completion order.
- On resume an input counts as done only when its group is complete (:class:`GroupReader`). A crash can cut
  only the group being written, which is the last thing in the file, so a resume truncates an incomplete
  trailing group (like a torn last line) and scores that input again. An incomplete group *followed by*
  other rows cannot come from a crash: it is refused as corruption.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clients.core import client_module
from clients.scoring.endpoints import Endpoint
from clients.scoring.inputs import InputItem
from clients.scoring.outputs import OutputError
from clients.timeline import WindowResult, timeline_inputs
from triton_models import contract

if TYPE_CHECKING:
    from clients.score import ModelInfo, Scorer

ERROR_WINDOW = -1  # window_index of a video's single error row (its ``windows`` is 0)


class StreamCut(ConnectionError):
    """The server closed a window stream before its final response (a server that went away)."""


# --- groups ---------------------------------------------------------------------------------------------


def window_of(row: dict[str, Any], where: str) -> tuple[int, int]:
    """``(window_index, windows)`` of a timeline row, checked; :class:`OutputError` names a malformed one."""
    idx, n = row.get("window_index"), row.get("windows")
    if not isinstance(idx, int) or not isinstance(n, int) or isinstance(idx, bool) or isinstance(n, bool):
        raise OutputError(f"{where}: not a --timeline row (window_index/windows missing or not integers)")
    if n == 0 and idx == ERROR_WINDOW:
        return idx, n
    if n < 1 or not 0 <= idx < n:
        raise OutputError(f"{where}: window_index {idx} of {n} windows is out of range")
    return idx, n


class GroupReader:
    """Folds a timeline output's rows, in file order, into complete groups (see module doc).

    ``add(row, offset)`` returns the ``(ordinal, input)`` of the group this row completes, else ``None``;
    after the last row, :attr:`incomplete` says where a trailing group that a crash cut short starts."""

    def __init__(self, output: str) -> None:
        self.output = output
        self._key: tuple[int, str] | None = None  # the open (incomplete so far) group
        self._windows = 0
        self._seen = 0
        self._offset = 0
        self.rows = 0  # rows read
        self.groups = 0  # complete groups read

    def add(self, row: dict[str, Any], offset: int = 0, where: str = "") -> tuple[int, str] | None:
        where = where or f"{self.output}: row {self.rows + 1}"
        idx, n = window_of(row, where)
        key = (row["ordinal"], row["input"])
        self.rows += 1
        if self._key is not None and key != self._key:
            raise OutputError(
                f"{where}: input #{self._key[0]} ({self._key[1]!r}) has {self._seen} of its {self._windows} "
                "window rows and rows of another input follow: a window group cut in the middle of the file "
                "is corruption, not a crash"
            )
        if self._key is None:
            if n == 0:
                self.groups += 1
                return key
            if idx != 0:
                raise OutputError(f"{where}: a window group starts at window_index {idx}, not 0")
            self._key, self._windows, self._seen, self._offset = key, n, 0, offset
        elif n != self._windows or idx != self._seen:
            raise OutputError(
                f"{where}: window {idx} of {n} where window {self._seen} of {self._windows} was expected"
            )
        self._seen += 1
        if self._seen < self._windows:
            return None
        self._key = None
        self.groups += 1
        return key

    @property
    def incomplete(self) -> tuple[int, int] | None:
        """``(offset, rows)`` of the trailing group a crash cut short: where it starts, and the rows it
        has; ``None`` when the last group is complete."""
        return (self._offset, self._seen) if self._key is not None else None


def window_rows(
    base: dict[str, Any], windows: list[WindowResult], labels: list[str], k: int
) -> list[dict[str, Any]]:
    """The ``ok`` group of one video: ``base`` (its common columns) plus each window's span and top-k."""
    rows = []
    for w in windows:
        p = np.asarray(w.probs, dtype=np.float32).reshape(-1)  # (K,)
        ids = [int(i) for i in np.argsort(-p, kind="stable")[: min(k, p.size)]]
        row = dict(base)
        row.update(
            status="ok",
            labels=[labels[i] if 0 <= i < len(labels) else f"class_{i}" for i in ids],
            ids=ids,
            probs=[float(p[i]) for i in ids],
            latency_ms=round(w.arrived_s * 1e3, 3),  # this window's arrival after the request was sent
            window_index=w.index,
            windows=len(windows),
            window_start=float(w.start),
            window_end=float(w.end),
        )
        rows.append(row)
    return rows


def error_group(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The group of a video that could not be scored: its one error row."""
    return [dict(row, window_index=ERROR_WINDOW, windows=0, window_start=None, window_end=None)]


# --- scoring ---------------------------------------------------------------------------------------------


@dataclass
class TimelineOptions:
    """What is sent beside each video: window and stride in seconds (``None``: the model's defaults)."""

    window: float | None = None
    stride: float | None = None


class TimelineScorer:
    """Scores one input through ``video_timeline`` with the classifier scorer's retries; returns its group.

    Reuses the :class:`~clients.score.Scorer` it wraps for reading files, the endpoint pool, the backoff
    and the row's common columns. A transient failure anywhere in a stream (endpoint gone, timeout between
    two windows, stream cut) throws away the windows received so far and retries the whole video, so a
    group is always one complete, uninterrupted answer."""

    def __init__(
        self, base: Scorer, options: TimelineOptions, label_info: ModelInfo | None, label_model: str
    ) -> None:
        self.base = base
        self.cfg = base.cfg
        self.pool = base.pool
        self.options = options
        # Label names come from the classifier ensemble's classification extension (same labels.txt);
        # without it on the server, rows name classes ``class_<i>``.
        self.label_info = label_info
        self.label_model = label_model

    def _labels(self) -> list[str] | None:
        if self.label_info is None:
            return [f"class_{i}" for i in range(self.base.info.num_classes)]
        return self.label_info.labels

    async def score(self, item: InputItem) -> list[dict[str, Any]]:
        """The group of ``item``; raises only :class:`AllEndpointsDown`."""
        base, cfg = self.base, self.cfg
        data = await base.read(item)
        if isinstance(data, str):
            return error_group(base._row(item, error=data))

        async def labels_for(ep: Endpoint) -> None:
            assert self.label_info is not None
            await self.label_info.ensure_labels(self.pool, ep, data, cfg.timeout_s, model=self.label_model)

        got = await base.with_retries(
            lambda ep: self.stream(ep.client, data), labels_for if self._labels() is None else None
        )
        if got.error:
            return error_group(base._row(item, error=got.error, endpoint=got.endpoint, attempt=got.attempt))
        if not got.value:
            return error_group(
                base._row(
                    item,
                    error="no windows: the model answered none",
                    endpoint=got.endpoint,
                    attempt=got.attempt,
                )
            )
        common = base._row(item, endpoint=got.endpoint, attempt=got.attempt)
        return window_rows(common, got.value, self._labels() or [], cfg.top_k)

    async def stream(self, client: Any, data: np.ndarray) -> list[WindowResult]:
        """Send one file over a gRPC stream and collect its windows until the final response. Waits at most
        ``--timeout`` seconds for each response (a long video may take far longer in total). Raises the
        server's error (an ``InferenceServerException``) for a refused video or a stream that fails."""
        grpc_aio = client_module("grpc", aio=True)
        import grpc
        from tritonclient.grpc._utils import get_error_grpc  # RpcError -> InferenceServerException

        request = {
            "model_name": self.cfg.model,
            "inputs": timeline_inputs(data, self.options.window, self.options.stride),
            "outputs": [
                grpc_aio.InferRequestedOutput(contract.WINDOW),
                grpc_aio.InferRequestedOutput(contract.PROBS),
            ],
            # An empty last response with the final flag: the only way to know the stream is whole.
            "parameters": {"triton_enable_empty_final_response": True},
        }

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield request

        responses = client.stream_infer(requests())
        windows: list[WindowResult] = []
        t0 = time.perf_counter()
        try:
            while True:
                try:
                    result, error = await asyncio.wait_for(responses.__anext__(), timeout=self.cfg.timeout_s)
                except StopAsyncIteration:
                    raise StreamCut(
                        f"stream closed after {len(windows)} windows, before the final response"
                    ) from None
                except grpc.RpcError as exc:
                    raise get_error_grpc(exc) from exc
                if error is not None:
                    raise error  # the server's reason (a bad video, or corrupt data mid-file)
                span = result.as_numpy(contract.WINDOW)
                if span is not None:
                    span = span.reshape(-1)  # (2,)
                    probs = result.as_numpy(contract.PROBS).reshape(-1)  # (K,)
                    arrived = time.perf_counter() - t0
                    windows.append(WindowResult(len(windows), float(span[0]), float(span[1]), probs, arrived))
                final = result.get_response().parameters.get("triton_final_response")
                if final is not None and final.bool_param:
                    return windows
        finally:
            responses.cancel()  # a no-op after the final response; otherwise the server stops decoding
