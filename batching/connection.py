"""The one factory that builds every Redis client, so none of them can wait forever.

A Redis that stops answering without closing its connections (SIGSTOP, a network
partition, a full kernel buffer) leaves a client with no socket timeout blocked for
good. Every client made here has ``settings.redis_timeout_s`` as its connect and read
timeout; a client for blocking commands (XREADGROUP BLOCK, BLPOP) gets its block time
on top, so an idle block is never mistaken for a dead server.

A timeout is never retried (the command may have run: a retry could add a job twice,
and a frozen server would only double the wait); a connection refused or reset is
retried once on a fresh connection, which is what a restarted server needs.

Besides ``redis://``, ``rediss://`` and ``unix://``, a URL may name a Sentinel
deployment: ``redis+sentinel://host:port[,host:port…]/<service>[/<db>]`` (or
``rediss+sentinel://`` for TLS to the data nodes). Clients then connect to whichever
node the sentinels call master, and find the new one after a failover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from batching.settings import Settings

Purpose = Literal["api", "stream", "listener", "worker", "bulk", "rq", "cli"]


def _retry() -> Retry:
    return Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))


SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")


@dataclass(frozen=True)
class SentinelUrl:
    hosts: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    """For the data nodes (the master and its replicas); the sentinels are asked without."""
    ssl: bool = False


def parse_sentinel_url(url: str) -> SentinelUrl | None:
    """The parts of a ``redis+sentinel://`` URL; None for any other URL. Raises ValueError
    for a Sentinel URL without hosts or service."""
    scheme = next((s for s in SENTINEL_SCHEMES if url.startswith(s)), None)
    if scheme is None:
        return None
    netloc, _, path = url[len(scheme) :].partition("/")
    auth, _, hostlist = netloc.rpartition("@")
    username, _, password = auth.partition(":") if auth else ("", "", "")
    hosts = []
    for host in filter(None, hostlist.split(",")):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"a Sentinel URL's hosts are host:port, comma-separated; got {host!r}")
        hosts.append((name, int(port)))
    service, _, db = path.strip("/").partition("/")
    if not hosts or not service or (db and not db.isdigit()):
        raise ValueError(
            "a Sentinel URL is redis+sentinel://host:port[,host:port...]/<service>[/<db>]"
        )
    return SentinelUrl(
        hosts=hosts,
        service=unquote(service),
        db=int(db or 0),
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=scheme.startswith("rediss"),
    )


class SentinelConnection(SentinelManagedConnection):
    """A connection to the sentinels' master that, like a plain one, drops its socket when
    a read is cut short. redis-py's keeps it (``disconnect_on_error=False``): the reply left
    unread (an RQ ``BLMOVE`` interrupted by a warm shutdown) was then read by the next
    command on that connection, which hung or got another command's answer."""

    def read_response(self, *args: Any, disconnect_on_error: bool = True, **kwargs: Any) -> Any:
        return super().read_response(*args, disconnect_on_error=disconnect_on_error, **kwargs)


class SentinelSSLConnection(SentinelConnection, SentinelManagedSSLConnection):
    """The same over TLS (``rediss+sentinel://``)."""


class BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's master discovery with the blocking pool's cap and wait for a free
    connection (redis-py ships the two separately)."""


def replicas_to_wait(settings: Settings) -> int:
    """Replicas a submission must reach before it is acknowledged: ``redis_min_replicas``,
    else one behind Sentinel (a failover then never loses an acknowledged job), else none."""
    if settings.redis_min_replicas is not None:
        return settings.redis_min_replicas
    return 1 if parse_sentinel_url(settings.redis_url or "") else 0


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
    capped: dict[str, Any] = {}  # a blocking pool's cap and wait for a free connection
    if purpose in ("api", "stream"):
        cap = settings.redis_max_connections if purpose == "api" else settings.max_streams
        capped = {"max_connections": cap, "timeout": timeout}
    sentinel = parse_sentinel_url(url)
    if sentinel is not None:
        return _sentinel_client(sentinel, timeout, capped, options)
    if capped:
        pool = redis.BlockingConnectionPool.from_url(url, **capped, **options)
        return redis.Redis(connection_pool=pool)
    return redis.Redis.from_url(url, **options)


def _sentinel_client(
    url: SentinelUrl, timeout: float, capped: dict[str, Any], options: dict[str, Any]
) -> redis.Redis:
    """A client on the sentinels' master; ``capped``: with the blocking pool's cap."""
    ask = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    return Sentinel(url.hosts, sentinel_kwargs=ask).master_for(
        url.service,
        connection_pool_class=BlockingSentinelPool if capped else SentinelConnectionPool,
        db=url.db,
        username=url.username,
        password=url.password,
        connection_class=SentinelSSLConnection if url.ssl else SentinelConnection,
        **capped,
        **options,
    )
