"""File lists and label lists: one parser for training, evaluation, the demo client and the batch scorer.

File lists (one video per line):

* Kinetics-400 / PaddleVideo: ``class/youtubeid_start_end.mp4 label`` (0-based label; paths may hold
  spaces, the label is the last token).
* UCF-101 as PaddleVideo writes it: ``path/ClassName/v_ClassName_gXX_cYY label`` without extension; pass
  ``suffix=".avi"`` (config: ``data.suffix``).
* UCF-101's own ``trainlist0X.txt`` (``ApplyEyeMakeup/v_..._g08_c01.avi 1``, 1-based classInd id: pass
  ``label_base=1``) and ``testlist0X.txt`` (no label: it is looked up from the class folder in ``labels``).

Label lists: ``id name`` per line -- 0-based (Kinetics ``label.txt``) or UCF-101's 1-based ``classInd.txt``,
which becomes 0-based.

A list line is ``path [label]``: the label is the last token when it is an integer, so paths may hold
spaces (:func:`split_list_line`). Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def split_list_line(line: str) -> tuple[str, int | None]:
    """``"path/to/clip.mp4 3"`` -> ``("path/to/clip.mp4", 3)``; a line without a trailing integer is all path."""
    line = line.strip()
    parts = line.rsplit(maxsplit=1)
    if len(parts) == 2 and parts[1].lstrip("-").isdigit():
        return parts[0], int(parts[1])
    return line, None


class DatasetError(ValueError):
    """A malformed file list or label list; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class VideoEntry:
    """One line of a file list."""

    path: str
    label: int


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path}: no such {what}")
    try:
        return path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the {what} ({exc})") from exc


def read_label_list(path: str | Path) -> list[str]:
    """Class names by 0-based id from ``id name`` lines (0-based, or 1-based like UCF's classInd.txt)."""
    path = Path(path)
    return parse_label_lines(_read_lines(path, "label list"), str(path))


def parse_label_lines(lines: Sequence[str], source: str) -> list[str]:
    """Class names by 0-based id from the ``id name`` lines of a label list named ``source`` (in errors);
    ids run 0..N-1 or 1..N (then rebased to 0), blank lines are skipped."""
    pairs: list[tuple[int, str]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or not parts[0].lstrip("-").isdigit():
            raise DatasetError(f"{source}:{n}: expected 'id name', got {line!r}")
        pairs.append((int(parts[0]), parts[1].strip()))
    if not pairs:
        raise DatasetError(f"{source}: no labels")
    ids = sorted(i for i, _ in pairs)
    base = ids[0]
    if base not in (0, 1) or ids != list(range(base, base + len(ids))):
        raise DatasetError(f"{source}: ids must run 0..N-1 or 1..N without gaps or repeats, got {ids[:5]}...")
    names = [""] * len(pairs)
    for i, name in pairs:
        names[i - base] = name
    return names


def read_file_list(
    path: str | Path,
    *,
    suffix: str = "",
    label_base: int = 0,
    labels: Sequence[str] | None = None,
) -> list[VideoEntry]:
    """Entries of a Kinetics- or UCF-101-style file list (see the module docstring for the formats).

    ``suffix`` is appended to every path (UCF lists without extension); ``label_base`` is subtracted from
    the labels (1 for UCF's 1-based trainlists); lines without a label take the id of their class folder
    in ``labels``.
    """
    path = Path(path)
    index = {name: i for i, name in enumerate(labels)} if labels is not None else None
    entries: list[VideoEntry] = []
    for n, line in enumerate(_read_lines(path, "file list"), 1):
        line = line.strip()
        if not line:
            continue
        rel, given = split_list_line(line)
        if given is not None:
            label = given - label_base
        else:
            cls = Path(rel).parent.name
            if index is None:
                raise DatasetError(f"{path}:{n}: no label on {line!r} (pass labels= to look it up by class)")
            if cls not in index:
                raise DatasetError(f"{path}:{n}: class folder {cls!r} of {line!r} is not in the label list")
            label = index[cls]
        if label < 0 or (labels is not None and label >= len(labels)):
            raise DatasetError(f"{path}:{n}: label {label + label_base} out of range on {line!r}")
        entries.append(VideoEntry(rel + suffix, label))
    if not entries:
        raise DatasetError(f"{path}: empty file list")
    return entries
