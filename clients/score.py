"""Batch offline scoring: every video of a list, directory or glob through one or more Triton servers,
exactly one result row per input, resumable after any crash.

    python -m clients.score --input videos.txt --out results.jsonl --url host1:8001 --url host2:8001 \\
        [--protocol grpc|http] [--concurrency 16] [--top-k 5] [--resume] [--balance least-loaded] \\
        [--shard I/N [--shard-by position|hash]] [--timeline [--window S] [--stride S]]
    python -m clients.score merge --input videos.txt --out all.jsonl part-0.jsonl part-1.jsonl ...

``--input`` and the paths it lists may be local or URLs (``s3://``, ``gs://``, ``http(s)://``: see
:mod:`clients.scoring.storage`). ``--shard I/N`` scores only slice ``I`` (0-based) of ``N`` into its own
output (:mod:`clients.scoring.shards`); ``merge`` combines the slices' outputs (:mod:`clients.scoring.merge`).

Each input is sent whole (its encoded bytes) to the ``video_classifier`` ensemble; the row holds the top-k
labels/ids/probabilities (exact float32 values from the ``PROBS`` tensor) or, for a bad video, the reason.
The output file itself is the resume ledger: rows are keyed by ``(ordinal, input)`` and a resumed run
skips the ordinals it already holds (see ``docs/scoring.md`` for the guarantees).

With ``--timeline`` each input goes to the decoupled ``video_timeline`` model instead (gRPC streaming) and
the output holds one row per window; a video's rows are written as one group, and a resume counts an input
done only when its group is complete (:mod:`clients.scoring.timeline`).

Exit status: 0 every input has a row (error rows included); 1 stopped early (all endpoints down past
``--down-limit``, interrupted) with a resumable output; 2 bad arguments, input or output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.core import PROTOCOLS, client_module, parse_classification, video_request
from clients.scoring.endpoints import (
    BALANCE_POLICIES,
    AllEndpointsDown,
    Endpoint,
    EndpointPool,
)
from clients.scoring.inputs import InputError, InputItem, InputSource
from clients.scoring.ledger import DoneSet, LedgerError, verify_input
from clients.scoring.outputs import OutputError, ResultSink
from clients.scoring.retry import Backoff, triage
from clients.scoring.shards import SHARD_BY, Shard, ShardedSource
from clients.scoring.storage import StorageError, read_url
from clients.scoring.timeline import GroupReader, TimelineOptions, TimelineScorer
from training.preprocessing.limits import MAX_VIDEO_BYTES
from triton_models.contract import ENSEMBLE, PROBS, TIMELINE, VIDEO

DEFAULT_MAX_BYTES = MAX_VIDEO_BYTES


@dataclass
class ScoreConfig:
    """Everything one scoring run needs (the CLI's flags)."""

    input: str
    out: str
    urls: list[str] = field(default_factory=lambda: ["127.0.0.1:8001"])
    protocol: str = "grpc"
    concurrency: int = 8
    top_k: int = 5
    resume: bool = False
    balance: str = "least-loaded"
    timeout_s: float = 60.0
    max_retries: int = 5
    down_limit_s: float = 60.0
    model: str | None = None  # None: video_classifier, or video_timeline with --timeline
    root: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    backoff: Backoff = field(default_factory=Backoff)
    progress: bool = True
    seed: int | None = None
    shard: Shard | None = None  # score only this slice of the input (None: all of it)
    timeline: bool = False  # one row per window through video_timeline (gRPC streaming)
    window: float | None = None  # --timeline: window seconds (None: the model's default)
    stride: float | None = None  # --timeline: seconds between window starts (None: the window)

    def __post_init__(self) -> None:
        if self.model is None:
            self.model = TIMELINE if self.timeline else ENSEMBLE
        if self.timeline and self.protocol != "grpc":
            raise ValueError(
                f"--timeline needs --protocol grpc, got {self.protocol!r}: video_timeline streams one "
                "response per window, which HTTP cannot carry"
            )
        for name, value in (("--window", self.window), ("--stride", self.stride)):
            if value is not None and not self.timeline:
                raise ValueError(f"{name} is a --timeline option; pass --timeline too")
            if value is not None and not (value > 0 and np.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.top_k < 1:
            raise ValueError(f"--top-k must be >= 1, got {self.top_k}")
        if self.timeout_s <= 0:
            raise ValueError(f"--timeout must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"--max-retries must be >= 0, got {self.max_retries}")
        if self.max_bytes < 1:
            raise ValueError(f"--max-bytes must be >= 1, got {self.max_bytes}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.balance not in BALANCE_POLICIES:
            raise ValueError(f"--balance must be one of {BALANCE_POLICIES}, got {self.balance!r}")


@dataclass
class ScoreSummary:
    """What a run did; ``complete`` means every input of the stream now has exactly one row."""

    total: int | None = None
    ok: int = 0
    errors: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    complete: bool = False
    stopped: str = ""  # why the run stopped early ("" when it did not)
    repaired_bytes: int = 0
    rows: int = 0  # rows written by this run (--timeline: one per window)
    cut_rows: int = 0  # --timeline resume: rows of an incomplete trailing group dropped
    endpoints: dict[str, int] = field(default_factory=dict)  # url -> rows served
    shard: str = ""  # "I/N" when the run scored one slice of its input

    @property
    def scored(self) -> int:
        return self.ok + self.errors

    @property
    def rate(self) -> float:
        """Videos per second scored by this run (skipped ones not counted)."""
        return self.scored / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self, out: str) -> str:
        total = "?" if self.total is None else str(self.total)
        state = "complete" if self.complete else f"STOPPED ({self.stopped}); rerun with --resume"
        who = f"score (shard {self.shard})" if self.shard else "score"
        rows = f" ({self.rows} rows)" if self.rows != self.scored else ""
        return (
            f"{who}: {self.ok} ok, {self.errors} failed, {self.skipped} skipped of {total} inputs{rows}; "
            f"{self.rate:.1f} videos/s over {self.elapsed_s:.1f} s -> {out} [{state}]"
        )


class ScoreError(ValueError):
    """A run that cannot start: bad arguments, input or output (exit code 2)."""


# --- one video ------------------------------------------------------------------------------------------


def read_video(path: Path, max_bytes: int) -> np.ndarray | str:
    """The file's bytes as uint8, or the reason it cannot be scored (a one-line error for its row)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing file: no such file"
    except OSError as exc:
        return f"unreadable file: {exc.strerror or exc}"
    if not os.path.isfile(path):
        return "unreadable file: not a regular file"
    if st.st_size == 0:
        return "empty file: 0 bytes"
    if st.st_size > max_bytes:
        return f"too large: {st.st_size} bytes > --max-bytes {max_bytes}"
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        return f"unreadable file: {exc.strerror or exc}"
    if data.size == 0:
        return "empty file: 0 bytes"
    return data


class ModelInfo:
    """What the scorer learns from the server once: input layout, class count, label names."""

    def __init__(self, batched: bool, num_classes: int) -> None:
        self.batched = batched  # the ensemble takes [1, N] (max_batch_size > 0) rather than [N]
        self.num_classes = num_classes
        self.labels: list[str] | None = None
        self._labels_lock = asyncio.Lock()

    @classmethod
    async def fetch(cls, client: Any, model: str) -> ModelInfo:
        md = await client.get_model_metadata(model)  # grpc: a protobuf message; http: a dict
        md = md if isinstance(md, dict) else _metadata_dict(md)
        ins = {t["name"]: t for t in md.get("inputs", [])}
        outs = {t["name"]: t for t in md.get("outputs", [])}
        if VIDEO not in ins or PROBS not in outs:
            raise ScoreError(f"model {model!r} has no {VIDEO} input / {PROBS} output: not a video classifier")
        in_shape = [int(d) for d in ins[VIDEO]["shape"]]
        out_shape = [int(d) for d in outs[PROBS]["shape"]]
        return cls(batched=len(in_shape) == 2, num_classes=out_shape[-1])

    async def ensure_labels(
        self,
        pool: EndpointPool,
        ep: Endpoint,
        data: np.ndarray,
        timeout_s: float,
        *,
        model: str | None = None,
    ) -> None:
        """Label names, once per run, through Triton's classification extension on a video known to work.

        The extension formats probabilities as text with 6 decimals, so the row's probabilities come from
        the raw PROBS tensor and only the names come from here."""
        if self.labels is not None:
            return
        async with self._labels_lock:
            if self.labels is not None:
                return
            result = await asyncio.wait_for(
                _infer(
                    pool.protocol, ep.client, model or pool.model, data, self, class_count=self.num_classes
                ),
                timeout=timeout_s,
            )
            names = [f"class_{i}" for i in range(self.num_classes)]
            for pred in parse_classification(result.as_numpy(PROBS)):
                if 0 <= pred.class_id < self.num_classes:
                    names[pred.class_id] = pred.label
            self.labels = names


def _metadata_dict(md: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(md, preserving_proto_field_name=True)


async def _infer(
    protocol: str, client: Any, model: str, data: np.ndarray, info: ModelInfo, *, class_count: int = 0
) -> Any:
    module = client_module(protocol, aio=True)
    inputs, outputs = video_request(module, data, batched=info.batched, class_count=class_count)
    return await client.infer(model, inputs, outputs=outputs)


def top_k(probs: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """Indices and values of the k largest probabilities, largest first (ties: lower index first)."""
    p = np.asarray(probs, dtype=np.float32).reshape(-1)  # (num_classes,)
    idx = np.argsort(-p, kind="stable")[: min(k, p.size)]
    return [int(i) for i in idx], [float(p[i]) for i in idx]


@dataclass
class Attempted:
    """What :meth:`Scorer.with_retries` got: the request's value, or the reason it failed for good."""

    value: Any = None
    endpoint: str | None = None
    attempt: int = 0
    error: str = ""


class Scorer:
    """Scores single items against the pool with retries; returns one finished row per item."""

    def __init__(
        self, cfg: ScoreConfig, source: InputSource | ShardedSource, pool: EndpointPool, info: ModelInfo
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.pool = pool
        self.info = info
        self.rng = random.Random(cfg.seed)
        # Local disks need few reader threads; object stores answer each read with tens of ms of latency,
        # so remote inputs get one reader per request in flight.
        remote = source.remote or isinstance(source.root, str)
        readers = cfg.concurrency if remote else min(4, cfg.concurrency)
        self.io = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="score-read")

    def _row(self, item: InputItem, **kw: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "input": item.path,
            "ordinal": item.ordinal,
            "status": "error",
            "error": None,
            "labels": [],
            "ids": [],
            "probs": [],
            "latency_ms": None,
            "endpoint": None,
            "attempt": 0,
        }
        row.update(kw)
        return row

    async def read(self, item: InputItem) -> np.ndarray | str:
        """The item's bytes, or the reason it cannot be scored."""
        loop = asyncio.get_running_loop()
        # File reads run in threads so a slow disk never stalls the requests in flight.
        target = self.source.resolve(item)
        if isinstance(target, str):  # a URL: read through fsspec, retried like a request
            return await loop.run_in_executor(
                self.io,
                lambda: read_url(
                    target, self.cfg.max_bytes, retries=self.cfg.max_retries, backoff=self.cfg.backoff
                ),
            )
        return await loop.run_in_executor(self.io, read_video, target, self.cfg.max_bytes)

    async def with_retries(
        self,
        request: Callable[[Endpoint], Awaitable[Any]],
        labels_for: Callable[[Endpoint], Awaitable[None]] | None = None,
    ) -> Attempted:
        """Run ``request`` on an endpoint of the pool until it answers, retrying transient failures
        elsewhere with backoff; then ``labels_for`` (label names still unknown) on the same endpoint.
        A permanent failure or the last transient one after ``--max-retries`` comes back in ``error``;
        only :class:`AllEndpointsDown` is raised."""
        last: Endpoint | None = None
        reason = ""
        for attempt in range(1, self.cfg.max_retries + 2):
            ep = await self.pool.acquire(avoid=last)
            last = ep
            try:
                value = await request(ep)
            except asyncio.CancelledError:
                self.pool.release(ep, ok=True)
                raise
            except Exception as exc:
                f = triage(exc)
                if not f.transient:
                    self.pool.release(ep, ok=True)  # the server answered: it is healthy
                    return Attempted(endpoint=ep.url, attempt=attempt, error=f.reason)
                self.pool.release(ep, ok=False, down=f.endpoint_down, error=f.reason)
                reason = f.reason
                if attempt <= self.cfg.max_retries:
                    await asyncio.sleep(self.cfg.backoff.delay(attempt, self.rng))
                continue
            self.pool.release(ep, ok=True)
            if labels_for is not None:
                try:
                    await labels_for(ep)
                except Exception as exc:  # a label lookup that fails is retried by the next attempt
                    reason = triage(exc).reason
                    if attempt <= self.cfg.max_retries:
                        await asyncio.sleep(self.cfg.backoff.delay(attempt, self.rng))
                    continue
            return Attempted(value=value, endpoint=ep.url, attempt=attempt)
        return Attempted(
            endpoint=last.url if last else None,
            attempt=self.cfg.max_retries + 1,
            error=f"gave up after {self.cfg.max_retries + 1} attempts: {reason}",
        )

    async def score(self, item: InputItem) -> dict[str, Any]:
        """One row for ``item``; raises only :class:`AllEndpointsDown`."""
        data = await self.read(item)
        if isinstance(data, str):
            return self._row(item, error=data)

        async def infer(ep: Endpoint) -> tuple[np.ndarray, float]:
            t0 = time.perf_counter()
            result = await asyncio.wait_for(
                _infer(self.pool.protocol, ep.client, self.pool.model, data, self.info),
                timeout=self.cfg.timeout_s,
            )
            probs = result.as_numpy(PROBS)  # (num_classes,) or (1, num_classes)
            if probs is None:
                raise RuntimeError(f"response without {PROBS}")
            return probs, (time.perf_counter() - t0) * 1e3

        async def labels_for(ep: Endpoint) -> None:
            await self.info.ensure_labels(self.pool, ep, data, self.cfg.timeout_s)

        got = await self.with_retries(infer, labels_for if self.info.labels is None else None)
        if got.error:
            return self._row(item, error=got.error, endpoint=got.endpoint, attempt=got.attempt)
        probs, latency_ms = got.value
        ids, values = top_k(probs, self.cfg.top_k)
        labels = self.info.labels or []
        return self._row(
            item,
            status="ok",
            labels=[labels[i] for i in ids],
            ids=ids,
            probs=values,
            latency_ms=round(latency_ms, 3),
            endpoint=got.endpoint,
            attempt=got.attempt,
        )


# --- the run ------------------------------------------------------------------------------------------


def _lock(path: Path) -> int:
    """An exclusive lock on the output (released by the OS when this process dies, even by SIGKILL), so
    two scorers never append to one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise ScoreError(f"{path} is being written by another scorer (locked)") from exc
    return fd


def prepare(
    cfg: ScoreConfig, log: Callable[[str], None]
) -> tuple[InputSource | ShardedSource, ResultSink, DoneSet, int | None]:
    """Open the input and output; on resume, rebuild the done set from the output and check it against
    the input (a shard's output against its own slice). Raises :class:`ScoreError` (or a ValueError
    subclass) for anything unusable."""
    source: InputSource | ShardedSource = InputSource(cfg.input, root=cfg.root)
    if cfg.shard is not None:
        source = ShardedSource(source, cfg.shard)
    sink = ResultSink(cfg.out, timeline=cfg.timeline)
    done = DoneSet()
    if sink.has_rows() and not cfg.resume:
        raise ScoreError(
            f"{cfg.out} already holds results: pass --resume to continue it, or choose a new --out"
        )
    total: int | None
    if cfg.resume and sink.has_rows():
        groups = GroupReader(cfg.out) if cfg.timeline else None
        for row in sink.existing():
            if ("window_index" in row) != cfg.timeline:
                written = "with" if "window_index" in row else "without"
                raise ScoreError(
                    f"{cfg.out} was written {written} --timeline: resume it the same way, or use a new --out"
                )
            key: tuple[int, str] | None = (row["ordinal"], row["input"])
            if groups is not None:  # an input is done only once its window group is complete
                key = groups.add(row, sink.log.row_offset)
            if key is None:
                continue
            if cfg.shard is not None:
                cfg.shard.check_row(key[0], key[1], cfg.out)
            done.add(*key)
        if sink.log.repaired_bytes:
            dropped = sink.log.repaired_bytes
            log(f"score: repaired a torn last line in {sink.log.path} ({dropped} bytes dropped)")
        if groups is not None and groups.incomplete is not None:
            offset, rows = groups.incomplete
            dropped = sink.cut(offset)
            sink.log.repaired_bytes += dropped  # the summary counts every byte a resume dropped
            log(
                f"score: dropped an incomplete window group at the end of {sink.log.path} "
                f"({rows} rows, {dropped} bytes); its input is scored again"
            )
        # One pass over the input both checks it against the output and gives the progress total.
        total = verify_input(done, iter(source), output=cfg.out)
    else:
        total = source.count()
    return source, sink, done, total


async def connect(
    cfg: ScoreConfig, log: Callable[[str], None]
) -> tuple[EndpointPool, ModelInfo, ModelInfo | None]:
    """Phase 2: the endpoint pool, started, and what the model tells about itself (input layout, classes).
    Raises :class:`AllEndpointsDown` when no endpoint answers, :class:`ScoreError` for a wrong model.
    With ``--timeline`` also the classifier ensemble's, whose classification extension names the classes
    (``None`` when the server has no such ensemble with the same class count)."""
    assert cfg.model is not None
    pool = EndpointPool(
        cfg.urls,
        protocol=cfg.protocol,
        model=cfg.model,
        balance=cfg.balance,
        down_limit_s=cfg.down_limit_s,
        log=lambda m: log(f"score: {m}"),
    )
    await pool.start()
    label_info: ModelInfo | None = None
    try:
        ep = await pool.acquire()
        try:
            info = await ModelInfo.fetch(ep.client, cfg.model)
        except ScoreError:
            raise
        except Exception as exc:
            raise ScoreError(f"cannot read model {cfg.model!r} from {ep.url}: {triage(exc).reason}") from exc
        else:
            if cfg.timeline:
                with contextlib.suppress(Exception):  # no ensemble there: rows name classes class_<i>
                    label_info = await ModelInfo.fetch(ep.client, ENSEMBLE)
                if label_info is not None and label_info.num_classes != info.num_classes:
                    label_info = None
        finally:
            pool.release(ep, ok=True)
    except BaseException:
        await pool.close()
        raise
    return pool, info, label_info


async def pump(
    cfg: ScoreConfig,
    source: Any,
    done: DoneSet,
    scorer: Scorer | TimelineScorer,
    sink: ResultSink,
    summary: ScoreSummary,
) -> str:
    """Phase 3: keep ``cfg.concurrency`` inputs in flight, write each finished row, stop cleanly on
    SIGINT/SIGTERM. Returns why it stopped early ("" when every input has a row)."""
    from tqdm import tqdm

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    bar = tqdm(
        total=summary.total,
        initial=done.count,
        unit="video",
        desc="score",
        disable=not cfg.progress,
        dynamic_ncols=True,
        smoothing=0.1,
    )
    pending: set[asyncio.Task[Any]] = set()

    def collect(finished: set[asyncio.Task[Any]]) -> None:
        # Write every finished row before an AllEndpointsDown from a sibling task stops the run.
        down: AllEndpointsDown | None = None
        for task in finished:
            exc = task.exception()
            if exc is not None:
                if not isinstance(exc, AllEndpointsDown):
                    raise exc
                down = exc
                continue
            result = task.result()  # one row, or (--timeline) the video's whole group of rows
            if isinstance(result, list):
                sink.write_group(result)
                row = result[0]
            else:
                sink.write(row := result)
            summary.rows += len(result) if isinstance(result, list) else 1
            if row["status"] == "ok":
                summary.ok += 1
            else:
                summary.errors += 1
            if row["endpoint"]:
                summary.endpoints[row["endpoint"]] = summary.endpoints.get(row["endpoint"], 0) + 1
            bar.update(1)
        if down is not None:
            raise down

    async def flusher() -> None:
        # Rows that arrive slowly (endpoints down, slow server) still reach the disk within ~1 s.
        while True:
            await asyncio.sleep(1.0)
            sink.flush()

    flush_task = loop.create_task(flusher())
    stop_task = loop.create_task(stop.wait())

    async def settle(limit: int) -> None:
        # Collect finished rows until fewer than ``limit`` are in flight, or a stop signal arrives.
        nonlocal pending
        while len(pending) >= limit and not stop.is_set():
            finished, pending = await asyncio.wait(pending | {stop_task}, return_when=asyncio.FIRST_COMPLETED)
            finished.discard(stop_task)
            pending.discard(stop_task)
            collect(finished)

    stopped_by = ""
    try:
        cut_short = False
        for item in source:
            if item.ordinal in done:
                continue
            await settle(cfg.concurrency)
            if stop.is_set():
                cut_short = True
                break
            pending.add(loop.create_task(scorer.score(item)))
        await settle(1)
        if cut_short or pending:
            stopped_by = "interrupted"
    except AllEndpointsDown as exc:
        stopped_by = str(exc)
    finally:
        # Anything still in flight has no row: a resume scores it (never twice: only rows count).
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
        for t in (flush_task, stop_task):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        bar.close()
    return stopped_by


async def run(cfg: ScoreConfig, *, log: Callable[[str], None] | None = None) -> ScoreSummary:
    """Score ``cfg.input`` into ``cfg.out``; see the module doc. Phases: prepare (inputs, output, resume
    ledger) -> connect (endpoints, model) -> pump (requests in flight, rows written) -> close. Raises
    :class:`ScoreError` and other ValueErrors for unusable arguments; stopping early is reported in the
    summary, not raised."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    summary = ScoreSummary(shard=str(cfg.shard) if cfg.shard is not None else "")
    t_start = time.monotonic()
    lock_path = ResultSink(cfg.out, timeline=cfg.timeline).log.path
    lock_fd = _lock(lock_path)
    pool: EndpointPool | None = None
    try:
        source, sink, done, total = prepare(cfg, log)
        summary.total = total
        summary.skipped = done.count
        summary.repaired_bytes = sink.log.repaired_bytes
        if total is not None and done.count >= total:
            if not sink.finished():  # e.g. a crash between the last row and the Parquet conversion
                sink.open()
                sink.close(complete=True)
            summary.complete = True
            return summary
        sink.open()
        try:
            pool, info, label_info = await connect(cfg, log)
        except AllEndpointsDown as exc:
            sink.close(complete=False)
            summary.stopped = str(exc)
            return summary
        scorer = Scorer(cfg, source, pool, info)
        scoring: Scorer | TimelineScorer = scorer
        if cfg.timeline:
            options = TimelineOptions(cfg.window, cfg.stride)
            scoring = TimelineScorer(scorer, options, label_info, label_model=ENSEMBLE)
        sink.log.fsync_executor = scorer.io  # fsync off the event loop (the disk must not stall requests)
        try:
            stopped_by = await pump(cfg, source, done, scoring, sink, summary)
        finally:
            sink.log.fsync_executor = None  # later flushes fsync inline
            scorer.io.shutdown(wait=False)
        summary.stopped = stopped_by
        summary.complete = not stopped_by
        sink.close(complete=summary.complete)
        if summary.total is None and summary.complete:
            summary.total = done.count + summary.scored
        return summary
    finally:
        summary.elapsed_s = time.monotonic() - t_start
        if pool is not None:
            await pool.close()
        os.close(lock_fd)
        with contextlib.suppress(OSError):
            if lock_path.stat().st_size == 0:  # nothing was written: leave no empty file behind
                lock_path.unlink()


# --- CLI ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clients.score",
        description="Score many videos through Triton, exactly one result row per input, resumable.",
    )
    p.add_argument("--input", required=True, help="list file (one path per line), directory, or glob pattern")
    p.add_argument("--out", required=True, help="results file: .jsonl, .csv or .parquet")
    p.add_argument(
        "--url",
        action="append",
        dest="urls",
        metavar="HOST:PORT",
        help="a Triton endpoint (repeat for several; default 127.0.0.1:8001 for grpc, :8000 for http)",
    )
    p.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight across all endpoints")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument(
        "--resume", action="store_true", help="continue an existing output (repairs a torn last line)"
    )
    p.add_argument("--balance", choices=BALANCE_POLICIES, default="least-loaded")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request before it is retried")
    p.add_argument("--max-retries", type=int, default=5, help="retries per video for transient failures")
    p.add_argument(
        "--down-limit",
        type=float,
        default=60.0,
        help="stop (resumable) when every endpoint is down this long",
    )
    p.add_argument(
        "--model",
        default=None,
        help=f"model name on the server (default {ENSEMBLE}; {TIMELINE} with --timeline)",
    )
    p.add_argument("--root", default=None, help="directory that relative paths of a list file are under")
    p.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="larger files become error rows")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (the summary line stays)")
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="score only slice I (0-based) of N into this --out (an Indexed Job: $JOB_COMPLETION_INDEX/N)",
    )
    p.add_argument(
        "--shard-by",
        choices=SHARD_BY,
        default="position",
        help="position: ordinal mod N (exact balance); hash: hash of the path mod N (order-independent)",
    )
    p.add_argument(
        "--timeline",
        action="store_true",
        help=f"one row per window through {TIMELINE} (gRPC only); a video's rows are written as one group",
    )
    p.add_argument(
        "--window", type=float, default=None, help="--timeline: window seconds (default: the model's)"
    )
    p.add_argument(
        "--stride",
        type=float,
        default=None,
        help="--timeline: seconds between window starts (default: the window)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["merge"]:
        from clients.scoring.merge import main as merge_main

        return merge_main(argv[1:])
    args = build_parser().parse_args(argv)
    urls = args.urls or ["127.0.0.1:8001" if args.protocol == "grpc" else "127.0.0.1:8000"]
    try:
        cfg = ScoreConfig(
            input=args.input,
            out=args.out,
            urls=urls,
            protocol=args.protocol,
            concurrency=args.concurrency,
            top_k=args.top_k,
            resume=args.resume,
            balance=args.balance,
            timeout_s=args.timeout,
            max_retries=args.max_retries,
            down_limit_s=args.down_limit,
            model=args.model,
            root=args.root,
            max_bytes=args.max_bytes,
            progress=not args.no_progress,
            shard=Shard.parse(args.shard, args.shard_by) if args.shard is not None else None,
            timeline=args.timeline,
            window=args.window,
            stride=args.stride,
        )
        summary = asyncio.run(run(cfg))
    except (ScoreError, InputError, OutputError, LedgerError, StorageError, ValueError) as exc:
        print(f"score: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"score: error: {exc}", file=sys.stderr)
        return 2
    print(summary.line(args.out), file=sys.stderr)
    return 0 if summary.complete else 1


if __name__ == "__main__":
    sys.exit(main())
