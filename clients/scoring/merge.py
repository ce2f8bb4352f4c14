"""Combine the outputs of a sharded scoring run into one file and say whether every input has exactly one row.

    python -m clients.score merge --input videos.txt --out all.jsonl scores-0.jsonl scores-1.jsonl ...

Rows are copied in the order the parts are given (each part in its own order: completion order, as any
scorer output; sort by ``ordinal`` when order matters). A row whose ordinal already has a row is *doubled*:
it is reported and not copied. With ``--input`` (the list the shards scored), ordinals that no part holds are
reported as *missing*, rows beyond the input's end as *extra*, and the rows' ``(ordinal, input)`` keys are
checked against the list (the same 64-bit fingerprint as a resume check), so parts written from another list
are caught. Without it only doubles and gaps below the largest ordinal can be seen.

Parts are only read, never repaired: a torn last line (a shard still running or killed) is skipped and
reported. ``--timeline`` parts (one row per window) are merged by window group: a group counts as one input
(a doubled group is reported once and not copied), and an incomplete trailing group is skipped and reported
like a torn line. Timeline and per-video parts cannot be merged together. Memory: two bits per ordinal,
one window group and the first few examples of each problem.

Exit status: 0 one row per input; 1 something missing, doubled, extra or mismatched (the merged file is still
written, holding each ordinal once); 2 unusable arguments or files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients.scoring.inputs import InputError, InputItem, InputSource
from clients.scoring.ledger import DoneSet, match_input
from clients.scoring.outputs import (
    CsvCodec,
    JsonlCodec,
    OutputError,
    ResultSink,
    TimelineCsvCodec,
    _read_parquet,
    output_format,
)
from clients.scoring.storage import StorageError
from clients.scoring.timeline import GroupReader

EXAMPLES = 10  # problems listed by name; the counts cover all of them


class MergeError(ValueError):
    """A merge that cannot run: no parts, an existing output, an unreadable part."""


@dataclass
class MergeReport:
    """What a merge found. ``ok`` means every input has exactly one row in the merged file."""

    out: str
    parts: list[tuple[str, int]] = field(default_factory=list)  # (part, rows read)
    written: int = 0
    doubled: int = 0
    doubled_examples: list[tuple[int, str]] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)  # parts whose torn last line was skipped
    total: int | None = None  # inputs in --input (None without it)
    missing: int = 0
    missing_examples: list[tuple[int, str]] = field(default_factory=list)
    extra: int = 0  # rows whose ordinal is past the end of --input
    mismatched: bool = False  # rows' keys do not match --input's (ordinal, path)

    @property
    def ok(self) -> bool:
        return not (self.doubled or self.missing or self.extra or self.mismatched or self.torn)

    @property
    def imbalance(self) -> float:
        """Largest relative deviation of a part's row count from the mean (0.0 = perfectly even)."""
        counts = [n for _, n in self.parts]
        mean = sum(counts) / len(counts) if counts else 0.0
        return max(abs(n - mean) for n in counts) / mean if mean else 0.0

    def lines(self) -> list[str]:
        """The report a person reads: per-part counts, then each kind of problem with examples."""
        out = [f"merge: {p}: {n} rows" for p, n in self.parts]
        total = "?" if self.total is None else str(self.total)
        out.append(
            f"merge: {self.written} rows of {total} inputs -> {self.out}; {self.missing} missing, "
            f"{self.doubled} doubled, {self.extra} extra; parts within {100 * self.imbalance:.1f} % of even "
            f"[{'complete' if self.ok else 'INCOMPLETE'}]"
        )
        out += [f"merge: doubled input #{o} ({p!r})" for o, p in self.doubled_examples]
        out += [f"merge: missing input #{o} ({p!r})" for o, p in self.missing_examples]
        out += [f"merge: {p}: torn last line skipped (a shard still running or killed?)" for p in self.torn]
        if self.mismatched:
            out.append("merge: the parts' (ordinal, input) keys differ from --input's (another list?)")
        return out


def read_part(path: str | Path) -> Iterator[dict[str, Any] | None]:
    """The complete rows of one scorer output, read-only (unlike a resume, which also truncates a torn
    tail). Yields ``None`` once, last, when a torn last line was skipped."""
    sink = ResultSink(path)
    if sink.format == ".parquet" and not sink.log.path.exists():
        if not sink.path.exists():
            raise MergeError(f"{path}: no such scorer output")
        yield from _read_parquet(sink.path)
        return
    log_path = sink.log.path
    codec: type[JsonlCodec] | type[CsvCodec] = CsvCodec if sink.format == ".csv" else JsonlCodec
    if not log_path.exists():
        raise MergeError(f"{path}: no such scorer output")
    with open(log_path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            text = raw.decode("utf-8", errors="surrogateescape")
            if lineno == 1 and codec.header is not None:
                codecs = {c.header: c for c in (CsvCodec, TimelineCsvCodec)}
                if text not in codecs:
                    raise OutputError(f"{log_path}:1: not this scorer's CSV header")
                codec = codecs[text]  # a --timeline output has the window columns
                continue
            if not raw.endswith(b"\n"):
                yield None  # the torn-tail marker
                return
            yield codec.decode(text.rstrip("\n"), f"{log_path}:{lineno}")


def _is_timeline(part: str | Path) -> bool:
    """Whether a part holds ``--timeline`` rows (judged by its first row; an empty part: no)."""
    for row in read_part(part):
        return row is not None and "window_index" in row
    return False


def merge(
    parts: Sequence[str | Path], out: str | Path, *, input: str | None = None, root: str | None = None
) -> MergeReport:
    """Write every part's rows into ``out`` (each ordinal once) and report what is missing or doubled."""
    if not parts:
        raise MergeError("merge needs at least one part")
    out_path = Path(out)
    output_format(out_path)
    resolved = {Path(p).resolve() for p in parts}
    if out_path.resolve() in resolved:
        raise MergeError(f"--out {out} is one of the parts")
    timeline = _is_timeline(parts[0])
    sink = ResultSink(out_path, timeline=timeline)
    if sink.has_rows():
        raise MergeError(f"--out {out} already exists: choose a new file")
    report = MergeReport(out=str(out))
    written = DoneSet()
    sink.open()
    try:
        for part in parts:
            n = 0
            groups = GroupReader(str(part)) if timeline else None
            group: list[dict[str, Any]] = []  # the window rows of the group being read (timeline)
            for row in read_part(part):
                if row is None:
                    report.torn.append(str(part))
                    break
                n += 1
                if ("window_index" in row) != timeline:
                    raise MergeError(f"{part}: mixes --timeline and per-video rows with {parts[0]}")
                if groups is not None:
                    group.append(row)
                    if groups.add(row) is None:
                        continue  # the group is not complete yet
                rows, group = (group, []) if groups is not None else ([row], [])
                ordinal, path = row["ordinal"], row["input"]
                if ordinal in written:
                    report.doubled += 1
                    if len(report.doubled_examples) < EXAMPLES:
                        report.doubled_examples.append((ordinal, path))
                    continue
                written.add(ordinal, path)
                sink.write_group(rows)
            else:
                if group:  # a trailing group cut short (a shard still running or killed): not copied
                    report.torn.append(str(part))
            report.parts.append((str(part), n))
        report.written = written.count
        if input is not None:
            _check_against_input(report, written, InputSource(input, root=root))
        else:
            # Without the list only gaps below the largest ordinal are visible.
            for o in range(written.largest + 1):
                if o not in written:
                    report.missing += 1
                    if len(report.missing_examples) < EXAMPLES:
                        report.missing_examples.append((o, "?"))
    finally:
        sink.close(complete=True)
    return report


def _check_against_input(report: MergeReport, written: DoneSet, source: InputSource) -> None:
    def missing(item: InputItem) -> None:
        report.missing += 1
        if len(report.missing_examples) < EXAMPLES:
            report.missing_examples.append((item.ordinal, item.path))

    total, seen, fingerprint = match_input(written, source, missing)
    report.total = total
    report.extra = written.count - seen
    # Compare the fingerprint over the rows that fall inside the input only when none fall outside:
    # ``extra`` already says the parts came from a longer list.
    report.mismatched = report.extra == 0 and fingerprint != written.fingerprint


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m clients.score merge",
        description="Combine shard outputs into one file; report inputs missing or doubled.",
    )
    p.add_argument("parts", nargs="+", metavar="PART", help="the shards' outputs (.jsonl, .csv, .parquet)")
    p.add_argument("--out", required=True, help="the merged file (.jsonl, .csv or .parquet); must not exist")
    p.add_argument("--input", default=None, help="the list the shards scored (to find missing inputs)")
    p.add_argument("--root", default=None, help="as the scorer's --root, for a list of relative paths")
    args = p.parse_args(argv)
    try:
        report = merge(args.parts, args.out, input=args.input, root=args.root)
    except (MergeError, OutputError, InputError, StorageError, ValueError, OSError) as exc:
        print(f"merge: error: {exc}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line, file=sys.stderr)
    return 0 if report.ok else 1
