"""Inputs through fsspec: a list, a prefix and a glob in fsspec's in-memory filesystem, and a real local HTTP
server (with Range support) that fails on purpose -- 503s, dropped connections, 404s -- to show which
failures are retried and which become error rows, and that reads stay bounded by ``--max-bytes``."""

from __future__ import annotations

import importlib.util
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import numpy as np
import pytest

from clients.score import ScoreConfig, prepare
from clients.scoring import storage
from clients.scoring.inputs import InputError, InputSource
from clients.scoring.retry import Backoff

FAST = Backoff(base_s=0.01, cap_s=0.02)


class Store:
    """What the test HTTP server serves, and the failures it injects (consumed one request at a time)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail_503: dict[str, int] = {}  # path -> how many requests answer 503 first
        # path -> close the connection after this many body bytes of the next GET from an offset (once)
        self.drop_after: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.lock = threading.Lock()


def _handler(store: Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _serve(self, body: bool) -> None:
            with store.lock:
                store.requests.append((self.command, self.path, self.headers.get("Range")))
                if store.fail_503.get(self.path, 0) > 0:
                    store.fail_503[self.path] -= 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = store.files.get(self.path)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = 0, len(data)
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                a, _, b = rng[6:].partition("-")
                start, end = int(a or 0), min(len(data), int(b) + 1 if b else len(data))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            else:
                self.send_response(200)
            drop = None
            if body and start > 0:  # a read past the first chunk dies (once): resuming must not restart
                with store.lock:
                    drop = store.drop_after.pop(self.path, None)
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if not body:
                return
            chunk = data[start:end]
            if drop is not None:  # a connection that dies mid-body
                self.wfile.write(chunk[:drop])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(chunk)

        def do_GET(self) -> None:
            self._serve(True)

        def do_HEAD(self) -> None:
            self._serve(False)

    return Handler


@pytest.fixture(scope="module")
def http() -> Iterator[tuple[str, Store]]:
    store = Store()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(store))
    server.handle_error = lambda *_a: None  # type: ignore[method-assign]  # clients dropping connections
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", store
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mem() -> Iterator[str]:
    root = f"memory://test-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    fs.rm(root.removeprefix("memory:/"), recursive=True)


def test_memory_list_prefix_and_glob(mem: str) -> None:
    fs = fsspec.filesystem("memory")
    base = mem.removeprefix("memory:/")
    for name in ("a/x.mp4", "a/b/y.MP4", "c.webm", "notes.txt"):
        fs.pipe(f"{base}/videos/{name}", name.encode())
    fs.pipe(f"{base}/list.txt", f"{mem}/videos/c.webm\n\n# comment\nrelative/z.mp4\r\n".encode())

    lst = InputSource(f"{mem}/list.txt", root=f"{mem}/videos")
    items = list(lst)
    assert (
        lst.kind == "list"
        and lst.remote
        and [i.path for i in items] == [f"{mem}/videos/c.webm", "relative/z.mp4"]
    )
    assert lst.resolve(items[0]) == f"{mem}/videos/c.webm"
    assert lst.resolve(items[1]) == f"{mem}/videos/relative/z.mp4"  # --root may be a URL
    assert lst.count() == 2

    prefix = InputSource(f"{mem}/videos")
    names = [i.path.rsplit("/videos/", 1)[1] for i in prefix]
    assert prefix.kind == "dir" and sorted(names) == ["a/b/y.MP4", "a/x.mp4", "c.webm"]  # videos only
    assert list(prefix) == list(prefix)  # the same order every time
    g = InputSource(f"{mem}/videos/**/*.mp4")
    assert g.kind == "glob" and [i.path.rsplit("/", 1)[1] for i in g] == ["x.mp4"]
    data = storage.read_url(next(iter(g)).path, 100)
    assert isinstance(data, np.ndarray) and data.tobytes() == b"a/x.mp4"
    with pytest.raises(InputError, match="no such list file, prefix or glob"):
        InputSource(f"{mem}/nothing.txt")


def test_memory_reads_are_bounded_and_bad_objects_are_named(mem: str) -> None:
    fs = fsspec.filesystem("memory")
    base = mem.removeprefix("memory:/")
    fs.pipe(f"{base}/big.mp4", b"x" * 5000)
    fs.pipe(f"{base}/empty.mp4", b"")
    fs.pipe(f"{base}/d/inner.mp4", b"1")
    assert storage.read_url(f"{mem}/big.mp4", 4999) == "too large: 5000 bytes > --max-bytes 4999"
    assert isinstance(storage.read_url(f"{mem}/big.mp4", 5000), np.ndarray)
    assert storage.read_url(f"{mem}/empty.mp4", 10) == "empty file: 0 bytes"
    assert storage.read_url(f"{mem}/missing.mp4", 10).startswith("missing file")
    assert storage.read_url(f"{mem}/d", 10) == "unreadable file: not a regular file"
    with pytest.raises(storage.StorageError, match="nosuchscheme"):
        storage.filesystem("nosuchscheme://b/k.mp4")
    assert storage.read_url("nosuchscheme://b/k.mp4", 10).startswith("'nosuchscheme://b/k.mp4'")  # a row
    if importlib.util.find_spec("s3fs") is None:  # the cloud backends are optional extras
        with pytest.raises(storage.StorageError, match="needs the optional package s3fs"):
            storage.filesystem("s3://bucket/key.mp4")


def test_http_transient_failures_are_retried_permanent_ones_named(http: tuple[str, Store]) -> None:
    url, store = http
    store.files["/v/ok.mp4"] = bytes(range(256)) * 40
    store.fail_503["/v/ok.mp4"] = 3
    data = storage.read_url(f"{url}/v/ok.mp4", 1 << 20, retries=5, backoff=FAST)
    assert isinstance(data, np.ndarray) and data.tobytes() == store.files["/v/ok.mp4"]
    assert store.fail_503["/v/ok.mp4"] == 0  # three 503s were answered, then the read succeeded

    store.files["/v/flaky.mp4"] = b"y" * 100
    store.fail_503["/v/flaky.mp4"] = 50
    reason = storage.read_url(f"{url}/v/flaky.mp4", 1000, retries=2, backoff=FAST)
    assert reason.startswith("gave up reading after 3 attempts") and "503" in reason

    before = len(store.requests)
    assert storage.read_url(f"{url}/v/missing.mp4", 1000, retries=5, backoff=FAST).startswith("missing file")
    assert len(store.requests) - before <= 2  # a 404 is not retried (HEAD, then fsspec's one GET fallback)

    store.files["/v/big.mp4"] = b"z" * 10_000
    before = len(store.requests)
    assert storage.read_url(f"{url}/v/big.mp4", 9_999).startswith("too large")
    assert all(m == "HEAD" for m, _p, _r in store.requests[before:])  # refused from its size alone


def test_http_list_is_streamed_and_resumed_after_a_dropped_connection(http: tuple[str, Store]) -> None:
    url, store = http
    lines = [f"{url}/v/clip_{i:04d}.mp4" for i in range(3000)]
    store.files["/lists/big.txt"] = "".join(x + "\n" for x in lines).encode()
    store.drop_after["/lists/big.txt"] = 5_000
    store.fail_503["/lists/big.txt"] = 1
    got = [
        x.decode() for x in storage.iter_lines(f"{url}/lists/big.txt", backoff=FAST, chunk_bytes=16 * 1024)
    ]
    assert got == lines
    ranges = [r for m, p, r in store.requests if p == "/lists/big.txt" and m == "GET"]
    # Read in ranged requests, never the whole list at once; the one that died was asked again from the
    # offset the reader had reached (behind the failed read-ahead, but not from the start of the file).
    starts = [int(r[6:].split("-")[0]) for r in ranges if r is not None]
    assert (
        len(starts) >= 4
        and max(int(r.split("-")[1]) - int(r[6:].split("-")[0]) for r in ranges if r) < 40_000
    )
    assert starts.count(0) == 1 and any(0 < b < a for a, b in zip(starts, starts[1:]))


def test_a_run_prepared_from_an_http_list(http: tuple[str, Store], tmp_path: Path) -> None:
    url, store = http
    store.files["/lists/three.txt"] = b"a.mp4\nb.mp4\nc.mp4\n"
    cfg = ScoreConfig(input=f"{url}/lists/three.txt", out=str(tmp_path / "o.jsonl"), root=f"{url}/v")
    source, _sink, done, total = prepare(cfg, log=lambda _m: None)
    assert total == 3 and done.count == 0
    assert [source.resolve(i) for i in source] == [f"{url}/v/{n}.mp4" for n in "abc"]
