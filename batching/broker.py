"""The Redis Streams broker: submit, pull micro-batches, finish, reclaim, dead-letter.

Delivery is at-least-once. A submission is ONE stream entry holding all its rows;
its job record (state, reply channel, later the result) lives beside it, except for a
synchronous one (``/v2``), whose entry carries its reply channel and whose result is only
published. An entry is acknowledged only in the same atomic call that writes its result;
entries idle past the visibility timeout are reclaimed by another worker; past
``max_deliveries`` they are dead-lettered (the job fails with the reason).
The atomic steps are the ``.lua`` files beside this module.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import numpy as np
import redis

from batching import codec, keys
from batching.model_config import BatchingConfig

FINAL_STATES = frozenset({"done", "failed", "expired", "cancelled"})


INCLUDE = re.compile(r"^-- @include (\w+)$", re.MULTILINE)
"""A line that stands for a shared fragment (``lua/lib/<name>.lua``): one source, many scripts."""


def script_source(name: str) -> str:
    """A script's Lua with each ``-- @include <fragment>`` line replaced by that fragment.

    Redis scripts cannot call each other, so a step several scripts need (settling a
    bulk batch) is written once in ``lua/lib`` and included where it is used.
    """
    lua = resources.files("batching").joinpath("lua")
    source = lua.joinpath(f"{name}.lua").read_text()
    return INCLUDE.sub(lambda m: lua.joinpath("lib", f"{m[1]}.lua").read_text().rstrip(), source)


def load_script(client: redis.Redis, name: str) -> Any:
    return client.register_script(script_source(name))


def entry_millis(entry_id: str) -> int:
    """The Redis clock (unix ms) at which an entry was added: the first part of its id."""
    return int(entry_id.split("-", 1)[0])


def entry_ref(entry_id: str, priority: int) -> str:
    return f"{entry_id}-{priority}"


@dataclass
class Entry:
    """One submission as a worker pulled it: ``rows`` rows of every input."""

    model: str
    priority: int
    id: str
    rows: int
    deadline_ms: int
    version: int
    payload: bytes
    batch: str | None = None
    """The bulk batch's hash key for an entry of a batch (the record's ``bt``), else None."""
    reply: str | None = None
    """A synchronous entry's reply channel: it has no job record, its result is only published."""
    generate: bytes | None = None
    """A generation request's parameters (JSON: max_new_tokens, sampling, stop); None for
    inference."""
    _inputs: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        if self._inputs is None:
            self._inputs = codec.unpack_tensors(self.payload)
        return self._inputs

    @property
    def ref(self) -> str:
        """``<entry id>-<level>``: names the entry's job record, unique within the model."""
        return f"{self.id}-{self.priority}"

    @property
    def order(self) -> tuple[int, int]:
        """Arrival order within a level: the stream id's milliseconds and sequence."""
        ms, seq = self.id.split("-")
        return int(ms), int(seq)

    @property
    def enqueued_ms(self) -> int:
        return entry_millis(self.id)


@dataclass
class JobView:
    """A job record as the API reads it; ``result`` is set once the job is final."""

    state: str
    rows: int
    priority: int
    result: dict[str, Any] | None
    tenant: str = ""
    """The API key that submitted it ("" with access control off)."""


@dataclass
class Finished:
    """The outcome of one entry, written by :meth:`Broker.complete`."""

    entry: Entry
    state: str
    result: dict[str, Any]


@dataclass(frozen=True)
class Finish:
    """One record for ``finish.lua``: what it becomes, and when it may still change."""

    model: str
    priority: int
    id: str
    """The stream entry id."""
    state: str
    result: bytes
    """The packed result."""
    mode: str = "running"
    """'running' (its deliverer finishes it), 'queued' (a cancel), 'stop' (a stopped batch)."""
    version: str = "0"
    """The version it pinned ('0': none; '': read it from the entry)."""
    rejected: int = 0
    duration_ns: int = 0
    batch: str | None = None
    """Its bulk batch's hash key, when known (else the script asks for it)."""
    reply: str = ""
    """A synchronous entry's reply channel (it has no record); '' for an entry with a record."""

    @property
    def ref(self) -> str:
        return entry_ref(self.id, self.priority)


class Finisher:
    """Finishes records through ``finish.lua``: the one step every path takes."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._finish = load_script(client, "finish")

    def finish(
        self,
        items: Sequence[Finish],
        ttl_s: int,
        *,
        stats_key: str | None = None,
        stats: Mapping[str, int] | None = None,
    ) -> int:
        """Finish ``items`` (one model's) atomically; returns how many records it wrote.

        A bulk record whose batch the caller did not know (a cancel by job id, an entry
        fed before entries carried their batch) is finished in a second call, with the
        batch its record names: the script never touches a key it was not given.
        """
        written, todo = 0, list(items)
        while todo:
            n, unresolved = self._call(todo, ttl_s, stats_key, stats)
            written += int(n)
            stats = None  # applied once
            retry = [todo[int(i) - 1] for i in unresolved]
            if not retry:
                break
            with self.redis.pipeline(transaction=False) as pipe:
                for f in retry:
                    pipe.hget(keys.job(f.model, f.ref), "bt")
                found = pipe.execute()
            todo = [
                replace(f, batch=bt.decode())
                for f, bt in zip(retry, found, strict=True)
                if bt and bt.decode() != f.batch
            ]
        return written

    def _call(
        self,
        items: Sequence[Finish],
        ttl_s: int,
        stats_key: str | None,
        stats: Mapping[str, int] | None,
    ) -> tuple[int, list[int]]:
        model = items[0].model
        pairs = [x for field_, value in (stats or {}).items() for x in (field_, value)]
        keys_ = [keys.outcomes(model), keys.batches_settled(model), keys.batches_active(model)]
        keys_ += [stats_key] if stats_key else []
        args: list[Any] = [
            keys.GROUP,
            ttl_s,
            keys.pinned(model, ""),
            len(items),
            1 if stats_key else 0,
            len(pairs) // 2,
            *pairs,
        ]
        batches: dict[str, int] = {}
        for f in items:
            keys_ += [
                keys.stream(model, f.priority),
                keys.job(model, f.ref),
                keys.watchers(model, f.ref),
            ]
            index = batches.setdefault(f.batch, len(batches) + 1) if f.batch else 0
            args += [f.id, f.state, f.result, f.duration_ns, f.version, f.rejected, index]
            args += [f.mode, f.reply]
        for batch_key in batches:
            local = batch_key.rsplit(":", 1)[1]
            keys_ += [keys.batch(model, local), keys.batch_inflight(model, local)]
        written, unresolved = self._finish(keys=keys_, args=args)
        return int(written), [int(i) for i in unresolved]


@dataclass(frozen=True)
class NewEntry:
    """A submission on its way in: ``rows`` rows of every input, for one priority level."""

    model: str
    tensors: Mapping[str, np.ndarray]
    rows: int
    priority: int
    levels: int
    reply_channel: str
    max_queue_size: int
    deadline_ms: int
    version: int = 0
    """The exact model version asked for; 0 runs on the newest one loaded."""
    idempotency: tuple[str, str, int] | None = None
    """(Redis key, what it remembers, seconds): a key seen before adds nothing (Replayed)."""
    tenant: str = ""
    """The API key submitting it: only that key may read or cancel the job."""
    sync: bool = False
    """Its submitter waits for it (``/v2`` infer): no job record, the entry carries the reply
    channel and the result is only published."""
    generate: bytes = b""
    """A generation request's parameters (JSON), carried in the entry's ``g`` field."""

    def script_args(self) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of ``submit.lua``."""
        streams = [keys.stream(self.model, p) for p in range(1, self.levels + 1)]
        args = [
            keys.job(self.model, ""),
            self.rows,
            codec.pack_tensors(self.tensors),
            self.reply_channel,
            self.priority,
            self.max_queue_size,
            self.deadline_ms,
            self.version,
            keys.pinned(self.model, ""),
            keys.accepting(self.model),
            *(self.idempotency or ("", "", 0)),
            self.tenant,
            1 if self.sync else 0,
            self.generate,
        ]
        return [keys.outcomes(self.model), keys.stream(self.model, self.priority), *streams], args


class VersionUnavailable(Exception):
    """The exact version asked for is not served (never was, or is being unloaded)."""

    def __init__(self, model: str, version: int) -> None:
        super().__init__(f"version {version} of model '{model}' is not available")
        self.model, self.version = model, version


class Replayed(Exception):
    """The submission's Idempotency-Key was used before: ``remembered`` is what it created."""

    def __init__(self, remembered: str) -> None:
        super().__init__("idempotent replay")
        self.remembered = remembered


class QueueFull(Exception):
    """The model's queue holds ``max_queue_size`` entries: admission refused, nothing enqueued."""


class NotReplicated(redis.TimeoutError):
    """The master took the submission, but no replica confirmed it in time (a failover may
    be under way): it may be queued, or lost with the old master. Never acknowledged."""


class Broker:
    def __init__(self, client: redis.Redis, min_replicas: int = 0, wait_ms: int = 1000) -> None:
        """``min_replicas``: a submission with a job record is acknowledged only once that
        many replicas have it (WAIT, at most ``wait_ms``), so a failover cannot lose it."""
        self.redis = client
        self.min_replicas, self.wait_ms = min_replicas, wait_ms
        self._submit = load_script(client, "submit")
        self._start = load_script(client, "start")
        self._pull = load_script(client, "pull")
        self._watch = load_script(client, "watch")
        self._reclaim = load_script(client, "reclaim")
        self.finisher = Finisher(client)

    # --- API side -------------------------------------------------------------------

    def submit(self, entry: NewEntry) -> str:
        """Enqueue one entry; returns its reference or raises QueueFull."""
        [outcome] = self.submit_many([entry])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def submit_many(self, entries: Sequence[NewEntry]) -> list[str | Exception]:
        """Enqueue several entries in ONE round trip (a pipeline of the submit script).

        Each outcome is the entry's reference, ``QueueFull``, ``Replayed``, or the Redis
        error it met;
        the entries are independent (one refused does not refuse the others).
        """
        outcomes: list[str | Exception] = [QueueFull("")] * len(entries)
        todo = list(range(len(entries)))
        for attempt in range(2):
            durable = self.min_replicas and any(not entries[i].sync for i in todo)
            with self.redis.pipeline(transaction=False) as pipe:
                for i in todo:
                    keys_, args = entries[i].script_args()
                    pipe.evalsha(self._submit.sha, len(keys_), *keys_, *args)
                if durable:
                    pipe.execute_command("WAIT", self.min_replicas, self.wait_ms)
                replies = pipe.execute(raise_on_error=False)
            if durable and not self._replicated(replies.pop()):
                lost = NotReplicated(f"no replica confirmed it within {self.wait_ms} ms")
                replies = [  # an entry added, unconfirmed: never acknowledged
                    lost if isinstance(r, bytes) and not entries[i].sync else r
                    for i, r in zip(todo, replies, strict=True)
                ]
            missing = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, redis.exceptions.NoScriptError) and attempt == 0:
                    missing.append(i)  # a restarted or flushed server forgot the script
                elif isinstance(reply, redis.ResponseError) and "version_unavailable" in str(reply):
                    outcomes[i] = VersionUnavailable(entries[i].model, entries[i].version)
                elif isinstance(reply, Exception):
                    outcomes[i] = reply
                elif reply is None:
                    outcomes[i] = QueueFull(entries[i].model)
                elif isinstance(reply, list):
                    outcomes[i] = Replayed(reply[0].decode())
                else:
                    outcomes[i] = entry_ref(reply.decode(), entries[i].priority)
            if not missing:
                break
            self.redis.script_load(self._submit.script)
            todo = missing
        return outcomes

    def _replicated(self, acknowledged: object) -> bool:
        """Whether WAIT's reply counts enough replicas. When not, the master may have been
        demoted: idle connections are closed, so the next ones ask the sentinels again."""
        if isinstance(acknowledged, int) and acknowledged >= self.min_replicas:
            return True
        self.redis.connection_pool.disconnect()
        return False

    def watch(self, model: str, ref: str, reply_channel: str, ttl_s: int) -> JobView | None:
        """Read a job; if not final, ask for its result on ``reply_channel`` too."""
        found = self._watch(
            keys=[keys.job(model, ref), keys.watchers(model, ref)],
            args=[reply_channel, ttl_s],
        )
        return job_view(found) if found else None

    def in_stream(self, model: str, ref: str) -> bool:
        """Whether an entry is still in its stream: not yet finished (completion deletes it)."""
        entry_id, level = ref.rsplit("-", 1)
        return bool(self.redis.xrange(keys.stream(model, int(level)), entry_id, entry_id))

    def read(self, model: str, ref: str) -> JobView | None:
        found = self.redis.hmget(keys.job(model, ref), "st", "n", "pr", "res", "tn")
        return job_view(found) if found[0] else None

    def cancel(self, model: str, ref: str, ttl_s: int) -> str | None:
        """Cancel a queued job; returns its state afterwards (``cancelled`` if it was queued)."""
        entry_id, level = ref.rsplit("-", 1)
        result = codec.pack(
            {"error": {"code": "cancelled", "message": "cancelled before it ran; it never ran"}}
        )
        cancel = Finish(model, int(level), entry_id, "cancelled", result, mode="queued", version="")
        if self.finisher.finish([cancel], ttl_s):
            return "cancelled"
        state = self.redis.hget(keys.job(model, ref), "st")
        return state.decode() if state else None

    def retry_after(self, model: str, levels: int, stale_s: float) -> int:
        """Seconds until the queue should have room: its depth over the measured drain rate."""
        depth = self.queue_length(model, levels)
        now = time.time()
        rate = 0.0
        for value in self.redis.hvals(keys.drain_rates(model)):
            per_s, at = value.decode().split(",")
            if now - float(at) <= stale_s:
                rate += float(per_s)
        if rate <= 0:
            return 1  # no drain measured yet (no worker, or one just started): probe again soon
        return max(1, min(60, math.ceil(depth / rate)))

    def queue_length(self, model: str, levels: int) -> int:
        """Entries waiting or in flight, over all priority levels."""
        with self.redis.pipeline(transaction=False) as pipe:
            for p in range(1, levels + 1):
                pipe.xlen(keys.stream(model, p))
            return sum(pipe.execute())

    def lane_depths(self, model: str, batching: BatchingConfig) -> dict[str, int]:
        """Entries waiting or in flight per lane, "1", "2", … then "bulk": one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for level in batching.all_levels:
                pipe.xlen(keys.stream(model, level))
            depths = pipe.execute()
        labels = ["bulk" if lv == batching.bulk_level else str(lv) for lv in batching.all_levels]
        return dict(zip(labels, depths, strict=True))

    # --- worker side ----------------------------------------------------------------

    def ensure_groups(self, model: str, levels: Sequence[int]) -> None:
        for p in levels:
            try:
                self.redis.xgroup_create(keys.stream(model, p), keys.GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def pull(
        self, model: str, consumer: str, levels: Sequence[int], count: int, block_ms: int | None
    ) -> list[Entry]:
        """Up to ``count`` new entries from each of ``levels``, higher levels first.

        ``block_ms=None`` returns at once. BLOCK wakes as soon as an entry arrives, but
        its timeout only has the server's ``hz`` granularity: callers keep their own
        clock for short waits.
        """
        reply = self.queue_pull(self.redis, consumer, model, levels, count, block_ms)
        return pulled(model, reply)

    @staticmethod
    def queue_pull(
        client: redis.Redis | redis.client.Pipeline,
        consumer: str,
        model: str,
        levels: Sequence[int],
        count: int,
        block_ms: int | None = None,
    ) -> Any:
        """The XREADGROUP of ``pull``, on ``client`` (a pipeline: its reply goes to ``pulled``)."""
        streams = {keys.stream(model, p): ">" for p in levels}
        return client.xreadgroup(keys.GROUP, consumer, streams, count=count, block=block_ms)

    def start(self, entries: Sequence[Entry], worker_id: str) -> list[str | None]:
        """Mark pulled entries running; returns each record's state (final ones are skipped).

        A synchronous entry has no record to mark: it is runnable while delivered, and its
        completion call finishes it only while it is still pending.
        """
        tracked = [e for e in entries if e.reply is None]
        found = iter(
            self._start(keys=[keys.job(e.model, e.ref) for e in tracked], args=[worker_id])
            if tracked
            else []
        )
        states: list[str | None] = []
        for e in entries:
            state = "queued" if e.reply is not None else next(found)
            states.append(state.decode() if isinstance(state, bytes) else state)
        return states

    def complete(
        self,
        finished: Sequence[Finished],
        ttl_s: int,
        *,
        version: int | None = None,
        stats: Mapping[str, int] | None = None,
    ) -> int:
        """Write results, notify waiters, count statistics and ack: one atomic call per batch.

        ``version`` names the statistics hash the outcomes (and ``stats``) count in; None
        counts none (no version ran them, and none is loaded to count them for).
        """
        if not finished:
            return 0
        model = finished[0].entry.model
        done_ns = time.time_ns()
        items = [
            Finish(
                model,
                f.entry.priority,
                f.entry.id,
                f.state,
                codec.pack(f.result),
                version=str(f.entry.version),
                rejected=len(f.result.get("row_errors", ())),
                duration_ns=max(0, done_ns - f.entry.enqueued_ms * 1_000_000),
                batch=f.entry.batch,
                reply=f.entry.reply or "",
            )
            for f in finished
        ]
        stats_key = keys.stats(model, version) if version is not None else None
        return self.finisher.finish(items, ttl_s, stats_key=stats_key, stats=stats)

    def pinned(self, model: str, version: int) -> int:
        """Unfinished entries that asked for exactly this version."""
        return int(self.redis.get(keys.pinned(model, version)) or 0)

    def stats(self, model: str, version: int | str) -> dict[str, int]:
        raw = self.redis.hgetall(keys.stats(model, version))
        return {k.decode(): int(v) for k, v in raw.items()}

    def reclaim(
        self,
        model: str,
        priority: int,
        consumer: str,
        *,
        min_idle_ms: int,
        max_deliveries: int,
        ttl_s: int,
        count: int = 64,
    ) -> tuple[list[Entry], list[str]]:
        """Claim entries idle past ``min_idle_ms``; returns (claimed, dead-lettered refs).

        Those delivered more than ``max_deliveries`` times are finished as failed through
        the one finish step (their bulk batch counts them, their record keeps its TTL).
        """
        claimed, over = self._reclaim(
            keys=[keys.stream(model, priority)],
            args=[keys.GROUP, consumer, min_idle_ms, count, max_deliveries],
        )
        entries = [_entry(model, priority, eid, fields) for eid, fields in claimed if fields]
        dead = [_entry(model, priority, eid, fields) for eid, fields in over if fields]
        if dead:
            result = codec.pack(
                {
                    "error": {
                        "code": "dead_letter",
                        "message": f"entry was delivered more than {max_deliveries} times "
                        "without finishing (workers crashed or timed out on it); gave up",
                    }
                }
            )
            self.finisher.finish(
                [
                    Finish(
                        model,
                        priority,
                        e.id,
                        "failed",
                        result,
                        version=str(e.version),
                        batch=e.batch,
                        reply=e.reply or "",
                    )
                    for e in dead
                ],
                ttl_s,
            )
        return entries, [e.ref for e in dead]

    def take(self, model: str, consumer: str, levels: Sequence[int], rows: int) -> list[Entry]:
        """New entries, higher levels first, until they hold ``rows`` rows (the last may pass it).

        One round trip; nothing past the budget is delivered, so a worker never holds
        more than it asked for (``pull`` counts entries per level, not rows).
        """
        if rows <= 0:
            return []
        streams = [keys.stream(model, p) for p in levels]
        reply = self._pull(keys=streams, args=[keys.GROUP, consumer, rows])
        return [_entry(model, levels[int(i) - 1], eid, fields) for i, eid, fields in reply]

    def hold(self, model: str, priority: int, consumer: str, ids: Sequence[str]) -> None:
        """Reset the idle time of entries this consumer holds, without counting a delivery.

        XCLAIM ... JUSTID to itself: entries it legitimately holds (its look-ahead) are
        then never reclaimed by another worker, nor counted towards a dead-letter.
        """
        if ids:
            self.redis.xclaim(
                keys.stream(model, priority), keys.GROUP, consumer, 0, list(ids), justid=True
            )

    def own_pending(
        self, model: str, priority: int, consumer: str, known: set[str], count: int = 1000
    ) -> list[Entry]:
        """Entries delivered to ``consumer`` that it does not know it holds (``known`` ids).

        A read whose reply was lost (a timeout: Redis ran the XREADGROUP after the client
        gave up) leaves entries pending on this consumer that no one would touch until
        the visibility timeout; the worker takes them back at once after a Redis error.
        """
        stream = keys.stream(model, priority)
        pending = self.redis.xpending_range(stream, keys.GROUP, "-", "+", count, consumer)
        ids = [i for p in pending if (i := p["message_id"].decode()) not in known]
        if not ids:
            return []
        with self.redis.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.xrange(stream, i, i)
            found = pipe.execute()
        return [_entry(model, priority, eid, fields) for hit in found for eid, fields in hit]


def pulled(model: str, reply: Any) -> list[Entry]:
    """The entries of an XREADGROUP reply, higher priority levels first."""
    entries: list[Entry] = []
    for stream_key, items in sorted(reply or [], key=lambda r: _level(r[0])):
        priority = _level(stream_key)
        entries.extend(_entry(model, priority, eid, fields) for eid, fields in items)
    return entries


def now_ms() -> float:
    return time.time() * 1000.0


def _level(stream_key: bytes | str) -> int:
    key = stream_key.decode() if isinstance(stream_key, bytes) else stream_key
    return int(key.rsplit(":", 1)[1])


def _entry(model: str, priority: int, eid: bytes | str, fields: Any) -> Entry:
    if isinstance(fields, list):  # RESP from Lua: a flat field/value list
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    return Entry(
        model=model,
        priority=priority,
        id=eid.decode() if isinstance(eid, bytes) else eid,
        rows=int(fields[b"n"]),
        deadline_ms=int(fields[b"d"]),
        version=int(fields.get(b"v", 0)),
        payload=fields[b"x"],
        batch=fields[b"b"].decode() if b"b" in fields else None,
        reply=fields[b"r"].decode() if b"r" in fields else None,
        generate=fields.get(b"g"),
    )


def job_view(found: Sequence[Any]) -> JobView:
    state, rows, priority, result, *rest = found
    tenant = rest[0] if rest else None
    return JobView(
        state=state.decode(),
        rows=int(rows),
        priority=int(priority),
        result=codec.unpack(result) if result else None,
        tenant=tenant.decode() if tenant else "",
    )
