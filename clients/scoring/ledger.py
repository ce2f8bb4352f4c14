"""What has been scored already: rebuilt on resume from the output file itself (the output is the ledger).

Memory bound: one bit per ordinal up to the largest ordinal seen (a ``bytearray`` bitmap: 125 kB per
million inputs, 12.5 MB for 100 million), plus a 64-bit order-independent fingerprint of the scored keys.
Paths are never held: to check that a resumed run reads the same input stream, one pass over the input
sums the same fingerprint over the ordinals the output already holds and compares (:func:`verify_input`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

from clients.scoring.inputs import InputItem

_MASK64 = (1 << 64) - 1


class LedgerError(ValueError):
    """The output cannot be resumed against this input (changed input, duplicate rows)."""


def key_hash(ordinal: int, path: str) -> int:
    """A 64-bit hash of one output key ``(ordinal, path)``."""
    data = f"{ordinal}\0{path}".encode("utf-8", errors="surrogateescape")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


class DoneSet:
    """The set of scored ordinals as a growable bitmap, plus the fingerprint of their keys."""

    def __init__(self) -> None:
        self._bits = bytearray()
        self.count = 0
        self.fingerprint = 0  # sum of key_hash over the set, mod 2**64
        self.largest = -1  # the largest ordinal in the set (-1: empty)

    def __contains__(self, ordinal: int) -> bool:
        byte = ordinal >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (ordinal & 7)))

    def add(self, ordinal: int, path: str) -> None:
        """Record ``(ordinal, path)``; a second row for the same ordinal is a :class:`LedgerError`."""
        if ordinal < 0:
            raise LedgerError(f"negative ordinal {ordinal} for {path!r}")
        if ordinal in self:
            raise LedgerError(f"the output holds two rows for input #{ordinal} ({path!r})")
        byte = ordinal >> 3
        if byte >= len(self._bits):
            # Grow geometrically so a stream of increasing ordinals costs amortised O(1).
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))
        self._bits[byte] |= 1 << (ordinal & 7)
        self.count += 1
        self.largest = max(self.largest, ordinal)
        self.fingerprint = (self.fingerprint + key_hash(ordinal, path)) & _MASK64

    @property
    def nbytes(self) -> int:
        """Memory held by the bitmap."""
        return len(self._bits)


def match_input(
    done: DoneSet, items: Iterable[InputItem], on_missing: Callable[[InputItem], None] | None = None
) -> tuple[int, int, int]:
    """Walk the input once against ``done``: returns (items, items with a row, fingerprint of those items'
    keys), calling ``on_missing`` for each item without a row. The fingerprint equals ``done.fingerprint``
    exactly when every row's ordinal still names the same path."""
    total = seen = fp = 0
    for item in items:
        total += 1
        if item.ordinal in done:
            seen += 1
            fp = (fp + key_hash(item.ordinal, item.path)) & _MASK64
        elif on_missing is not None:
            on_missing(item)
    return total, seen, fp


def verify_input(done: DoneSet, items: Iterable[InputItem], *, output: str) -> int:
    """Walk the whole input once: check that every ordinal the output holds still names the same path,
    and return the number of items (the progress bar's total). Raises :class:`LedgerError` otherwise."""
    total, seen, fp = match_input(done, items)
    if seen != done.count:
        raise LedgerError(
            f"{output} holds rows for {done.count - seen} inputs beyond the end of this input "
            f"({total} items): the input changed since that output was written; score it to a new output"
        )
    if fp != done.fingerprint:
        raise LedgerError(
            f"{output} was written from a different input: some ordinals now name other paths "
            "(list edited, or directory/glob contents changed); score it to a new output"
        )
    return total
