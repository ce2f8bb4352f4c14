"""Input streams for the scorer: a list file, a directory tree or a glob pattern, read lazily.

Every item gets an *ordinal*: its 0-based position in the stream. ``(ordinal, path)`` is the item's key
in the output, so a path listed twice is scored twice (once per listing) and each listing gets exactly one
row. Nothing here holds more than one directory level's iterator (directories) or one line (list files) in
memory, so a list of millions of paths streams in constant memory.

Ordering: a list file is read in file order. Directories are walked depth-first in ``os.scandir`` order and
globs in ``glob.iglob`` order; both are stable for an unchanged tree, and a resumed run checks that the
stream still maps every scored ordinal to the same path (see :mod:`clients.scoring.ledger`).

Remote inputs (:mod:`clients.scoring.storage`): ``--input`` may be a URL (``s3://``, ``gs://``, ``http(s)://``,
any fsspec scheme) naming a list file (streamed in chunks), a prefix (listed one level at a time, names
sorted) or a glob pattern (sorted); the paths in any list may be URLs too, and ``--root`` may be one.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from clients.scoring import storage
from training.data.lists import split_list_line

# Files a directory walk picks up (lower-case suffixes); a list file or glob takes whatever it names.
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts"}
)


class InputError(ValueError):
    """The input argument names nothing usable (missing list file, unreadable directory...)."""


@dataclass(frozen=True)
class InputItem:
    """One video to score: its key in the output is ``(ordinal, path)``."""

    ordinal: int
    path: str  # as written in the list / produced by the walk; the output's ``input`` column


def _decode_line(raw: bytes) -> str:
    # surrogateescape keeps undecodable bytes in file names round-trippable through the output files.
    return raw.decode("utf-8", errors="surrogateescape")


class InputSource:
    """A re-iterable, lazy stream of :class:`InputItem` from one ``--input`` argument.

    kind: ``list`` (a text file, one path per line, optionally followed by an integer label as in the
    training lists; blank lines and ``#`` comments are skipped and get no
    ordinal), ``dir`` (a directory tree, files with a :data:`VIDEO_EXTENSIONS` suffix) or ``glob``.
    root: where relative paths of a list file are resolved (default: the current directory).
    """

    def __init__(self, spec: str, *, root: str | Path | None = None) -> None:
        if not spec:
            raise InputError("--input is empty")
        self.spec = spec
        # A root may be a URL (``s3://bucket/videos``): relative list entries are then objects under it.
        self.root: Path | str | None = None
        if root is not None:
            self.root = str(root) if storage.is_url(str(root)) else Path(root)
        self.remote = storage.is_url(spec)  # the input itself lives in an object store or behind HTTP
        if self.remote:
            self.kind = self._remote_kind(spec)
            return
        p = Path(spec)
        if p.is_dir():
            self.kind = "dir"
        elif p.is_file():
            self.kind = "list"
        elif glob.has_magic(spec):
            self.kind = "glob"
        else:
            raise InputError(f"--input {spec!r}: no such list file, directory or glob pattern")
        if self.kind == "list":
            try:
                with open(p, "rb") as f:
                    f.read(1)
            except OSError as exc:
                raise InputError(f"--input {spec!r}: cannot read list file ({exc.strerror})") from exc

    @staticmethod
    def _remote_kind(spec: str) -> str:
        try:
            return storage.kind(spec)
        except Exception as exc:
            reason = storage.classify_storage(exc).reason
            raise InputError(
                f"--input {spec!r}: no such list file, prefix or glob pattern ({reason})"
            ) from exc

    def resolve(self, item: InputItem) -> Path | str:
        """What to open for ``item``: a local path (list entries may be relative to ``root``) or a URL."""
        if storage.is_url(item.path):
            return item.path
        p = Path(item.path)
        if self.kind == "list" and self.root is not None and not p.is_absolute():
            if isinstance(self.root, str):
                return storage.join(self.root, item.path)
            return self.root / p
        return p

    def __iter__(self) -> Iterator[InputItem]:
        if self.kind == "list":
            paths = self._iter_list()
        elif self.remote:
            found = storage.walk(self.spec) if self.kind == "dir" else storage.glob(self.spec)
            paths = (u for u in found if self.kind == "glob" or _is_video(u))
        elif self.kind == "dir":
            paths = _walk(self.spec)
        else:
            paths = (p for p in glob.iglob(self.spec, recursive=True) if not os.path.isdir(p))
        for ordinal, path in enumerate(paths):
            yield InputItem(ordinal, path)

    def _iter_list(self) -> Iterator[str]:
        for raw in self._raw_lines():
            line = _decode_line(raw.rstrip(b"\r\n"))
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            path, label = split_list_line(line)
            yield line if label is None else path  # a labelled list's trailing label is not the path

    def _raw_lines(self) -> Iterator[bytes]:
        if self.remote:
            yield from storage.iter_lines(self.spec)
            return
        with open(self.spec, "rb") as f:  # binary + manual decode: one line in memory at a time
            yield from f

    def count(self) -> int | None:
        """Number of items for a list file (one cheap pass), ``None`` for directories and globs, whose
        size is unknown until walked."""
        if self.kind != "list":
            return None
        return sum(1 for _ in self._iter_list())


def _is_video(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def _walk(top: str) -> Iterator[str]:
    """Depth-first walk yielding video files; holds one open ``scandir`` per directory level."""
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue  # vanished or unreadable sub-directory: nothing to score there
        with it:
            subdirs = []
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.path)
                    elif os.path.splitext(entry.name)[1].lower() in VIDEO_EXTENSIONS:
                        yield entry.path
                except OSError:
                    continue
        # Sub-directories of one level are kept (names only) so the walk order stays depth-first and stable.
        stack.extend(reversed(subdirs))
