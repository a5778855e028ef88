"""Bulk batches in Redis: create, lease, feed, stop, read back.

A batch is a stored JSONL file of items plus a hash of counters. One ingest job at a
time (it holds the batch's lease) reads the file and feeds it in chunks: each chunk
becomes ONE entry of the model's bulk lane, whose job record points back at the
batch, so ``finish.lua`` (the one step that finishes a record) counts it in the same call
that writes the results. Every step that moves a counter is one of the ``batch_*.lua``
scripts beside this module, so a crash anywhere counts no item twice and loses none.

Contract of the counters: ``settled = done + failed + expired + cancelled``; the batch
settles (``finished_at`` is set, it moves to the webhook outbox) exactly once, when
``settled`` reaches ``total``.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson
import redis
from pydantic import BaseModel, Field

from batching import codec, keys
from batching.broker import Finish, Finisher, JobView, job_view, load_script

BatchState = Literal["validating", "running", "completed", "failed", "cancelled"]
ACTIVE_STATES = frozenset({"validating", "running"})

BATCH_ID = re.compile(r"^(?P<model>[A-Za-z0-9_-]{1,64})\.(?P<local>batch_[0-9a-f]{16})$")


@dataclass(frozen=True)
class BatchId:
    """``<model>.batch_<16 hex>``: the model in the id routes every read to its keys."""

    model: str
    local: str

    def __str__(self) -> str:
        return f"{self.model}.{self.local}"

    @classmethod
    def new(cls, model: str) -> BatchId:
        return cls(model, f"batch_{secrets.token_hex(8)}")

    @classmethod
    def parse(cls, text: str) -> BatchId | None:
        match = BATCH_ID.match(text)
        return cls(match["model"], match["local"]) if match else None

    @property
    def key(self) -> str:
        return keys.batch(self.model, self.local)


class BatchCounts(BaseModel):
    total: int
    queued: int
    done: int
    failed: int
    expired: int
    cancelled: int


class WebhookStatus(BaseModel):
    url: str
    state: Literal["pending", "delivered", "failed"]
    attempts: list[dict[str, Any]]


class BatchStatus(BaseModel):
    """The ``GET /v1/batches/<id>`` body."""

    batch_id: str
    model: str
    status: BatchState
    counts: BatchCounts
    created_at: float
    started_at: float | None
    finished_at: float | None
    eta_s: float | None
    webhook: WebhookStatus | None
    error: str | None = None
    tenant: str = Field("", exclude=True)
    """The API key that submitted it: kept off the wire, checked by the API."""


@dataclass
class Chunk:
    """A run of consecutive lines fed together: valid rows become one entry (``ref``)."""

    rows: list[tuple[int, str | None]] = field(default_factory=list)
    """(line number, custom id) of each valid row, in entry row order."""
    errors: list[tuple[int, str | None, str]] = field(default_factory=list)
    """(line number, custom id, message) of each line rejected before it reached the model."""
    ref: str | None = None

    @property
    def items(self) -> int:
        return len(self.rows) + len(self.errors)

    def pack(self) -> bytes:
        return codec.pack({"r": self.rows, "e": self.errors})

    @classmethod
    def unpack(cls, data: bytes, ref: bytes | None) -> Chunk:
        raw = codec.unpack(data)
        return cls(
            rows=[(int(n), c) for n, c in raw["r"]],
            errors=[(int(n), c, m) for n, c, m in raw["e"]],
            ref=ref.decode() if ref else None,
        )


@dataclass(frozen=True)
class NewBatch:
    """What the API records when it has stored a batch's file."""

    id: BatchId
    total: int
    path: str
    fingerprint: str
    priority: int
    webhook_url: str | None
    retention_s: int
    window_s: int
    tenant: str = ""


class BatchStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._create = load_script(client, "batch_create")
        self._lease = load_script(client, "batch_lease")
        self._feed = load_script(client, "batch_feed")
        self._stop = load_script(client, "batch_stop")
        self._discard = load_script(client, "batch_discard")
        self._finisher = Finisher(client)

    # --- creating and reading -----------------------------------------------------------

    def create(self, new: NewBatch, idempotency_key: str | None, ttl_s: int) -> str | None:
        """Record a new batch; returns None, or what ``idempotency_key`` already remembers."""
        now_ms = int(time.time() * 1000)
        fields = {
            "id": str(new.id),
            "model": new.id.model,
            "status": "validating",
            "total": new.total,
            "path": new.path,
            "priority": new.priority,
            "created_at": now_ms,
            "deadline_ms": now_ms + new.window_s * 1000,
            "retention_s": new.retention_s,
            "fed_line": 0,
            "fed_byte": 0,
            "chunks": 0,
            "tenant": new.tenant,
        }
        if new.webhook_url:
            fields |= {"webhook_url": new.webhook_url, "webhook_state": "pending"}
        model = new.id.model
        prior = self._create(
            keys=[
                new.id.key,
                keys.batches(model),
                keys.batches_active(model),
                _idempotency_key(new, idempotency_key),
                keys.batches_of(model, new.tenant),
            ],
            args=[str(new.id), now_ms, _remembered(new, idempotency_key), ttl_s, *_flatten(fields)],
        )
        return prior.decode() if prior else None

    def discard(self, new: NewBatch, idempotency_key: str | None) -> None:
        """Forget a batch whose creation failed after it was recorded (the client got 503)."""
        model = new.id.model
        self._discard(
            keys=[
                _idempotency_key(new, idempotency_key),
                new.id.key,
                keys.batches_active(model),
                keys.batches(model),
                keys.batches_of(model, new.tenant),
            ],
            args=[str(new.id), _remembered(new, idempotency_key)],
        )

    def fields(self, bid: BatchId) -> dict[str, str]:
        return _decoded(self.redis.hgetall(bid.key))

    def status(self, bid: BatchId) -> BatchStatus | None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(bid.key)
            pipe.lrange(keys.batch_hooks(bid.model, bid.local), 0, -1)
            raw, hooks = pipe.execute()
        if not raw:
            return None
        return render_status(_decoded(raw), hooks)

    def page(
        self, models: Sequence[str], tenant: str, limit: int, before_ms: int | None = None
    ) -> list[BatchStatus]:
        """One tenant's newest batches over ``models`` (created before ``before_ms`` when
        given): its own index, so other tenants' batches never shorten the page; the
        page's records are read in one round trip. Ids whose records expired are dropped
        from the index and the page is read again."""
        top = f"({before_ms}" if before_ms is not None else "+inf"
        while True:
            with self.redis.pipeline(transaction=False) as pipe:
                for model in models:
                    pipe.zrevrangebyscore(
                        keys.batches_of(model, tenant), top, "-inf", 0, limit, withscores=True
                    )
                ranked = pipe.execute()
            newest = sorted(
                (
                    (score, raw.decode(), model)
                    for model, ids in zip(models, ranked, strict=True)
                    for raw, score in ids
                ),
                reverse=True,
            )[:limit]
            bids = [b for _, raw, _ in newest if (b := BatchId.parse(raw))]
            with self.redis.pipeline(transaction=False) as pipe:
                for bid in bids:
                    pipe.hgetall(bid.key)
                    pipe.lrange(keys.batch_hooks(bid.model, bid.local), 0, -1)
                replies = pipe.execute()
            found, gone = [], []
            for bid, raw, hooks in zip(bids, replies[::2], replies[1::2], strict=True):
                if raw:
                    found.append(render_status(_decoded(raw), hooks))
                else:
                    gone.append(bid)
            if not gone:
                return found
            with self.redis.pipeline(transaction=False) as pipe:
                for bid in gone:
                    pipe.zrem(keys.batches_of(bid.model, tenant), str(bid))
                pipe.execute()

    def chunks(self, bid: BatchId, start: int, count: int) -> list[tuple[Chunk, JobView | None]]:
        """Chunks ``start .. start+count-1`` with their entries' job records, in two trips."""
        chunk_key = keys.batch_chunks(bid.model, bid.local)
        fields = [x for seq in range(start, start + count) for x in (str(seq), f"{seq}:ref")]
        raw = self.redis.hmget(chunk_key, fields)
        chunks = [
            Chunk.unpack(data, ref) for data, ref in zip(raw[::2], raw[1::2], strict=True) if data
        ]
        with self.redis.pipeline(transaction=False) as pipe:
            for c in chunks:
                pipe.hmget(keys.job(bid.model, c.ref or "none"), "st", "n", "pr", "res")
            records = pipe.execute()
        return [
            (c, job_view(r) if c.ref and r[0] else None)
            for c, r in zip(chunks, records, strict=True)
        ]

    # --- ingest -------------------------------------------------------------------------

    def lease(self, bid: BatchId, owner: str, lease_ms: int) -> str:
        return self._lease(keys=[bid.key], args=[owner, lease_ms]).decode()

    def feed(
        self,
        bid: BatchId,
        *,
        owner: str,
        from_line: int,
        to_line: int,
        to_byte: int,
        chunk: Chunk,
        tensors: dict[str, np.ndarray] | None,
        level: int,
        deadline_ms: int,
        window: int,
        retention_s: int,
        lease_ms: int,
        generate: bytes = b"",
    ) -> str:
        m, local = bid.model, bid.local
        return self._feed(
            keys=[
                bid.key,
                keys.batch_chunks(m, local),
                keys.batch_inflight(m, local),
                keys.stream(m, level),
                keys.batches_settled(m),
                keys.batches_active(m),
            ],
            args=[
                owner,
                from_line,
                to_line,
                to_byte,
                chunk.items,
                len(chunk.rows),
                chunk.pack(),
                codec.pack_tensors(tensors) if tensors else b"",
                keys.job(m, ""),
                level,
                deadline_ms,
                window,
                retention_s,
                lease_ms,
                generate,
            ],
        ).decode()

    def stop(
        self, bid: BatchId, state: Literal["cancelled", "failed"], reason: str = ""
    ) -> str | None:
        """Cancel (or fail) a batch; returns its status afterwards, None if unknown."""
        fields = self.fields(bid)
        if not fields:
            return None
        message = "batch was cancelled before this item ran; it never ran"
        if state == "failed":
            message = f"batch failed before this item ran: {reason}"
        result = codec.pack({"error": {"code": state, "message": message}})
        retention = int(fields.get("retention_s", 3600))
        reply = self._stop(
            keys=[
                bid.key,
                keys.batch_inflight(bid.model, bid.local),
                keys.batches_settled(bid.model),
                keys.batches_active(bid.model),
            ],
            args=[state, reason],
        )
        if not reply:
            return None
        status, inflight = reply[0].decode(), reply[1]
        fed = [
            Finish(
                bid.model,
                int(ref.rsplit("-", 1)[1]),
                eid.decode(),
                state,
                result,
                mode="stop",
                batch=bid.key,
            )
            for ref, eid in (
                (r.decode().rsplit(":", 1)[1], e)
                for r, e in zip(inflight[::2], inflight[1::2], strict=True)
            )
        ]
        if fed:  # queued entries never run; running ones settle the batch when they finish
            self._finisher.finish(fed, retention)
        return status

    # --- webhooks ---------------------------------------------------------------------

    def record_attempt(self, bid: BatchId, attempt: dict[str, Any], state: str | None) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(keys.batch_hooks(bid.model, bid.local), orjson.dumps(attempt))
            if state:
                pipe.hset(bid.key, "webhook_state", state)
            pipe.execute()

    def retain(self, bid: BatchId, seconds: int) -> None:
        """Let a settled batch's keys expire after ``seconds``."""
        with self.redis.pipeline(transaction=False) as pipe:
            for key in (
                bid.key,
                keys.batch_chunks(bid.model, bid.local),
                keys.batch_hooks(bid.model, bid.local),
                keys.batch_inflight(bid.model, bid.local),
            ):
                pipe.expire(key, seconds)
            pipe.execute()


def read_lines(path: str, offset: int, line: int) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset after it, text) of each non-blank line of a batch file
    past ``offset`` (the ingest feeds them; the API reads back the ones never fed)."""
    with open(path, "rb") as f:
        f.seek(offset)
        for raw in f:
            offset += len(raw)
            line += 1
            if raw.strip():
                yield line, offset, raw


def render_status(f: dict[str, str], hooks: Sequence[bytes]) -> BatchStatus:
    counts = {s: int(f.get(s, 0)) for s in ("done", "failed", "expired", "cancelled")}
    total = int(f["total"])
    settled = int(f.get("settled", 0))
    started = _seconds(f.get("started_at"))
    finished = _seconds(f.get("finished_at"))
    eta = None
    if started is not None and finished is None and settled:
        rate = settled / max(1e-3, time.time() - started)
        eta = round((total - settled) / rate, 1)
    webhook = None
    if f.get("webhook_url"):
        webhook = WebhookStatus(
            url=f["webhook_url"],
            state=f.get("webhook_state", "pending"),  # type: ignore[arg-type]
            attempts=[orjson.loads(h) for h in hooks],
        )
    return BatchStatus(
        batch_id=f["id"],
        model=f["model"],
        status=f["status"],  # type: ignore[arg-type]
        counts=BatchCounts(total=total, queued=total - settled, **counts),
        created_at=_seconds(f["created_at"]) or 0.0,
        started_at=started,
        finished_at=finished,
        eta_s=eta,
        webhook=webhook,
        error=f.get("error"),
        tenant=f.get("tenant", ""),
    )


def _seconds(ms: str | None) -> float | None:
    return int(ms) / 1000.0 if ms else None


def _decoded(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def _idempotency_key(new: NewBatch, idempotency_key: str | None) -> str:
    """One tenant's Idempotency-Key never names another tenant's batch."""
    return keys.idempotency(new.id.model, "batch", f"{new.tenant}\n{idempotency_key or ''}")


def _remembered(new: NewBatch, idempotency_key: str | None) -> str:
    """What an Idempotency-Key remembers of the batch it created ('' without a key)."""
    return f"{new.fingerprint}\n{new.id}" if idempotency_key else ""


def _flatten(fields: dict[str, Any]) -> list[Any]:
    return [x for pair in fields.items() for x in pair]
