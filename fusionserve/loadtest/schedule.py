"""When to send: open-loop Poisson arrivals, and the request budget of a closed loop.

Open loop: arrivals are fixed in advance from a seeded RNG, independent of how fast the
server answers, and latency is measured from each request's *scheduled* time. A slow
server (or a late generator) therefore shows up as latency instead of silently lowering
the offered rate ("coordinated omission"). Closed loop: N workers, each sending its next
request when the previous one finished, until the :class:`Budget` runs out.
"""

from __future__ import annotations

import math
import time

import numpy as np

# Bounds so that no loop can run away, whatever the flags say.
MAX_REQUESTS = 10_000_000
MAX_DURATION_S = 24 * 3600.0


def arrival_times(
    rate: float, duration: float | None = None, count: int | None = None, seed: int = 0
) -> np.ndarray:
    """Send offsets in seconds from the start: a Poisson process of ``rate`` per second.

    Inter-arrival gaps are exponential with mean ``1/rate``. With ``duration`` the offsets
    are those below it; with ``count`` the first ``count`` (both: whichever ends first).
    The same seed gives the same schedule.
    """
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError("rate must be a positive number of requests per second")
    if duration is None and count is None:
        raise ValueError("give a duration or a count")
    if duration is not None and not 0 < duration <= MAX_DURATION_S:
        raise ValueError(f"duration must be in (0, {MAX_DURATION_S:g}] seconds")
    limit = MAX_REQUESTS if count is None else min(count, MAX_REQUESTS)
    if limit < 0:
        raise ValueError("count must be >= 0")
    rng = np.random.default_rng(seed)
    if duration is None:
        return np.cumsum(rng.exponential(1.0 / rate, size=limit))
    times: list[np.ndarray] = []
    total, last = 0, 0.0
    while total < limit:
        # draw in chunks: the expected number plus slack, so one chunk almost always suffices
        size = min(limit - total, int(rate * (duration - last) * 1.2) + 64)
        chunk = last + np.cumsum(rng.exponential(1.0 / rate, size=size))
        inside = chunk[chunk < duration]
        times.append(inside)
        total += inside.size
        if inside.size < chunk.size:
            break
        last = float(chunk[-1])
    return np.concatenate(times)[:limit] if times else np.empty(0)


class Budget:
    """How many more requests a closed loop may start: a count, a deadline, or both.

    Shared by the loop's workers (asyncio: one thread, so no lock is needed); every loop
    ends by itself because ``MAX_REQUESTS`` and ``MAX_DURATION_S`` bound both.
    """

    def __init__(
        self, count: int | None = None, duration: float | None = None, clock=time.perf_counter
    ) -> None:
        if count is None and duration is None:
            raise ValueError("give a duration or a count")
        self.clock = clock
        self.started = clock()
        self.limit = MAX_REQUESTS if count is None else min(count, MAX_REQUESTS)
        self.deadline = self.started + min(duration or MAX_DURATION_S, MAX_DURATION_S)
        self.taken = 0

    def take(self) -> bool:
        """True (and count it) when another request may start now."""
        if self.taken >= self.limit or self.clock() >= self.deadline:
            return False
        self.taken += 1
        return True
