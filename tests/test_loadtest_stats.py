"""The load generator's pure parts on known inputs: percentiles, schedules, summaries."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fusionserve.loadtest.schedule import Budget, arrival_times
from fusionserve.loadtest.stats import (
    Record,
    format_table,
    latency_summary,
    percentile,
    report,
    summarize,
)


@pytest.mark.parametrize(
    ("p", "expected"), [(0, 15), (5, 15), (30, 20), (40, 20), (50, 35), (100, 50)]
)
def test_nearest_rank_percentiles_of_a_known_list(p: float, expected: float) -> None:
    assert percentile([15, 20, 35, 40, 50], p) == expected


def test_percentiles_of_1_to_100_and_1_to_1000() -> None:
    hundred = list(range(1, 101))
    assert [percentile(hundred, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile(hundred, 7) == 7  # 0.07 * 100 is 7.000000000000001 in floating point
    thousand = list(range(1, 1001))
    assert percentile(thousand, 99.9) == 999
    assert percentile(thousand, 99.95) == 1000
    assert percentile([4.2], 1) == percentile([4.2], 99) == 4.2


def test_percentile_refuses_nothing_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def test_latency_summary_is_in_milliseconds() -> None:
    summary = latency_summary([0.001 * v for v in range(1, 101)])
    assert summary == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0, "mean": 50.5}
    assert latency_summary([]) == dict.fromkeys(("p50", "p90", "p99", "max", "mean"))


def test_the_poisson_schedule_is_reproducible_sorted_and_bounded() -> None:
    a = arrival_times(200.0, duration=5.0, seed=3)
    assert np.array_equal(a, arrival_times(200.0, duration=5.0, seed=3))
    assert not np.array_equal(a, arrival_times(200.0, duration=5.0, seed=4))
    assert np.all(np.diff(a) > 0) and a[0] > 0 and a[-1] < 5.0
    # 1000 arrivals expected; a Poisson count has sd sqrt(1000) ~ 32: 6 sd is a loose bound
    assert abs(a.size - 1000) < 6 * math.sqrt(1000)


def test_the_mean_gap_is_one_over_the_rate() -> None:
    rate, n = 400.0, 40_000
    gaps = np.diff(arrival_times(rate, count=n, seed=11), prepend=0.0)
    assert gaps.size == n
    # exponential gaps: sd of the mean is (1/rate)/sqrt(n), 0.5 % here; allow 5 %
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
    assert gaps.std() == pytest.approx(1 / rate, rel=0.05)  # exponential: sd equals mean


def test_count_and_duration_whichever_ends_first() -> None:
    assert arrival_times(1000.0, duration=10.0, count=50, seed=1).size == 50
    few = arrival_times(10.0, duration=1.0, count=10_000, seed=1)
    assert few.size < 40 and (few < 1.0).all()
    # the chunked draw for long durations gives the same arrivals as one draw would
    long = arrival_times(50.0, duration=100.0, seed=2)
    assert np.array_equal(long[:100], arrival_times(50.0, count=100, seed=2))


@pytest.mark.parametrize("rate", [0, -1, float("inf"), float("nan")])
def test_a_bad_rate_is_refused(rate: float) -> None:
    with pytest.raises(ValueError):
        arrival_times(rate, duration=1.0)


def test_a_schedule_needs_an_end() -> None:
    with pytest.raises(ValueError):
        arrival_times(10.0)
    with pytest.raises(ValueError):
        Budget()


def test_the_closed_loop_budget_stops_at_its_count_or_deadline() -> None:
    budget = Budget(count=3)
    assert [budget.take() for _ in range(5)] == [True, True, True, False, False]
    now = [0.0]
    timed = Budget(duration=2.0, clock=lambda: now[0])
    assert timed.take()
    now[0] = 1.99
    assert timed.take()
    now[0] = 2.0
    assert not timed.take() and timed.taken == 2


def records() -> list[Record]:
    """Four requests, one a 429; latencies 10, 20, 30 ms; batch sizes 1, 4, 4."""
    return [
        Record(0.0, 0.0, 0.010, 2, None, 1, 0.5, 1.0),
        Record(0.1, 0.1, 0.120, 2, None, 4, 1.5, 2.0),
        Record(0.2, 0.25, 0.230, 2, None, 4, 2.5, 3.0),
        Record(0.3, 0.3, 0.301, 2, "429 queue_full"),
    ]


def test_summarize_known_records() -> None:
    s = summarize(
        records(), label="r=10", mode="open", api="v1", wall_s=0.5, cpu_s=0.45, target_rate=10
    )
    assert (s.sent, s.ok, s.failed) == (4, 3, 1)
    assert s.errors == {"429 queue_full": 1}
    assert s.throughput_rps == 6.0 and s.throughput_items_ps == 12.0 and s.offered_rps == 8.0
    assert s.latency_ms == {"p50": 20.0, "p90": 30.0, "p99": 30.0, "max": 30.0, "mean": 20.0}
    assert s.send_lag_ms == {"p99": 50.0, "max": 50.0}
    assert s.batch_sizes == {1: 1, 4: 2}
    assert s.mean_batch_size == 3.0
    assert (s.queue_ms_mean, s.compute_ms_mean) == (1.5, 2.0)
    assert s.generator_cpu == 0.9 and s.generator_saturated


def test_an_empty_run_summarizes_to_nothing() -> None:
    s = summarize([], label="c=1", mode="closed", api="v2", wall_s=0.0, cpu_s=0.0)
    assert (s.sent, s.ok, s.throughput_rps) == (0, 0, 0.0)
    assert s.latency_ms["p50"] is None and s.mean_batch_size is None and s.batch_sizes == {}


def test_the_table_and_the_json_report() -> None:
    saturated = summarize(
        records(), label="r=10", mode="open", api="v1", wall_s=0.5, cpu_s=0.45, target_rate=10
    )
    calm = summarize(
        records()[:3], label="r=20", mode="open", api="v1", wall_s=1.0, cpu_s=0.1, target_rate=20
    )
    table = format_table([saturated, calm])
    lines = table.splitlines()
    assert lines[0].split()[:6] == ["point", "sent", "ok", "err", "req/s", "items/s"]
    assert lines[2].split()[:4] == ["r=10", "4", "3", "1"]
    assert lines[3].split()[:4] == ["r=20", "3", "3", "0"]
    assert "r=10 errors: 429 queue_full x1" in table
    assert "r=20 batch sizes (size:requests): 1:1 4:2" in table
    assert "WARNING r=10" in table and "WARNING r=20" not in table

    doc = json.loads(json.dumps(report({"model": "m"}, [saturated, calm])))
    assert doc["loadtest"] == {"model": "m"}
    run = doc["runs"][0]
    assert {
        "label",
        "mode",
        "api",
        "concurrency",
        "target_rate",
        "items_per_request",
        "wall_s",
        "sent",
        "ok",
        "failed",
        "throughput_rps",
        "throughput_items_ps",
        "offered_rps",
        "latency_ms",
        "send_lag_ms",
        "errors",
        "batch_sizes",
        "mean_batch_size",
        "queue_ms_mean",
        "compute_ms_mean",
        "generator_cpu",
        "generator_saturated",
    } <= run.keys()
    assert run["batch_sizes"] == {"1": 1, "4": 2}
    assert set(run["latency_ms"]) == {"p50", "p90", "p99", "max", "mean"}
