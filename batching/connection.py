"""The one factory that builds every Redis client, so none of them can wait forever.

A Redis that stops answering without closing its connections (SIGSTOP, a network
partition, a full kernel buffer) leaves a client with no socket timeout blocked for
good. Every client made here has ``settings.redis_timeout_s`` as its connect and read
timeout; a client for blocking commands (XREADGROUP BLOCK, BLPOP) gets its block time
on top, so an idle block is never mistaken for a dead server.

A timeout is never retried (the command may have run: a retry could add a job twice,
and a frozen server would only double the wait); a connection refused or reset is
retried once on a fresh connection, which is what a restarted server needs.
"""

from __future__ import annotations

from typing import Any, Literal

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from batching.settings import Settings

Purpose = Literal["api", "stream", "listener", "worker", "bulk", "rq", "cli"]


def _retry() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))


def client_from_url(
    url: str, settings: Settings, *, purpose: Purpose, block_s: float = 0.0
) -> redis.Redis:
    """A client for ``purpose`` whose every call ends within the Redis timeout (+ ``block_s``).

    ``api``: a blocking pool of ``redis_max_connections`` (a request past the cap waits
    for a connection, at most the timeout, instead of failing at once under load).
    ``stream``: the same, of ``max_streams``, for token streams' blocking reads, so
    streaming clients never take the connections plain requests need.
    ``listener``: pub/sub; its reader polls and pings (see server/notify.py), so the
    read timeout only has to cover one reply. ``rq``: RQ's worker raises the read
    timeout above its own BLPOP timeout; the rest get exactly the timeout.
    """
    timeout = settings.redis_timeout_s
    options: dict[str, Any] = {
        "socket_timeout": timeout + block_s,
        "socket_connect_timeout": timeout,
        "health_check_interval": 30,
        "retry": _retry(),
    }
    if not url.startswith("unix:"):
        options["socket_keepalive"] = True  # TCP only: a dead peer is found even when idle
    if purpose in ("api", "stream"):
        cap = settings.redis_max_connections if purpose == "api" else settings.max_streams
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=cap, timeout=timeout, **options
        )
        return redis.Redis(connection_pool=pool)
    return redis.Redis.from_url(url, **options)
