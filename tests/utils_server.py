"""Test helpers for anything that needs a generated repository or a running Triton server.

    repo = build_tiny_repository(tmp_path_factory.mktemp("repo"))      # cpu target, tiny seeded model
    with running_server(repo) as server:                                # free ports, stopped on exit
        client = make_client(server.grpc_url, "grpc")

Start one server per test module (module-scoped fixture): start-up and the first request's imports take
a few seconds on two cores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil

from build_engines.build import build_repository
from build_engines.repository import RepositoryOptions
from tests.utils_model import make_tiny_checkpoint
from training.preprocessing.spec import PreprocessSpec
from triton_models.server import TritonServer

TINY_LABELS = ["archery", "bowling", "cartwheel", "dancing", "eating"]


def build_tiny_repository(
    dest: str | Path,
    *,
    target: str = "cpu",
    labels: Sequence[str] = TINY_LABELS,
    num_frames: int = 4,
    img_size: int = 32,
    spec: PreprocessSpec | None = None,
    seed: int = 0,
    options: RepositoryOptions | None = None,
) -> tuple[Path, Path]:
    """Write a tiny seeded checkpoint and build its repository under ``dest``; returns (repo, checkpoint).

    ``options`` default to the target with a long batcher delay (100 ms), so that concurrent test requests
    reliably share a batch.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    ckpt = make_tiny_checkpoint(
        dest / "tiny.pt",
        num_classes=len(labels),
        num_frames=num_frames,
        img_size=img_size,
        labels=list(labels),
        spec=spec,
        seed=seed,
    )
    opts = options or RepositoryOptions(target=target, max_batch_size=4, max_queue_delay_us=100_000)
    repo = dest / "model_repository"
    build_repository(ckpt, repo, opts, log=lambda *_: None)
    return repo, ckpt


@contextlib.contextmanager
def running_server(repository: str | Path, log_file: str | Path | None = None) -> Iterator[TritonServer]:
    """A ready server on free loopback ports; stopped (and reaped) when the block ends, even on failure."""
    server = TritonServer(repository, log_file=log_file)
    server.start(timeout_s=180)
    try:
        yield server
    finally:
        server.stop()


def server_rss_bytes(server: TritonServer) -> int:
    """Resident memory of the server and its python-backend stub processes together."""
    assert server.pid is not None
    proc = psutil.Process(server.pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total
