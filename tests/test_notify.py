"""The reply listener keeps results nobody waits for only briefly, and only so many."""

from __future__ import annotations

import redis
from helpers import wait_until

from server.notify import ReplyListener

KEEP = 8
KEEP_S = 1.0


def _publish(client: redis.Redis, channel: str, records: range) -> None:
    for i in records:
        client.publish(channel, f"fs:{{m}}:job:{i}-1\ndone\nresult-{i}".encode())


def test_unclaimed_results_expire_by_age_and_by_count(
    redis_client: redis.Redis, redis_url: str
) -> None:
    listener = ReplyListener(redis.Redis.from_url(redis_url), keep=KEEP, keep_s=KEEP_S)
    listener.ensure_started()
    try:
        _bounded(listener, redis_client)
    finally:
        listener.close()


def _bounded(listener: ReplyListener, redis_client: redis.Redis) -> None:

    # Count: a burst past the cap keeps only the newest.
    _publish(redis_client, listener.channel, range(3 * KEEP))
    late = listener.register(f"fs:{{m}}:job:{3 * KEEP - 1}-1")  # the newest is still there
    wait_until(lambda: late.event.is_set(), "a late waiter missed a kept result", 10)
    assert late.result == f"result-{3 * KEEP - 1}".encode()
    assert listener.unclaimed() <= KEEP

    # Age: with no further traffic the rest go too (not only when the next one arrives).
    wait_until(lambda: listener.unclaimed() == 0, "unclaimed results never expired", 10 * KEEP_S)
    gone = listener.register(f"fs:{{m}}:job:{3 * KEEP - 2}-1")
    assert not gone.event.is_set()  # a waiter this late re-reads the stored result instead
    listener.unregister(gone)
