"""Latency histograms kept as Redis counters, so every process's observations add up.

Workers add one observation per request to a bucket counter in the model's statistics
hash (``<name>_bucket:<i>``, not cumulative); the metrics endpoint turns them into a
Prometheus histogram. The sums are the ``<name>_ns`` counters already kept there.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds in seconds; one more bucket (index ``len(BUCKETS_S)``) holds +Inf."""


def bucket_field(name: str, seconds: float) -> str:
    return f"{name}_bucket:{bisect.bisect_left(BUCKETS_S, seconds)}"


def cumulative(name: str, counters: Mapping[str, int]) -> list[tuple[str, int]]:
    """``(le, cumulative count)`` pairs as Prometheus wants them, +Inf last."""
    out, total = [], 0
    for i, bound in enumerate((*BUCKETS_S, float("inf"))):
        total += counters.get(f"{name}_bucket:{i}", 0)
        out.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return out


def quantile(name: str, counters: Mapping[str, int], q: float) -> float | None:
    """The ``q`` quantile in seconds from the buckets (interpolated within its bucket)."""
    buckets = cumulative(name, counters)
    total = buckets[-1][1]
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0
    for (bound, count), upper in zip(buckets, (*BUCKETS_S, BUCKETS_S[-1]), strict=True):
        if count >= rank:
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = float(bound) if bound != "+Inf" else lower, count
    return BUCKETS_S[-1]
