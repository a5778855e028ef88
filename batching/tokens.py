"""The event stream of one generation request: what a streaming client reads.

A worker appends, per decoder step and in one round trip for every active request,
``token`` events (``{"index", "id", "text"}``), then one ``done`` event carrying the whole
result (or ``error``). A worker that takes over a request whose earlier run was lost
(its worker died) first appends ``restart``: the client drops what it had, and the
tokens start again from the first. Each stream is capped (``MAXLEN``, a bounded
buffer: a reader that falls that far behind gets the ``done`` event's whole text
anyway) and expires with the results.

Readers block on the stream (``XREAD BLOCK``) from the last id they saw, so a client
that reconnects with ``Last-Event-ID`` resumes exactly where it stopped; nothing polls.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from batching import keys

FINAL = frozenset({"done", "error"})
READ_BLOCK_MS = 1000
"""One blocking read of a token stream; a reader that heard nothing for this long can
send a keep-alive (proxies close silent connections)."""
EVENT_ID = re.compile(r"^(0|\d{1,20}-\d{1,20})$")
"""A stream id a client may resume after (``Last-Event-ID``); "0" is the start."""


@dataclass(frozen=True)
class TokenEvent:
    id: str
    """The stream entry id: the SSE ``id:``, what ``Last-Event-ID`` resumes after."""
    event: str
    data: dict[str, Any]


def append(
    pipe: redis.client.Pipeline,
    model: str,
    ref: str,
    events: Sequence[tuple[str, dict[str, Any]]],
    *,
    cap: int,
    ttl_s: int | None,
) -> None:
    """Queue ``events`` for one request on ``pipe`` (the caller executes it once per step).

    ``ttl_s`` (re)sets the stream's expiry: the caller passes it with a request's first
    events and its last, and None in between (one command fewer per token)."""
    key = keys.tokens(model, ref)
    for event, data in events:
        pipe.xadd(key, {"e": event, "d": orjson.dumps(data)}, maxlen=cap, approximate=True)
    if ttl_s is not None:
        pipe.expire(key, ttl_s)


def read(
    client: redis.Redis, model: str, ref: str, after: str, *, block_ms: int, count: int = 256
) -> list[TokenEvent]:
    """Events after ``after`` ("0": from the start), waiting up to ``block_ms`` for one."""
    reply = client.xread({keys.tokens(model, ref): after}, count=count, block=block_ms)
    found = []
    for _stream, entries in reply or ():
        for eid, fields in entries:
            found.append(
                TokenEvent(eid.decode(), fields[b"e"].decode(), orjson.loads(fields[b"d"]))
            )
    return found


def last_id(client: redis.Redis, model: str, ref: str) -> str | None:
    """The id of the request's newest event (None when it has none)."""
    found = client.xrevrange(keys.tokens(model, ref), count=1)
    return found[0][0].decode() if found else None
