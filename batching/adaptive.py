"""Adaptive batching for a latency SLO: choose the batch cap and queue delay online.

Rationale. A request's latency is roughly the time it waits for its batch to fill,
plus the time it waits for the batch in progress to finish, plus its own batch's
execution: ``latency ≈ delay + 2 · exec(B)`` in the bad case. Throughput needs
``B / exec(B)`` (rows per second the worker can run at cap ``B``) to exceed the
arrival rate ``λ``. So the controller picks the *smallest* cap whose capacity
covers ``λ`` with headroom, since a smaller batch is a shorter wait and a shorter
execution, and a delay no longer than it takes ``λ`` to bring the rows to fill it,
clipped to the slack the SLO leaves. At light load that is a cap of one or two and
almost no delay; as load grows the cap grows with it, up to the model's maximum,
which is the most throughput the worker has; past that (overload) it runs full batches
with no delay and the SLO cannot be met by batching alone (admission control must).

Both inputs are measured by the worker itself and passed in: the cost of a batch cycle
per batch size (``ExecutionModel``, running means per size, interpolated; the whole
cycle, Redis round trips included, since that is what bounds the worker's capacity)
and the arrival rate (``RateMeter``, rows over a sliding window). The cap chosen is a
*fill target*: the worker waits for at most that many rows, but always takes what is
already waiting, up to the model's maximum, so a small target never strands a backlog. Everything
here is pure: time is an argument.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class RateMeter:
    """Rows per second over the last ``window_s`` seconds."""

    window_s: float = 2.0
    _events: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, now: float, rows: int) -> None:
        self._events.append((now, rows))
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()

    def rate(self, now: float) -> float:
        while self._events and self._events[0][0] < now - self.window_s:
            self._events.popleft()
        return sum(rows for _, rows in self._events) / self.window_s


@dataclass
class ExecutionModel:
    """Execution time per batch size: a running mean per size seen, interpolated between.

    Sizes between two measured ones are interpolated linearly; past the largest, the
    slope of the last two continues; below the smallest, the smallest one's time stands
    (a batch never runs faster than the smallest measured one).
    """

    smoothing: float = 0.2
    _means: dict[int, float] = field(default_factory=dict)

    def add(self, batch_size: int, seconds: float) -> None:
        mean = self._means.get(batch_size)
        self._means[batch_size] = (
            seconds if mean is None else mean + self.smoothing * (seconds - mean)
        )

    def predict(self, batch_size: int) -> float | None:
        if not self._means:
            return None
        if batch_size in self._means:
            return self._means[batch_size]
        sizes = sorted(self._means)
        lower = [x for x in sizes if x < batch_size]
        upper = [x for x in sizes if x > batch_size]
        if not lower:
            return self._means[upper[0]]
        lo = lower[-1]
        if upper:
            hi = upper[0]
        elif len(lower) > 1:
            lo, hi = lower[-2], lower[-1]
        else:  # one size measured: assume time grows with the rows
            return self._means[lo] * batch_size / lo
        slope = max((self._means[hi] - self._means[lo]) / (hi - lo), 0.0)
        return self._means[lo] + slope * (batch_size - lo)


@dataclass(frozen=True)
class Setting:
    max_batch_size: int
    max_queue_delay_s: float


@dataclass
class SloController:
    """Picks ``Setting``s that meet ``slo_s`` (p99) when batching can, else maximise throughput."""

    slo_s: float
    max_batch_size: int
    headroom: float = 1.25
    """Capacity must exceed the arrival rate by this factor (queues explode near 1)."""

    def decide(self, arrival_rate: float, execution: ExecutionModel) -> Setting:
        if execution.predict(1) is None:  # nothing measured yet: run what comes, at once
            return Setting(self.max_batch_size, 0.0)
        for cap in range(1, self.max_batch_size + 1):
            run = execution.predict(cap) or 0.0
            if cap / run < arrival_rate * self.headroom:
                continue  # this cap cannot keep up
            slack = self.slo_s - 2 * run
            if slack < 0:
                break  # bigger caps only run longer: the SLO is out of reach by batching
            fill = (cap - 1) / arrival_rate if arrival_rate > 0 else 0.0
            return Setting(cap, max(0.0, min(fill, slack)))
        return Setting(self.max_batch_size, 0.0)  # overloaded: full batches, no waiting
