"""Append-only result files that survive a crash with at most a torn last line.

Formats, chosen by the output's suffix:

- ``.jsonl``: one JSON object per line (ASCII-escaped, so a line never contains a raw newline).
- ``.csv``: a header line, then one row per line; list columns hold JSON arrays; newlines, carriage
  returns and backslashes inside values are escaped as ``\\n``, ``\\r`` and ``\\\\`` so that a physical
  line is always exactly one record.
- ``.parquet``: Parquet cannot be appended to safely, so rows go to an append-only JSONL journal next to
  it (``<out>.journal.jsonl``); when every input has a row the journal is converted to Parquet through a
  temp file + rename (atomic) and removed. A resume reads the journal (or the finished Parquet file).

``--timeline`` outputs have four more columns (:data:`TIMELINE_FIELDS`) and one row per window; a video's
rows are written together (:meth:`ResultSink.write_group`), so a crash can cut only the last group, which
a resume truncates away (:mod:`clients.scoring.groups`).

Rows are buffered, written and flushed to the OS at least every ``flush_s`` seconds or ``flush_rows``
rows, and fsync'd at each flush, so a crash of the scorer (even SIGKILL) loses only rows still in the
buffer -- which a resume scores again -- and a power loss leaves at most one torn last line, which
:meth:`RowLog.recover` truncates away.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

# Output columns, in order (CSV header, Parquet schema).
FIELDS = (
    "input",
    "ordinal",
    "status",
    "error",
    "labels",
    "ids",
    "probs",
    "latency_ms",
    "endpoint",
    "attempt",
)
# Extra columns of a ``--timeline`` output (one row per window of a video).
TIMELINE_FIELDS = ("window_index", "windows", "window_start", "window_end")
_LIST_FIELDS = ("labels", "ids", "probs")
FORMATS = (".jsonl", ".csv", ".parquet")
JOURNAL_SUFFIX = ".journal.jsonl"


class OutputError(ValueError):
    """An output file that cannot be written or resumed (bad suffix, corrupt middle, foreign header)."""


def _check_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise OutputError(f"{where}: not a row object")
    missing = [k for k in ("input", "ordinal", "status") if k not in row]
    if missing:
        raise OutputError(f"{where}: row lacks {missing}")
    if not isinstance(row["ordinal"], int) or not isinstance(row["input"], str):
        raise OutputError(f"{where}: row has a malformed input/ordinal")
    return row


# --- line codecs -------------------------------------------------------------------------------------


class JsonlCodec:
    """One JSON object per line."""

    header: str | None = None

    @staticmethod
    def encode(row: dict[str, Any]) -> str:
        # ensure_ascii: any odd character (newline, surrogate-escaped byte) becomes a \u escape.
        return json.dumps(row, ensure_ascii=True, separators=(",", ":")) + "\n"

    @staticmethod
    def decode(line: str, where: str) -> dict[str, Any]:
        try:
            return _check_row(json.loads(line), where)
        except json.JSONDecodeError as exc:
            raise OutputError(f"{where}: not a JSON line ({exc.msg})") from exc


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _unescape(s: str) -> str:
    out = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            out.append({"n": "\n", "r": "\r", "\\": "\\"}.get(nxt, "\\" + nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


class CsvCodec:
    """RFC-4180 quoting, one record per physical line (newlines escaped, see module doc)."""

    fields: tuple[str, ...] = FIELDS
    header: str | None = ",".join(FIELDS) + "\n"

    @classmethod
    def encode(cls, row: dict[str, Any]) -> str:
        cells = []
        for k in cls.fields:
            v = row.get(k)
            if k in _LIST_FIELDS:
                v = json.dumps(v if v is not None else [], ensure_ascii=True, separators=(",", ":"))
            elif v is None:
                v = ""
            cells.append(_escape(str(v)))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(cells)
        return buf.getvalue()

    @classmethod
    def decode(cls, line: str, where: str) -> dict[str, Any]:
        try:
            cells = next(csv.reader([line]))
        except (csv.Error, StopIteration) as exc:
            raise OutputError(f"{where}: not a CSV record ({exc})") from exc
        if len(cells) != len(cls.fields):
            raise OutputError(f"{where}: {len(cells)} CSV fields, expected {len(cls.fields)}")
        raw = dict(zip(cls.fields, (_unescape(c) for c in cells)))
        try:
            row: dict[str, Any] = {
                "input": raw["input"],
                "ordinal": int(raw["ordinal"]),
                "status": raw["status"],
                "error": raw["error"] or None,
                "labels": json.loads(raw["labels"]),
                "ids": json.loads(raw["ids"]),
                "probs": json.loads(raw["probs"]),
                "latency_ms": float(raw["latency_ms"]) if raw["latency_ms"] else None,
                "endpoint": raw["endpoint"] or None,
                "attempt": int(raw["attempt"]) if raw["attempt"] else None,
            }
            if "window_index" in raw:
                row["window_index"] = int(raw["window_index"])
                row["windows"] = int(raw["windows"])
                row["window_start"] = float(raw["window_start"]) if raw["window_start"] else None
                row["window_end"] = float(raw["window_end"]) if raw["window_end"] else None
        except ValueError as exc:
            raise OutputError(f"{where}: malformed CSV values ({exc})") from exc
        return _check_row(row, where)


class TimelineCsvCodec(CsvCodec):
    """The CSV codec of a ``--timeline`` output: the same columns plus :data:`TIMELINE_FIELDS`."""

    fields = FIELDS + TIMELINE_FIELDS
    header = ",".join(FIELDS + TIMELINE_FIELDS) + "\n"


# --- the append-only log -----------------------------------------------------------------------------


class RowLog:
    """An append-only, line-per-record file (JSONL or CSV) with crash repair.

    Use: ``log = RowLog(path, codec)``; ``for row in log.recover(): ...`` (resume: yields every complete
    record and truncates a torn tail); ``log.open()``; ``log.write(row)`` ...; ``log.close()``.
    """

    def __init__(
        self,
        path: str | Path,
        codec: type[JsonlCodec] | type[CsvCodec],
        *,
        flush_rows: int = 256,
        flush_s: float = 0.5,
    ) -> None:
        self.path = Path(path)
        self.codec = codec
        self.flush_rows = max(1, flush_rows)
        self.flush_s = flush_s
        self._f: io.TextIOWrapper | None = None
        self._pending = 0
        self._last_flush = time.monotonic()
        self.fsync_executor: Executor | None = None
        self._fsync_future: Future[None] | None = None
        self.repaired_bytes = 0  # bytes dropped from a torn tail by the last recover()
        self.row_offset = 0  # during recover(): the byte offset where the row just yielded starts

    def recover(self) -> Iterator[dict[str, Any]]:
        """Yield every complete record; truncate a torn last line (no newline, or an unparseable last
        line). A bad record *followed by* good ones is corruption, not a crash: :class:`OutputError`."""
        if not self.path.exists():
            return
        good_end = 0  # byte offset just past the last good record
        bad: OutputError | None = None
        with open(self.path, "rb") as f:
            lineno = 0
            for raw in f:
                lineno += 1
                where = f"{self.path}:{lineno}"
                if bad is not None:
                    raise OutputError(f"{bad} -- and records follow it, so this is not a torn last line")
                if not raw.endswith(b"\n"):
                    break  # torn tail
                text = raw.decode("utf-8", errors="surrogateescape").rstrip("\n")
                if lineno == 1 and self.codec.header is not None:
                    if text + "\n" != self.codec.header:
                        raise OutputError(f"{where}: header {text!r} is not this scorer's CSV header")
                    good_end = f.tell()
                    continue
                try:
                    row = self.codec.decode(text, where)
                except OutputError as exc:
                    bad = exc
                    continue
                self.row_offset = good_end
                good_end = f.tell()
                yield row
        size = self.path.stat().st_size
        if size > good_end:
            # Torn tail: cut back to the last complete record so appends start on a fresh line.
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
            self.repaired_bytes = size - good_end

    def cut(self, offset: int) -> int:
        """Truncate the (closed) file to ``offset`` bytes, durably; returns the bytes dropped. Used by a
        resume to drop a window group that a crash cut short (always the last thing in the file)."""
        assert self._f is None, "cut() only before open()"
        size = self.path.stat().st_size
        if offset >= size:
            return 0
        with open(self.path, "r+b") as f:
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
        return size - offset

    def open(self) -> None:
        """Open for appending (create with header if new)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._f = open(self.path, "a", encoding="utf-8", errors="surrogateescape", newline="")
        if new and self.codec.header is not None:
            self._f.write(self.codec.header)
            self.flush()
        if new:
            _fsync_dir(self.path.parent)

    def write(self, row: dict[str, Any]) -> None:
        """Buffer one row; flush+fsync when the batch is full or old enough."""
        assert self._f is not None, "RowLog.open() first"
        self._f.write(self.codec.encode(row))
        self._pending += 1
        self._maybe_flush()

    def write_many(self, rows: list[dict[str, Any]]) -> None:
        """Buffer several rows as one write (a video's window group), then flush as :meth:`write` does."""
        assert self._f is not None, "RowLog.open() first"
        self._f.write("".join(self.codec.encode(r) for r in rows))
        self._pending += len(rows)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self._pending >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        """Hand buffered rows to the OS (a killed process loses nothing after this) and fsync them (nor
        does a power loss). With a ``fsync_executor`` the fsync runs there, so the caller's event loop
        is not blocked for the disk's latency; one fsync at a time, the next flush covers the rest."""
        if self._f is None:
            return
        self._f.flush()
        if self.fsync_executor is None:
            os.fsync(self._f.fileno())
        elif self._fsync_future is None or self._fsync_future.done():
            self._fsync_future = self.fsync_executor.submit(os.fsync, self._f.fileno())
        self._pending = 0
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush, fsync (in this thread, after any background one) and close."""
        if self._f is not None:
            self._f.flush()
            if self._fsync_future is not None:
                self._fsync_future.result()
                self._fsync_future = None
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None


def _fsync_dir(d: Path) -> None:
    # Makes a create/rename durable; some filesystems refuse to open directories: best effort.
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- format front-end ---------------------------------------------------------------------------------


def output_format(path: str | Path) -> str:
    """The format suffix of ``path`` (one of :data:`FORMATS`), or :class:`OutputError`."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise OutputError(f"--out {str(path)!r}: unknown format {suffix or '(no suffix)'!r}; use {FORMATS}")
    return suffix


class ResultSink:
    """The scorer's output, whatever the format: ``existing()`` rows (resume), ``open``, ``write``,
    ``close(complete=...)``."""

    def __init__(
        self, path: str | Path, *, flush_rows: int = 256, flush_s: float = 0.5, timeline: bool = False
    ) -> None:
        self.path = Path(path)
        self.format = output_format(path)
        self.timeline = timeline  # one row per window, with TIMELINE_FIELDS
        self.fields = FIELDS + TIMELINE_FIELDS if timeline else FIELDS
        if self.format == ".parquet":
            self.log = RowLog(self.journal_path, JsonlCodec, flush_rows=flush_rows, flush_s=flush_s)
        else:
            csv_codec = TimelineCsvCodec if timeline else CsvCodec
            codec = csv_codec if self.format == ".csv" else JsonlCodec
            self.log = RowLog(self.path, codec, flush_rows=flush_rows, flush_s=flush_s)

    @property
    def journal_path(self) -> Path:
        return self.path.with_name(self.path.name + JOURNAL_SUFFIX)

    def has_rows(self) -> bool:
        """Whether a previous run left anything here (then only ``--resume`` may continue it)."""
        paths = [self.log.path] + ([self.path] if self.format == ".parquet" else [])
        return any(p.exists() and p.stat().st_size > 0 for p in paths)

    def _finished_parquet(self) -> bool:
        # A finished Parquet output has no journal left (or only the empty file a lock created).
        journal_empty = not self.log.path.exists() or self.log.path.stat().st_size == 0
        return self.format == ".parquet" and self.path.exists() and journal_empty

    def finished(self) -> bool:
        """Whether nothing is left to finalise (a JSONL/CSV file always; Parquet once converted)."""
        return self.format != ".parquet" or self._finished_parquet()

    def existing(self) -> Iterator[dict[str, Any]]:
        """Rows already written (torn tail repaired; consume the whole iterator). Reads only: a finished
        Parquet file is read as it is."""
        if self._finished_parquet():
            yield from _read_parquet(self.path)
        else:
            yield from self.log.recover()

    def open(self) -> None:
        """Open for appending. A finished Parquet output is first turned back into a journal (streamed)."""
        if self._finished_parquet():
            _parquet_to_journal(self.path, self.log.path)
        self.log.open()

    def write(self, row: dict[str, Any]) -> None:
        self.log.write(row)

    def write_group(self, rows: list[dict[str, Any]]) -> None:
        """All rows of one input in one write, so that they reach the file contiguously."""
        self.log.write_many(rows)

    def cut(self, offset: int) -> int:
        """Drop everything from byte ``offset`` of the row log on (see :meth:`RowLog.cut`)."""
        if self._finished_parquet():
            raise OutputError(f"{self.path}: a finished Parquet output cannot be cut")
        return self.log.cut(offset)

    def flush(self) -> None:
        self.log.flush()

    def close(self, *, complete: bool) -> None:
        """Flush and close; when ``complete`` (every input has a row) a Parquet output is produced."""
        self.log.close()
        if complete and self.format == ".parquet":
            journal_to_parquet(self.log.path, self.path, fields=self.fields)
            self.log.path.unlink()
            _fsync_dir(self.path.parent)


def _arrow_schema(fields: tuple[str, ...] = FIELDS) -> Any:
    import pyarrow as pa

    extra = [
        ("window_index", pa.int64()),
        ("windows", pa.int64()),
        ("window_start", pa.float64()),
        ("window_end", pa.float64()),
    ]
    return pa.schema(
        [
            ("input", pa.string()),
            ("ordinal", pa.int64()),
            ("status", pa.string()),
            ("error", pa.string()),
            ("labels", pa.list_(pa.string())),
            ("ids", pa.list_(pa.int64())),
            ("probs", pa.list_(pa.float64())),
            ("latency_ms", pa.float64()),
            ("endpoint", pa.string()),
            ("attempt", pa.int64()),
        ]
        + (extra if "window_index" in fields else [])
    )


def journal_to_parquet(
    journal: Path, out: Path, *, chunk_rows: int = 50_000, fields: tuple[str, ...] = FIELDS
) -> None:
    """Convert a JSONL journal to Parquet in chunks (bounded memory), atomically (temp + rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema(fields)
    tmp = out.with_name(f".{out.name}.tmp")

    def batches() -> Iterator[pa.RecordBatch]:
        rows: list[dict[str, Any]] = []
        for row in RowLog(journal, JsonlCodec).recover():
            # Surrogate-escaped bytes are not valid UTF-8 for Arrow; keep them visible instead.
            rows.append({k: _arrow_safe(row.get(k)) for k in fields})
            if len(rows) >= chunk_rows:
                yield pa.RecordBatch.from_pylist(rows, schema=schema)
                rows = []
        if rows:
            yield pa.RecordBatch.from_pylist(rows, schema=schema)

    try:
        with pq.ParquetWriter(tmp, schema) as w:
            for b in batches():
                w.write_batch(b)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _arrow_safe(v: Any) -> Any:
    if isinstance(v, str):
        return v.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    if isinstance(v, list):
        return [_arrow_safe(x) for x in v]
    return v


def _read_parquet(parquet: Path) -> Iterator[dict[str, Any]]:
    """Rows of a finished Parquet output, streamed by batch (bounded memory)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(parquet)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for truncated or foreign files
        raise OutputError(f"{parquet}: not a readable Parquet file ({exc})") from exc
    names = pf.schema_arrow.names
    missing = [c for c in FIELDS if c not in names]
    if missing:
        raise OutputError(f"{parquet}: not a scorer output (columns {missing} missing)")
    # A --timeline output's window columns are kept (and only then present in the rows).
    fields = FIELDS + TIMELINE_FIELDS if all(c in names for c in TIMELINE_FIELDS) else FIELDS
    for batch in pf.iter_batches(batch_size=50_000):
        for i, row in enumerate(batch.to_pylist()):
            yield _check_row({k: row.get(k) for k in fields}, f"{parquet}: row {i}")


def _parquet_to_journal(parquet: Path, journal: Path) -> None:
    """Re-create the journal from a finished Parquet output, atomically."""
    tmp = journal.with_name(f".{journal.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in _read_parquet(parquet):
            f.write(JsonlCodec.encode(row))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, journal)
