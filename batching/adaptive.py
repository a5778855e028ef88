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

Both inputs are measured by the worker itself and passed in: execution time per batch
size (``ExecutionModel``, a least-squares line ``exec(B) = a + b·B`` over recent
batches) and the arrival rate (``RateMeter``, rows over a sliding window). Everything
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
    """``exec(B) ≈ a + b·B`` fitted by least squares over the last ``keep`` batches."""

    keep: int = 256
    _points: deque[tuple[int, float]] = field(default_factory=deque)

    def add(self, batch_size: int, seconds: float) -> None:
        self._points.append((batch_size, seconds))
        if len(self._points) > self.keep:
            self._points.popleft()

    def predict(self, batch_size: int) -> float | None:
        if not self._points:
            return None
        xs = [x for x, _ in self._points]
        ys = [y for _, y in self._points]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mean_x) ** 2 for x in xs)
        if var == 0:  # one size seen so far: assume cost grows with the rows
            return mean_y * batch_size / mean_x
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
        slope = max(slope, 0.0)
        return max(mean_y + slope * (batch_size - mean_x), 1e-6)


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
