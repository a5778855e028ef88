"""Concurrent submissions of one API process share Redis round trips.

Requests hand their entry to one background submitter and wait; the submitter sends
everything that queued up meanwhile as one pipeline. Under load a single round trip
carries many submissions (the per-command cost of the Redis client and the socket
calls are paid once per batch); a lone request goes out at once, paying only a
hand-off between two green threads.
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


@dataclass
class _Slot:
    entry: NewEntry
    done: threading.Event = field(default_factory=threading.Event)
    outcome: str | Exception | None = None


class SubmitCoalescer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._queue: deque[_Slot] = deque()
        self._wakeup = threading.Event()
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, entry: NewEntry) -> str:
        """Enqueue ``entry`` (in a pipeline shared with concurrent submissions)."""
        self._ensure_started()
        slot = _Slot(entry)
        self._queue.append(slot)
        self._wakeup.set()
        slot.done.wait()
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

    def _run(self) -> None:
        while True:
            self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_PIPELINE))]
                try:
                    outcomes = self.broker.submit_many([s.entry for s in batch])
                except redis.RedisError as exc:
                    outcomes = [exc] * len(batch)
                except Exception as exc:  # never strand a waiting request
                    log.exception("submitter failed")
                    outcomes = [exc] * len(batch)
                for slot, outcome in zip(batch, outcomes, strict=True):
                    slot.outcome = outcome
                    slot.done.set()
