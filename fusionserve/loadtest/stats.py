"""Figures of one load-test run, from per-request records (pure: no I/O, no clocks).

Percentiles use the **nearest-rank** method: the p-th percentile of n sorted values is
the value at rank ``ceil(p/100 * n)`` (1-based; p=0 gives the minimum). It always
returns an observed latency, never an interpolated one, and p100 is the maximum.
Latency percentiles cover successful requests only (a fast 429 is not a fast answer);
failures are counted by type.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

SATURATED_CPU = 0.85  # of one core: above it the generator, not the server, sets the pace
PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class Record:
    """One request: its scheduled, send and finish times (seconds, one monotonic clock).

    In an open loop ``scheduled`` comes from the arrival schedule; in a closed loop it
    equals ``sent``. ``batch_size``/``queue_ms``/``compute_ms`` come from the job's timings.
    """

    scheduled: float
    sent: float
    finished: float
    items: int = 1
    error: str | None = None
    batch_size: int | None = None
    queue_ms: float | None = None
    compute_ms: float | None = None

    @property
    def latency_s(self) -> float:
        return self.finished - self.scheduled


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of values sorted ascending (``p`` in [0, 100])."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 <= p <= 100:
        raise ValueError("p must be in [0, 100]")
    rank = math.ceil(Fraction(str(p)) * len(sorted_values) / 100)  # exact: no 0.07*100 drift
    return sorted_values[max(rank, 1) - 1]


def latency_summary(latencies_s: Iterable[float]) -> dict[str, float | None]:
    """p50/p90/p99/max/mean in milliseconds (all ``None`` when there are none)."""
    values = sorted(x * 1000.0 for x in latencies_s)
    keys = [f"p{p}" for p in PERCENTILES] + ["max", "mean"]
    if not values:
        return dict.fromkeys(keys)
    out: dict[str, float | None] = {f"p{p}": round(percentile(values, p), 3) for p in PERCENTILES}
    out["max"] = round(values[-1], 3)
    out["mean"] = round(sum(values) / len(values), 3)
    return out


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


@dataclass
class RunSummary:
    """Everything reported for one sweep point (``to_dict`` is the JSON form)."""

    label: str
    mode: str
    api: str
    concurrency: int | None
    target_rate: float | None
    items_per_request: int
    wall_s: float
    sent: int
    ok: int
    failed: int
    throughput_rps: float
    throughput_items_ps: float
    offered_rps: float
    latency_ms: dict[str, float | None]
    send_lag_ms: dict[str, float | None]
    errors: dict[str, int] = field(default_factory=dict)
    batch_sizes: dict[int, int] = field(default_factory=dict)
    mean_batch_size: float | None = None
    queue_ms_mean: float | None = None
    compute_ms_mean: float | None = None
    generator_cpu: float = 0.0

    @property
    def generator_saturated(self) -> bool:
        return self.generator_cpu > SATURATED_CPU

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["batch_sizes"] = {str(k): v for k, v in sorted(self.batch_sizes.items())}
        out["generator_saturated"] = self.generator_saturated
        return out


def summarize(
    records: Sequence[Record],
    *,
    label: str,
    mode: str,
    api: str,
    wall_s: float,
    cpu_s: float,
    concurrency: int | None = None,
    target_rate: float | None = None,
    items_per_request: int = 1,
) -> RunSummary:
    """The figures of one run; ``wall_s``/``cpu_s``: its wall time and the generator's CPU."""
    good = [r for r in records if r.error is None]
    timed = [r for r in records if r.batch_size is not None]
    sizes = [r.batch_size for r in timed if r.batch_size is not None]
    wall = max(wall_s, 1e-9)
    lags = sorted((r.sent - r.scheduled) * 1000.0 for r in records)
    return RunSummary(
        label=label,
        mode=mode,
        api=api,
        concurrency=concurrency,
        target_rate=target_rate,
        items_per_request=items_per_request,
        wall_s=round(wall_s, 3),
        sent=len(records),
        ok=len(good),
        failed=len(records) - len(good),
        throughput_rps=round(len(good) / wall, 3),
        throughput_items_ps=round(sum(r.items for r in good) / wall, 3),
        offered_rps=round(len(records) / wall, 3),
        latency_ms=latency_summary(r.latency_s for r in good),
        send_lag_ms={
            "p99": round(percentile(lags, 99), 3) if lags else None,
            "max": round(lags[-1], 3) if lags else None,
        },
        errors=dict(sorted(Counter(r.error for r in records if r.error).items())),
        batch_sizes=dict(sorted(Counter(sizes).items())),
        mean_batch_size=_mean([float(x) for x in sizes]),
        queue_ms_mean=_mean([r.queue_ms for r in timed if r.queue_ms is not None]),
        compute_ms_mean=_mean([r.compute_ms for r in timed if r.compute_ms is not None]),
        generator_cpu=round(cpu_s / wall, 3),
    )


COLUMNS = (
    ("point", 10),
    ("sent", 7),
    ("ok", 7),
    ("err", 5),
    ("req/s", 9),
    ("items/s", 9),
    ("p50 ms", 8),
    ("p90 ms", 8),
    ("p99 ms", 8),
    ("max ms", 8),
    ("batch", 6),
    ("queue ms", 8),
    ("comp ms", 8),
    ("cpu", 5),
)


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(summaries: Sequence[RunSummary]) -> str:
    """The final report: one row per sweep point, then errors and batch sizes per point.

    ``batch``/``queue ms``/``comp ms`` are the server's job timings (``-`` for V2, which
    reports none); ``cpu`` is the generator's CPU as a fraction of one core (``!`` marks
    a saturated generator, whose figures understate the server).
    """
    header = " ".join(f"{name:>{width}}" for name, width in COLUMNS)
    lines = [header, "-" * len(header)]
    notes: list[str] = []
    for s in summaries:
        lat = s.latency_ms
        cpu = f"{s.generator_cpu:.2f}" + ("!" if s.generator_saturated else "")
        cells = [
            s.label,
            s.sent,
            s.ok,
            s.failed,
            _cell(s.throughput_rps),
            _cell(s.throughput_items_ps),
            _cell(lat["p50"], 2),
            _cell(lat["p90"], 2),
            _cell(lat["p99"], 2),
            _cell(lat["max"], 2),
            _cell(s.mean_batch_size),
            _cell(s.queue_ms_mean, 2),
            _cell(s.compute_ms_mean, 2),
            cpu,
        ]
        lines.append(" ".join(f"{_cell(c):>{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True)))
        if s.errors:
            notes.append(
                f"{s.label} errors: " + ", ".join(f"{k} x{v}" for k, v in s.errors.items())
            )
        if s.batch_sizes:
            dist = " ".join(f"{size}:{n}" for size, n in s.batch_sizes.items())
            notes.append(f"{s.label} batch sizes (size:requests): {dist}")
        if s.generator_saturated:
            notes.append(
                f"WARNING {s.label}: the generator used {s.generator_cpu:.0%} of a core; it is "
                "saturated and these figures understate the server"
            )
    return "\n".join(lines + notes)


def report(config: dict[str, Any], summaries: Sequence[RunSummary]) -> dict[str, Any]:
    """The ``--json`` document: the run's settings and every sweep point's figures."""
    return {"loadtest": config, "runs": [s.to_dict() for s in summaries]}
