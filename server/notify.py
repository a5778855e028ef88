"""One pub/sub listener per API process wakes the requests waiting on results.

Workers publish each finished result, whole, to the reply channel of the process
waiting for it: the one that submitted a synchronous ``/v2`` request, and any process
long-polling a ``/v1`` job (which registers its channel with the job first), so a
waiting request costs no extra Redis read and holds no connection of its own. A ``/v1``
submission answers 202 and waits for nothing, so its result is published to nobody
until someone polls. Pub/sub is fire-and-forget: when the listener loses Redis (an
error, or a PING unanswered for the Redis timeout: a frozen server keeps its
connections open and says nothing) and again after it resubscribes, every waiter is
woken to re-read the stored result, and a waiter that times out reads it once more
before giving up.

A result can arrive before its waiter registers (a fast worker answers while the
submitting request is still on its way back from Redis), so unclaimed messages are
kept for a moment and handed to a waiter that registers late. Unclaimed ones (their
waiter gave up) are bounded by count and by age, and expired on every tick of the
listener, not only when another message arrives: after a burst, a quiet process does
not sit on a thousand results.
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
"""Most unclaimed results kept; the oldest go first."""
UNCLAIMED_MAX_AGE_S = 5.0
"""An unclaimed result older than this is dropped (a late waiter re-reads it from Redis)."""
TICK_S = 0.25
"""How often the listener looks up from its socket: expiry, liveness PINGs."""


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
    def __init__(
        self,
        client: redis.Redis,
        timeout_s: float = 2.0,
        *,
        keep: int = UNCLAIMED_KEEP,
        keep_s: float = UNCLAIMED_MAX_AGE_S,
    ) -> None:
        """``client`` is the listener's own (pub/sub holds its connection for good)."""
        self.redis = client
        self.timeout_s = timeout_s
        self.keep, self.keep_s = keep, keep_s
        self.channel = ""
        self._pid = 0
        self._waiters: dict[str, list[Waiter]] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._unclaimed: OrderedDict[str, tuple[float, str, bytes]] = OrderedDict()
        self._closed = threading.Event()

    def close(self) -> None:
        """Stop listening (within a tick); waiters re-read the stored result."""
        self._closed.set()

    def ensure_started(self, timeout_s: float | None = None) -> None:
        """Start (once per process, after any fork) and wait until subscribed.

        Waits at most the Redis timeout: with Redis gone the request answers 503 then.
        """
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._pid = os.getpid()
                    self.channel = keys.reply_channel(f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
                    self._subscribed = threading.Event()
                    threading.Thread(target=self._run, name="reply-listener", daemon=True).start()
        if not self._subscribed.wait(self.timeout_s if timeout_s is None else timeout_s):
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

    def unclaimed(self) -> int:
        """Results received that no waiter has claimed (yet)."""
        with self._lock:
            return len(self._unclaimed)

    def _keep_unclaimed(self, record: str, state: str, result: bytes) -> None:
        """Called with the lock held."""
        now = time.monotonic()
        self._unclaimed[record] = (now, state, result)
        self._unclaimed.move_to_end(record)
        self._trim(now)

    def _trim(self, now: float) -> None:
        """Drop past the count and the age (oldest first). Called with the lock held."""
        while self._unclaimed and (
            len(self._unclaimed) > self.keep
            or next(iter(self._unclaimed.values()))[0] < now - self.keep_s
        ):
            self._unclaimed.popitem(last=False)

    def _expire(self) -> None:
        if self._unclaimed:
            with self._lock:
                self._trim(time.monotonic())

    def _wake_all(self) -> None:
        with self._lock:
            waiters = [w for ws in self._waiters.values() for w in ws]
        for w in waiters:
            w.event.set()

    def _run(self) -> None:
        backoff = 0.05
        while not self._closed.is_set():
            pubsub = self.redis.pubsub()
            try:
                pubsub.subscribe(self.channel)
                self._listen(pubsub)
            except redis.RedisError as exc:
                log.warning("reply listener lost Redis (%s); resubscribing", exc)
            except Exception:  # a dead listener would leave every waiter to its deadline
                log.exception("reply listener failed; resubscribing")
            finally:
                if self._subscribed.is_set():
                    backoff = 0.05  # it was working: try again at once, not after a long pause
                self._subscribed.clear()
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()
            self._wake_all()  # waiters re-read the stored result rather than wait for nothing
            threading.Event().wait(backoff)
            backoff = min(backoff * 2, max(0.1, self.timeout_s / 2))

    def _listen(self, pubsub: redis.client.PubSub) -> None:
        """Dispatch until Redis fails or goes silent (raises), or until closed.

        Reads poll for ``TICK_S`` rather than block: a blocked read cannot tell an idle
        channel from a frozen server. When nothing was heard for half the Redis timeout
        the listener PINGs; Redis is silent only when that PING goes unanswered for the
        timeout. Time with no PING outstanding proves nothing: a process busy in other
        work (a large body being parsed holds a gevent process) could not have heard.
        """
        ping_every = self.timeout_s / 2
        heard = pinged = time.monotonic()
        while not self._closed.is_set():
            message = pubsub.get_message(timeout=min(TICK_S, ping_every))
            if message is None and pinged > heard and time.monotonic() - pinged > self.timeout_s:
                message = pubsub.get_message(timeout=0)  # busy, not silent: is it waiting?
                if message is None:
                    raise redis.TimeoutError(f"no reply from Redis within {self.timeout_s} s")
            now = time.monotonic()
            if message is not None:
                heard = now
                self._handle(message)
            self._expire()
            if pinged <= heard and now - heard >= ping_every:  # one PING outstanding at most
                pubsub.ping()
                pinged = now

    def _handle(self, message: dict) -> None:
        if message["type"] == "message":
            self._dispatch(message["data"])
        elif message["type"] == "subscribe":
            self._subscribed.set()
            self._wake_all()  # messages may have been lost while we were away
