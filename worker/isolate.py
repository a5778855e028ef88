"""Failure isolation: when the model rejects a batch, bisect it to find the rows at fault.

The batch is split in halves, recursively, first between entries and then within an
entry, until each failing piece is a single row. Only those rows fail, with the
model's own message; every other row gets its result. A batch with k bad rows out of n
costs about 2·k·log2(n) extra runs, and none when nothing fails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from batching.broker import Entry


@dataclass(frozen=True)
class Piece:
    """Rows ``start:stop`` of one entry."""

    entry: Entry
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def inputs(self) -> dict[str, np.ndarray]:
        return {k: v[self.start : self.stop] for k, v in self.entry.inputs.items()}


Outcome = dict[str, np.ndarray] | Exception
RunPieces = Callable[[Sequence[Piece]], list[dict[str, np.ndarray]]]


def bisect(run: RunPieces, pieces: Sequence[Piece]) -> list[tuple[Piece, Outcome]]:
    """Each piece with its outputs, or with the exception of the single row that failed."""
    try:
        return list(zip(pieces, run(pieces), strict=True))
    except Exception as exc:
        if len(pieces) > 1:
            mid = len(pieces) // 2
            return bisect(run, pieces[:mid]) + bisect(run, pieces[mid:])
        [piece] = pieces
        if piece.rows == 1:
            return [(piece, exc)]
        mid = piece.start + piece.rows // 2
        halves = [Piece(piece.entry, piece.start, mid), Piece(piece.entry, mid, piece.stop)]
        return bisect(run, halves[:1]) + bisect(run, halves[1:])


@dataclass
class EntryOutcome:
    outputs: dict[str, np.ndarray] | None
    row_errors: dict[int, str]


def by_entry(results: Sequence[tuple[Piece, Outcome]]) -> dict[str, EntryOutcome]:
    """Reassemble pieces per entry: outputs with failed rows zero-filled, and the errors."""
    grouped: dict[str, list[tuple[Piece, Outcome]]] = {}
    for piece, outcome in results:
        grouped.setdefault(piece.entry.ref, []).append((piece, outcome))
    merged = {}
    for ref, parts in grouped.items():
        parts.sort(key=lambda p: p[0].start)
        good = [o for _, o in parts if not isinstance(o, Exception)]
        errors = {
            row: str(o)
            for p, o in parts
            if isinstance(o, Exception)
            for row in range(p.start, p.stop)
        }
        outputs = None
        if good:
            outputs = {}
            for name, sample in good[0].items():
                blocks = [
                    o[name]
                    if not isinstance(o, Exception)
                    else np.zeros((p.rows, *sample.shape[1:]), sample.dtype)
                    for p, o in parts
                ]
                outputs[name] = np.concatenate(blocks, axis=0)
        merged[ref] = EntryOutcome(outputs, errors)
    return merged
