"""Submitting and waiting, below the HTTP layer: the one code path ``/v1`` and ``/v2`` share."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from batching import codec, keys
from batching.broker import Broker, JobView, NewEntry, QueueFull, VersionUnavailable
from batching.registry import PublishedModel
from batching.settings import Settings
from server.coalesce import SubmitCoalescer
from server.errors import ApiError, invalid, not_found
from server.notify import ReplyListener, Waiter


class JobQueue:
    def __init__(self, broker: Broker, listener: ReplyListener, settings: Settings) -> None:
        self.broker, self.listener, self.settings = broker, listener, settings
        self.submitter = SubmitCoalescer(broker, settings.redis_timeout_s)

    def submit(
        self,
        model: PublishedModel,
        tensors: Mapping[str, np.ndarray],
        rows: int,
        *,
        priority: int | None = None,
        timeout_ms: int | None = None,
        version: int = 0,
        idempotency: tuple[str, str, int] | None = None,
        tenant: str = "",
        sync: bool = False,
        generate: bytes = b"",
    ) -> str:
        """Enqueue one entry; returns its reference. Raises 422 for a bad priority, 429 if full.

        With ``idempotency`` (see NewEntry) a key used before raises ``Replayed`` instead.
        ``sync``: this process waits for it (``wait_submitted``), so it gets no job record.
        ``generate``: a generation request's parameters (JSON), for the worker.
        """
        batching = model.meta.config.batching
        level = priority or batching.priority_levels
        if not 1 <= level <= batching.priority_levels:
            raise invalid(f"priority must be 1..{batching.priority_levels} for model {model.name}")
        timeout_ms = min(timeout_ms or batching.default_timeout_ms, batching.default_timeout_ms)
        if sync:  # its result is published to this process: be listening before it is queued
            self.listener.ensure_started()
        entry = NewEntry(
            model=model.name,
            tensors=tensors,
            rows=rows,
            priority=level,
            levels=batching.priority_levels,
            reply_channel=self.listener.channel if sync else "",
            max_queue_size=batching.max_queue_size,
            deadline_ms=int(time.time() * 1000) + timeout_ms,
            version=version,
            idempotency=idempotency,
            tenant=tenant,
            sync=sync,
            generate=generate,
        )
        try:
            return self.submitter.submit(entry)
        except VersionUnavailable as exc:
            raise not_found("version_not_found", str(exc)) from None
        except QueueFull:
            retry = self.broker.retry_after(
                model.name, batching.priority_levels, stale_s=10 * self.settings.heartbeat_s
            )
            raise ApiError(
                429,
                "queue_full",
                f"model {model.name}'s queue is full ({batching.max_queue_size} waiting); "
                f"retry in about {retry} s",
                retry_after=retry,
            ) from None

    def read(self, model: str, ref: str) -> JobView | None:
        return self.broker.read(model, ref)

    def wait(self, model: str, ref: str, wait_s: float) -> JobView | None:
        """Long-poll a job someone submitted, maybe through another API process."""
        self.listener.ensure_started()
        record = keys.job(model, ref)
        deadline = time.monotonic() + wait_s
        ttl = int(self.settings.max_wait_s) + 60
        while True:
            waiter = self.listener.register(record)
            try:
                view = self.broker.watch(model, ref, self.listener.channel, ttl)
                if view is None or view.result is not None:
                    return view
                self._park(waiter, deadline)
            finally:
                self.listener.unregister(waiter)
            if waiter.result is not None:
                return _from_message(view, waiter)
            if time.monotonic() >= deadline:
                return self.broker.read(model, ref)  # a missed message is not a lost result

    def wait_submitted(self, model: str, ref: str, wait_s: float) -> JobView | None:
        """Wait for a synchronous entry this process submitted; None when no reply came.

        Its result is published to this process and stored nowhere, so a reply lost while
        the listener was away cannot be re-read: once resubscribed (503 while Redis is
        gone), an entry still in its stream will be answered here; one already finished
        lost its reply, and the request fails at once (503 ``reply_lost``).
        """
        deadline = time.monotonic() + wait_s
        waiter = self.listener.register(keys.job(model, ref))
        try:
            while waiter.result is None and (left := deadline - time.monotonic()) > 0:
                waiter.event.clear()
                if waiter.result is None and waiter.wait(left) and waiter.result is None:
                    self.listener.ensure_started()  # woken by a lost connection
                    if waiter.result is None and not self.broker.in_stream(model, ref):
                        raise ApiError(
                            503,
                            "reply_lost",
                            "the request ran, but its reply was lost while this server's "
                            "connection to Redis was interrupted; send it again",
                            retry_after=1,
                        )
        finally:
            self.listener.unregister(waiter)
        if waiter.result is None:
            return None
        return JobView(waiter.state or "done", 0, 0, codec.unpack(waiter.result))

    @staticmethod
    def _park(waiter: Waiter, deadline: float) -> None:
        waiter.wait(max(0.0, deadline - time.monotonic()))


def _from_message(view: JobView, waiter: Waiter) -> JobView:
    return JobView(
        state=waiter.state or view.state,
        rows=view.rows,
        priority=view.priority,
        result=codec.unpack(waiter.result or b""),
        tenant=view.tenant,
    )
