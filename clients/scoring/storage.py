"""Inputs that live in object stores or behind HTTP: ``s3://``, ``gs://``, ``http(s)://``, ``memory://``...

Anything with a URL scheme goes through `fsspec <https://filesystem-spec.readthedocs.io>`_, which ships the
HTTP, in-memory and local backends; ``s3://`` needs the optional package ``s3fs`` and ``gs://`` ``gcsfs``
(``pip install s3fs`` / ``gcsfs``; credentials come from the usual environment variables or workload
identity). Local paths never come here: they keep the plain file reads of :mod:`clients.score`.

Memory: a video is read in chunks up to ``--max-bytes`` (+1 byte to tell a too-large file without reading
it all; the size is checked first where the store reports it); a list file is streamed in 1 MiB chunks.

Failures are sorted like requests to the server (:mod:`clients.scoring.retry`): a missing object or a
refused permission is *permanent* (the video gets an error row naming it); a dropped connection, a timeout,
HTTP 408/429/5xx are *transient* and retried after the same capped exponential backoff with jitter. A list
file that fails mid-stream is re-opened at the byte where it stopped.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np

from clients.scoring.retry import Backoff, Failure

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
# Which optional package provides a scheme, for the message when it is missing.
_BACKEND_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs"}
CHUNK_BYTES = 1 << 20
T = TypeVar("T")


class StorageError(ValueError):
    """A URL that cannot be used at all (unknown scheme, backend package not installed)."""


def is_url(path: str) -> bool:
    """Whether ``path`` names something through a URL scheme (``s3://b/k``) rather than a local path."""
    return _SCHEME.match(path) is not None


def join(root: str, relative: str) -> str:
    """``root`` URL + a relative path from a list file (``s3://b/videos`` + ``a/x.mp4``)."""
    return root.rstrip("/") + "/" + relative.lstrip("/")


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path inside it."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        scheme = url.split("://", 1)[0].lower()
        pkg = _BACKEND_PACKAGES.get(scheme, f"the fsspec backend for {scheme}://")
        raise StorageError(f"{url!r}: reading {scheme}:// needs the optional package {pkg} ({exc})") from exc
    except ValueError as exc:  # fsspec: "Protocol not known"
        raise StorageError(f"{url!r}: {exc}") from exc


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def classify_storage(exc: BaseException) -> Failure:
    """Transient (retry) or permanent (error row) for a failure reading an object; see the module doc.

    The whole exception chain is read because fsspec's HTTP backend turns *any* failed size lookup into a
    ``FileNotFoundError`` raised from the real cause (a 503 is not a missing file)."""
    import asyncio

    for e in _chain(exc):
        status = getattr(e, "status", None) or getattr(e, "code", None)
        if isinstance(status, int) and 400 <= status < 600:
            reason = f"HTTP {status}: {getattr(e, 'message', '') or e}"
            if status == 404:
                return Failure(False, False, f"missing file: {reason}")
            if status in (401, 403):
                return Failure(False, False, f"unreadable file: {reason}")
            return Failure(status in (408, 429) or status >= 500, False, reason)
        if isinstance(e, asyncio.TimeoutError | TimeoutError):
            return Failure(True, False, "timeout: the store did not answer in time")
        if isinstance(e, ConnectionError):
            return Failure(True, False, f"connection error: {type(e).__name__}: {e}")
        try:
            import aiohttp

            if isinstance(e, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
                return Failure(True, False, f"connection error: {type(e).__name__}: {e}")
        except ImportError:  # pragma: no cover - aiohttp ships with tritonclient[http]
            pass
    if isinstance(exc, FileNotFoundError):
        return Failure(False, False, f"missing file: no such object {exc}")
    if isinstance(exc, IsADirectoryError):
        return Failure(False, False, "unreadable file: not a regular file")
    if isinstance(exc, PermissionError):
        return Failure(False, False, f"unreadable file: permission denied ({exc})")
    if isinstance(exc, StorageError):
        return Failure(False, False, str(exc))
    if isinstance(exc, OSError):
        # Cloud backends raise plain OSError for throttling and server errors (their own retries spent).
        return Failure(True, False, f"storage error: {type(exc).__name__}: {exc}")
    return Failure(False, False, f"{type(exc).__name__}: {exc}")


def with_retries(
    fn: Callable[[], T],
    *,
    retries: int,
    backoff: Backoff,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, retried after transient failures; the last failure is raised when retries run out."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as exc:
            if attempt > retries or not classify_storage(exc).transient:
                raise
            sleep(backoff.delay(attempt, rng))


def _read_once(url: str, max_bytes: int) -> np.ndarray | str:
    fs, path = filesystem(url)
    info = fs.info(path)
    if info.get("type") == "directory":
        return "unreadable file: not a regular file"
    size = info.get("size")
    if size == 0:
        return "empty file: 0 bytes"
    if size is not None and size > max_bytes:
        return f"too large: {size} bytes > --max-bytes {max_bytes}"
    buf = bytearray()
    with fs.open(path, "rb") as f:
        while len(buf) <= max_bytes:  # never more than max_bytes + 1 in memory, size known or not
            chunk = f.read(min(CHUNK_BYTES, max_bytes + 1 - len(buf)))
            if not chunk:
                break
            buf += chunk
    if len(buf) > max_bytes:
        return f"too large: more than --max-bytes {max_bytes} bytes"
    if not buf:
        return "empty file: 0 bytes"
    return np.frombuffer(buf, dtype=np.uint8)


def read_url(
    url: str,
    max_bytes: int,
    *,
    retries: int = 5,
    backoff: Backoff | None = None,
    rng: random.Random | None = None,
) -> np.ndarray | str:
    """The object's bytes as uint8, or the one-line reason it cannot be scored (for its error row)."""
    backoff = backoff or Backoff()
    try:
        return with_retries(lambda: _read_once(url, max_bytes), retries=retries, backoff=backoff, rng=rng)
    except Exception as exc:
        f = classify_storage(exc)
        if f.transient:
            return f"gave up reading after {retries + 1} attempts: {f.reason}"
        return f.reason


def iter_lines(
    url: str, *, retries: int = 5, backoff: Backoff | None = None, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[bytes]:
    """The lines of a remote text file without their ``\\n``, streamed in chunks; a transient failure
    re-opens the file at the byte where reading stopped (after a backoff), up to ``retries`` in a row."""
    backoff = backoff or Backoff()
    fs, path = filesystem(url)
    offset = 0
    rest = b""
    failures = 0
    f: Any = None
    try:
        while True:
            try:
                if f is None:
                    f = fs.open(path, "rb", block_size=chunk_bytes)  # one chunk buffered, no more
                    if offset:
                        f.seek(offset)
                data = f.read(chunk_bytes)
            except Exception as exc:
                if f is not None:
                    f.close()
                    f = None
                failures += 1
                if failures > retries or not classify_storage(exc).transient:
                    raise
                time.sleep(backoff.delay(failures))
                continue
            failures = 0
            if not data:
                break
            offset += len(data)
            *lines, rest = (rest + data).split(b"\n")
            yield from lines
        if rest:
            yield rest
    finally:
        if f is not None:
            f.close()


def walk(url: str) -> Iterator[str]:
    """Full URLs of the objects under ``url``, one directory level listed at a time, names sorted (object
    stores list in key order anyway; sorting makes every reader see the same order)."""
    fs, path = filesystem(url)
    for _root, dirs, files in fs.walk(path, detail=False):
        dirs.sort()  # fs.walk descends in the order left in ``dirs``
        for name in sorted(files):
            yield fs.unstrip_protocol(f"{_root.rstrip('/')}/{name}")


def glob(url: str) -> Iterator[str]:
    """Full URLs of the files matching a glob pattern (``s3://b/**/*.mp4``), sorted."""
    fs, path = filesystem(url)
    for p in sorted(fs.glob(path)):
        if not fs.isdir(p):
            yield fs.unstrip_protocol(p)


def kind(url: str, *, retries: int = 5, backoff: Backoff | None = None) -> str:
    """``list`` (one object: a list file), ``dir`` (a prefix) or ``glob`` (a pattern) for an ``--input`` URL;
    raises FileNotFoundError when it names nothing."""
    fs, path = filesystem(url)
    if any(c in path for c in "*?["):
        return "glob"

    def probe() -> str:
        # info() rather than isfile()/isdir(), which answer False for a store that failed to answer.
        return "dir" if fs.info(path).get("type") == "directory" else "list"

    return with_retries(probe, retries=retries, backoff=backoff or Backoff())
