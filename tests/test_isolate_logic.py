"""Bisection finds exactly the rows a model rejects, on real entries and a stand-in model."""

import numpy as np

from batching import codec
from batching.broker import Entry
from worker.isolate import Piece, bisect, by_entry


def entry(eid: str, values: list[int]) -> Entry:
    x = np.array(values, dtype=np.int64)
    return Entry("m", 2, eid, len(values), 0, 0, codec.pack_tensors({"x": x}))


def test_only_the_bad_rows_fail_and_runs_stay_few() -> None:
    calls = []

    def run(pieces):  # a model that rejects any batch holding a negative value
        calls.append(len(pieces))
        xs = [p.inputs()["x"] for p in pieces]
        if any((x < 0).any() for x in xs):
            raise ValueError("negative input")
        return [{"y": x * 2} for x in xs]

    a, b, c = entry("1-0", [1, 2, -3, 4]), entry("2-0", [5]), entry("3-0", [-6])
    merged = by_entry(bisect(run, [Piece(e, 0, e.rows) for e in (a, b, c)]))
    assert merged[a.ref].row_errors == {2: "negative input"}
    assert merged[a.ref].outputs["y"].tolist() == [2, 4, 0, 8]
    assert merged[b.ref].row_errors == {} and merged[b.ref].outputs["y"].tolist() == [10]
    assert merged[c.ref].outputs is None and merged[c.ref].row_errors == {0: "negative input"}
    assert len(calls) < 16
