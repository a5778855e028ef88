"""When to run a micro-batch: the batching contract, as pure logic over a clock you pass in.

Contract (what a worker promises for each model):

1. A batch holds at most ``max_batch_size`` rows. Entries are merged whole; only an
   entry that alone exceeds the cap is split, and it then runs alone, in chunks.
2. An idle server runs a lone request at once: the queue delay is paid only when it
   can buy a bigger batch, that is when work is arriving faster than batches finish.
   The evidence for that is a backlog: the pull that opened this batch found more
   than one entry waiting.
3. A batch that reaches one of the model's ``preferred_batch_sizes`` runs at once.
4. When the delay is worth paying, the batch waits at most ``max_queue_delay_ms``
   after its first entry was pulled (measured on the worker's own monotonic clock,
   never on Redis BLOCK timeouts, whose granularity is the server's ``hz``), and
   runs as soon as it is full, or as soon as a poll finds nothing new once it has
   already grown past the previous batch's size.

The worker asks :meth:`BatchPolicy.decide` after every pull; the answer is either
``RUN`` or ``WAIT`` with how long it may poll before asking again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, TypeVar

Q = TypeVar("Q", bound="Queued")


class Decision(Enum):
    RUN = "run"
    WAIT = "wait"


@dataclass
class BatchState:
    """The batch being formed: rows in hand, when it opened, and what the pulls found."""

    opened_at: float
    rows: int = 0
    first_pull_entries: int = 0
    last_pull_entries: int = 0
    pulls: int = 0


@dataclass
class BatchPolicy:
    max_batch_size: int
    max_queue_delay_s: float
    preferred_sizes: tuple[int, ...] = ()
    fill_target: int | None = None
    """Rows worth waiting for (the SLO controller's cap); what already waits is taken anyway."""
    poll_interval_s: float = 0.0005
    previous_batch_rows: int = 0

    def open(self, now: float, pulled_entries: int, pulled_rows: int) -> BatchState:
        return BatchState(
            opened_at=now,
            rows=pulled_rows,
            first_pull_entries=pulled_entries,
            last_pull_entries=pulled_entries,
            pulls=1,
        )

    def add(self, state: BatchState, pulled_entries: int, pulled_rows: int) -> None:
        state.rows += pulled_rows
        state.last_pull_entries = pulled_entries
        state.pulls += 1

    def decide(self, state: BatchState, now: float) -> tuple[Decision, float]:
        """``(RUN, 0)`` or ``(WAIT, seconds)`` for the batch ``state`` at time ``now``."""
        target = min(self.max_batch_size, self.fill_target or self.max_batch_size)
        if state.rows >= target or self.max_queue_delay_s <= 0:
            return Decision.RUN, 0.0
        if state.rows in self.preferred_sizes:
            return Decision.RUN, 0.0
        if state.first_pull_entries <= 1:
            return Decision.RUN, 0.0  # no backlog: nobody else is waiting to join
        remaining = state.opened_at + self.max_queue_delay_s - now
        if remaining <= 0:
            return Decision.RUN, 0.0
        grown = state.rows > max(self.previous_batch_rows, 1)
        if state.pulls > 1 and state.last_pull_entries == 0 and grown:
            return Decision.RUN, 0.0  # arrivals dried up and the batch is already bigger
        return Decision.WAIT, min(self.poll_interval_s, remaining)

    def ran(self, rows: int) -> None:
        self.previous_batch_rows = rows


class Queued(Protocol):
    priority: int
    deadline_ms: int

    @property
    def order(self) -> tuple[int, int]: ...


def by_priority(entries: Sequence[Q]) -> list[Q]:
    """Strict priority: every level-1 entry before any level-2 one; FIFO within a level."""
    return sorted(entries, key=lambda e: (e.priority, *e.order))


def expired(entry: Queued, now_ms: float) -> bool:
    """Past its deadline before it was batched: it must never run."""
    return bool(entry.deadline_ms) and entry.deadline_ms < now_ms


def runnable(state: str | None) -> bool:
    """Only work still queued (or taken over from a crashed worker) reaches the model;
    a job already done, failed, expired or cancelled is only acknowledged."""
    return state in ("queued", "running")
