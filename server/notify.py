"""One pub/sub listener per API process wakes the requests waiting on results.

Workers publish each finished result, whole, to the reply channel of the process
that submitted it (and of any process long-polling it), so a waiting request
costs no extra Redis read and holds no connection of its own. Pub/sub is
fire-and-forget: after a reconnect every waiter is woken to re-read the stored
result, and a waiter that times out reads it once more before giving up.

A result can arrive before its waiter registers (a fast worker answers while the
submitting request is still on its way back from Redis), so the last few unclaimed
messages are kept for a moment and handed to a waiter that registers late.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import redis

from batching import keys

log = logging.getLogger(__name__)

UNCLAIMED_KEEP = 1024
UNCLAIMED_MAX_AGE_S = 5.0


@dataclass
class Waiter:
    record: str
    event: threading.Event = field(default_factory=threading.Event)
    state: str | None = None
    result: bytes | None = None

    def wait(self, timeout_s: float) -> bool:
        """True when a result arrived (``state``/``result`` set) or a re-read is due."""
        return self.event.wait(timeout_s)


class ReplyListener:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.channel = ""
        self._pid = 0
        self._waiters: dict[str, list[Waiter]] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._unclaimed: OrderedDict[str, tuple[float, str, bytes]] = OrderedDict()

    def ensure_started(self, timeout_s: float = 5.0) -> None:
        """Start (once per process, after any fork) and wait until subscribed."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._pid = os.getpid()
                    self.channel = keys.reply_channel(f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
                    self._subscribed = threading.Event()
                    threading.Thread(target=self._run, name="reply-listener", daemon=True).start()
        if not self._subscribed.wait(timeout_s):
            raise redis.ConnectionError("reply listener could not subscribe")

    def register(self, record: str) -> Waiter:
        waiter = Waiter(record)
        with self._lock:
            early = self._unclaimed.pop(record, None)
            if early is None:
                self._waiters.setdefault(record, []).append(waiter)
        if early is not None:
            waiter.state, waiter.result = early[1], early[2]
            waiter.event.set()
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(waiter.record)
            if waiters and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[waiter.record]

    def _dispatch(self, data: bytes) -> None:
        record, state, result = data.split(b"\n", 2)
        key = record.decode()
        with self._lock:
            waiters = self._waiters.pop(key, [])
            if not waiters:
                self._keep_unclaimed(key, state.decode(), result)
        for w in waiters:
            w.state, w.result = state.decode(), result
            w.event.set()

    def _keep_unclaimed(self, record: str, state: str, result: bytes) -> None:
        now = time.monotonic()
        self._unclaimed[record] = (now, state, result)
        while self._unclaimed and (
            len(self._unclaimed) > UNCLAIMED_KEEP
            or next(iter(self._unclaimed.values()))[0] < now - UNCLAIMED_MAX_AGE_S
        ):
            self._unclaimed.popitem(last=False)

    def _wake_all(self) -> None:
        with self._lock:
            waiters = [w for ws in self._waiters.values() for w in ws]
        for w in waiters:
            w.event.set()

    def _run(self) -> None:
        backoff = 0.05
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self._subscribed.set()
                self._wake_all()  # messages may have been lost while we were away
                backoff = 0.05
                for message in pubsub.listen():
                    if message["type"] == "message":
                        self._dispatch(message["data"])
            except redis.RedisError as exc:
                log.warning("reply listener lost Redis (%s); resubscribing", exc)
            finally:
                self._subscribed.clear()
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()
            threading.Event().wait(backoff)
            backoff = min(backoff * 2, 2.0)
