"""Concurrent submissions of one API process share Redis round trips.

Requests hand their entry to one background submitter and wait; the submitter sends
everything that queued up meanwhile as one pipeline. Under load a single round trip
carries many submissions (the per-command cost of the Redis client and the socket
calls are paid once per batch); a lone request goes out at once, paying only a
hand-off between two green threads.

Nothing waits unbounded: a pipeline ends within the Redis timeout (the client's
socket timeout); when one fails for want of Redis, the submissions queued behind it
fail with it at once (they were never sent, so nothing was enqueued) rather than
each waiting out another timeout; and a request whose entry is still queued after
the timeout withdraws it and fails.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from dataclasses import dataclass, field

import redis

from batching.broker import Broker, NewEntry

log = logging.getLogger(__name__)

MAX_PIPELINE = 256


class OutcomeUnknown(redis.TimeoutError):
    """The submission reached Redis but no answer came in time: it may have been queued.

    A client that retries should send the same Idempotency-Key, or it may add the job twice.
    """


@dataclass(eq=False)  # slots are found by identity (their entries hold arrays)
class _Slot:
    entry: NewEntry
    done: threading.Event = field(default_factory=threading.Event)
    outcome: str | Exception | None = None


class SubmitCoalescer:
    def __init__(self, broker: Broker, timeout_s: float = 2.0) -> None:
        """``timeout_s``: the Redis timeout, the longest a submission stays queued."""
        self.broker = broker
        self.timeout_s = timeout_s
        self._queue: deque[_Slot] = deque()
        self._wakeup = threading.Event()
        self._pid = 0
        self._lock = threading.Lock()
        self._queue_lock = threading.Lock()
        """Guards taking slots off the queue: the submitter's batch, a waiter's withdrawal."""

    def submit(self, entry: NewEntry) -> str:
        """Enqueue ``entry`` (in a pipeline shared with concurrent submissions).

        Raises a ``redis.RedisError`` when Redis fails or does not answer in time.
        """
        self._ensure_started()
        slot = _Slot(entry)
        self._queue.append(slot)
        self._wakeup.set()
        if not slot.done.wait(self.timeout_s):
            with self._queue_lock:
                queued = slot in self._queue
                if queued:
                    self._queue.remove(slot)
            if queued:  # never sent: withdrawn, nothing was enqueued
                raise redis.TimeoutError(f"not sent to Redis within {self.timeout_s} s")
            # In flight: its pipeline ends within the socket timeout (plus a pool wait).
            if not slot.done.wait(2 * self.timeout_s + 1):
                raise OutcomeUnknown("no answer from Redis for the submission")
        if isinstance(slot.outcome, Exception):
            raise slot.outcome
        assert slot.outcome is not None
        return slot.outcome

    def _ensure_started(self) -> None:
        if self._pid != os.getpid():  # once per process, after any fork
            with self._lock:
                if self._pid != os.getpid():
                    self._pid = os.getpid()
                    threading.Thread(target=self._run, name="submitter", daemon=True).start()

    def _take(self, most: int) -> list[_Slot]:
        with self._queue_lock:
            return [self._queue.popleft() for _ in range(min(len(self._queue), most))]

    def _run(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            while batch := self._take(MAX_PIPELINE):
                try:
                    outcomes = self.broker.submit_many([s.entry for s in batch])
                except (redis.TimeoutError, redis.ConnectionError) as exc:
                    # Redis is gone: what queued meanwhile would only wait out the same
                    # timeout, so it fails now too (unsent, so nothing is enqueued twice).
                    # A timeout came after the pipeline was sent: those may be queued.
                    sent: Exception = (
                        OutcomeUnknown(f"no answer from Redis in time: {exc}")
                        if isinstance(exc, redis.TimeoutError)
                        else exc
                    )
                    unsent = self._take(len(self._queue))
                    outcomes = [sent] * len(batch) + [exc] * len(unsent)
                    batch += unsent
                except redis.RedisError as exc:
                    outcomes = [exc] * len(batch)
                except Exception as exc:  # never strand a waiting request
                    log.exception("submitter failed")
                    outcomes = [exc] * len(batch)
                for slot, outcome in zip(batch, outcomes, strict=True):
                    slot.outcome = outcome
                    slot.done.set()
