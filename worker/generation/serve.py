"""The run loop of one generation model in one worker: the engine fed from Redis.

Each turn of the loop:

1. **admit**: while the running batch has free slots, pull that many entries (higher
   priorities first; blocking only when nothing runs), mark them running, drop those
   past their deadline or already final, and admit the rest in one encoder pass. An
   entry whose token stream already has events was begun by a worker that was lost: its
   stream gets a ``restart`` event and the request runs again from the start (its seed
   was fixed at submission, so it writes the same text);
2. **step**: one decoder call for every active sequence;
3. **write**: in one round trip, every sequence's new token event, and the set of
   requests asked to stop (a cancel), which are retired before the next step;
4. **finish**: retired sequences (stop, length, cancel, deadline) are completed through
   the one completion step (record, statistics, ack), then their ``done`` event is
   appended: a client that sees ``done`` can read the record.

Entries it runs are re-marked fresh (``Broker.hold``) every few seconds, so a long
generation is never reclaimed from a live worker; one whose worker died is reclaimed
by another after the visibility timeout and runs again there. On stop it admits nothing
more and finishes what it runs.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import redis

from batching import keys, tokens
from batching.broker import Broker, Entry, Finished, now_ms, pulled
from batching.policy import expired, runnable
from batching.settings import Settings
from worker.generation.engine import Request, TokenEvent
from worker.generation.runtime import GenerationRuntime
from worker.loop import error_result
from worker.versions import ModelVersions

log = logging.getLogger(__name__)

IDLE_BLOCK_MS = 500
"""How long an idle pull blocks: bounds how late a stop request is seen."""
STREAM_EXTRA = 16
"""A token stream holds up to max_new_tokens + this many events (restart, done)."""
STOP_REQUESTS_KEEP_S = 3600
"""Stop requests older than this are dropped (their request finished on its own)."""

REASON_STATE = {"stop": "done", "length": "done", "cancelled": "cancelled", "deadline": "expired"}


@dataclass
class Running:
    """One sequence while it generates: an online entry, or one row of a bulk entry."""

    entry: Entry
    pulled_ms: float
    runtime: GenerationRuntime
    """The version it runs on, to its end (a newer one loaded meanwhile takes new work)."""
    row: int | None = None
    """The row of a bulk entry (its tokens are not streamed); None for an online entry."""
    tokens: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    first_token_ms: float | None = None
    announced: bool = False
    """Whether its restart check ran (``announce_restarts``)."""

    @property
    def key(self) -> str:
        return self.entry.ref if self.row is None else f"{self.entry.ref}#{self.row}"


@dataclass
class BulkEntry:
    """A bulk entry whose rows run as sequences of their own; finished once all have."""

    entry: Entry
    results: list[dict[str, Any] | None]

    def done(self) -> bool:
        return all(r is not None for r in self.results)


class GenerationLoop:
    def __init__(
        self,
        broker: Broker,
        versions: ModelVersions,
        worker_id: str,
        settings: Settings,
        stop: threading.Event,
    ) -> None:
        self.broker = broker
        self.redis = broker.redis
        self.versions = versions
        self.model = versions.name
        self.batching = versions.files.config.batching
        self.worker_id = worker_id
        self.settings = settings
        self.stop = stop
        self.running: dict[str, Running] = {}
        self.pending: list[Entry] = []
        """Entries delivered to this worker and not yet started (pulled with a step's
        writes, or more than the free slots): started as slots free, held meanwhile."""
        self.ready: list[tuple[Running, Request]] = []
        """Online requests started but not yet admitted (their version's batch was full)."""
        self.backlog: list[tuple[Running, Request]] = []
        """Rows of bulk entries started but not yet admitted: online requests go first."""
        self.bulk: dict[str, BulkEntry] = {}
        self.batches = 0
        """Decoder steps run (what ``batches`` counts for a classifier's loop)."""
        self.entries_done = 0
        self.hold_every_s = min(settings.visibility_timeout_s / 3, 5.0)
        self._next_hold = 0.0

    @property
    def runtime(self) -> GenerationRuntime | None:
        """The newest version: what a request that names none starts on."""
        runtime = self.versions.newest()
        return runtime if isinstance(runtime, GenerationRuntime) else None

    @property
    def holding(self) -> bool:
        """Whether anything was delivered to this worker and has not finished."""
        return bool(self.running or self.ready or self.backlog or self.pending)

    def run(self) -> None:
        self.broker.ensure_groups(self.model, self.batching.all_levels)
        log.info("worker %s generating with %s", self.worker_id, self.model)
        while not (self.stop.is_set() and not self.holding):
            try:
                self.turn()
            except Exception:  # a Redis hiccup or a bug must not kill the worker thread
                log.exception("generation loop %s failed; retrying", self.model)
                time.sleep(0.5)

    def turn(self) -> None:
        newest = self.runtime
        if newest is None and not self.holding:  # every version unloaded: nothing to run on
            self.stop.wait(IDLE_BLOCK_MS / 1000)
            return
        room = newest.engine.free_slots if newest is not None else 0
        reclaimed: list[Entry] = []
        if time.monotonic() >= self._next_hold:
            self._next_hold = time.monotonic() + self.hold_every_s
            self.hold()
            if not self.stop.is_set() and room > 0:
                reclaimed = self.reclaim(room)
        self.admit(room, reclaimed)
        runtimes = {id(r.runtime): r.runtime for r in self.running.values()}.values()
        if not runtimes:
            return
        events: list[TokenEvent] = []
        for runtime in runtimes:
            try:
                events += runtime.engine.step()
            except Exception as exc:  # the whole batch of this version fails, not the loop
                log.exception("%s v%d: decoder step failed", self.model, runtime.version)
                keys_ = list(runtime.engine.active)
                for key in keys_:
                    runtime.engine.cancel(key, "error")
                self.finish(
                    [TokenEvent(k, None, "", "error") for k in keys_],
                    error_result("model_error", str(exc)),
                )
        self.batches += 1
        room = newest.engine.free_slots if newest is not None else 0
        stopping = self.write(events, room)
        finished = [e for e in events if e.finish_reason is not None]
        now = now_ms()
        for key, running in list(self.running.items()):
            if key in stopping:
                finished.append(running.runtime.engine.cancel(key, "cancelled"))
            elif expired(running.entry, now):
                finished.append(running.runtime.engine.cancel(key, "deadline"))
        self.finish([e for e in finished if e is not None])

    def admit(self, room: int, reclaimed: list[Entry]) -> None:
        """Fill free slots: online requests first (reclaimed from a dead worker, then those
        delivered with the last step's writes), then rows of bulk entries, each into the
        batch of the version it runs on. Only an idle worker pulls here (blocking until
        work arrives); a busy one pulls in the same round trip as its token writes
        (``write``). On stop, only what was delivered runs."""
        self.pending = reclaimed + self.pending
        if not self.holding and not self.stop.is_set() and room > 0:
            self.pending = self.pull(room, IDLE_BLOCK_MS)
        entries, self.pending = self.pending[:room], self.pending[room:]
        self.ready += self.start(entries)
        self.announce_restarts([r for r, _ in self.ready])
        free: dict[int, int] = {}
        taken: dict[int, list[tuple[Running, Request]]] = {}
        left: list[tuple[Running, Request]] = []
        for item in self.ready + self.backlog:
            engine = item[0].runtime.engine
            slots = free.setdefault(id(engine), engine.free_slots)
            if slots > 0:
                free[id(engine)] = slots - 1
                taken.setdefault(id(engine), []).append(item)
            else:
                left.append(item)
        self.ready = [x for x in left if x[0].row is None]
        self.backlog = [x for x in left if x[0].row is not None]
        for group in taken.values():
            for running, _ in group:
                self.running[running.key] = running
            try:
                group[0][0].runtime.engine.admit([request for _, request in group])
            except Exception as exc:  # a bad input the encoder refuses fails its group alone
                log.warning("%s: encoder refused %d requests: %s", self.model, len(group), exc)
                error = error_result("model_error", str(exc))
                self.finish([TokenEvent(r.key, None, "", "error") for r, _ in group], error)

    def start(self, entries: list[Entry]) -> list[tuple[Running, Request]]:
        """Mark pulled entries running, each on its version (the one it asked for, else the
        newest); finish at once those that must not run. Returns the online sequences to
        admit; a bulk entry's rows join the backlog."""
        if not entries:
            return []
        pulled = now_ms()
        states = self.broker.start(entries, self.worker_id)
        refused: list[Finished] = []
        online: list[tuple[Running, Request]] = []
        for entry, state in zip(entries, states, strict=True):
            runtime = self.versions.runtime_for(entry.version)
            if not runnable(state):
                refused.append(Finished(entry, "failed", {}))  # a duplicate: only acknowledged
            elif expired(entry, pulled):
                message = "the request's deadline passed before it started; it never ran"
                refused.append(Finished(entry, "expired", error_result("expired", message)))
            elif not isinstance(runtime, GenerationRuntime):
                message = f"version {entry.version or 'newest'} of {self.model} is not loaded"
                refused.append(
                    Finished(entry, "failed", error_result("version_unavailable", message))
                )
            else:
                try:
                    requests = _requests(entry)
                except (ValueError, KeyError, TypeError) as exc:
                    refused.append(Finished(entry, "failed", error_result("bad_entry", str(exc))))
                    continue
                if entry.batch is None:
                    online.append((Running(entry, pulled, runtime), requests[0]))
                else:
                    self.bulk[entry.ref] = BulkEntry(entry, [None] * len(requests))
                    rows = [Running(entry, pulled, runtime, row=i) for i in range(len(requests))]
                    self.backlog += [
                        (r, replace(q, key=r.key)) for r, q in zip(rows, requests, strict=True)
                    ]
        if refused:
            newest = self.runtime
            version = newest.version if newest is not None else None
            self.broker.complete(refused, self.settings.result_ttl_s, version=version)
        return online

    def announce_restarts(self, online: list[Running]) -> None:
        """A request whose stream already has events was begun by a lost worker: say so
        (once: before it is admitted here)."""
        online = [r for r in online if not r.announced]
        for running in online:
            running.announced = True
        if not online:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for running in online:
                pipe.exists(keys.tokens(self.model, running.key))
            begun = pipe.execute()
        restarts = [r.key for r, seen in zip(online, begun, strict=True) if seen]
        if restarts:
            reason = {"reason": "the worker running it was lost; it runs again"}
            self._append({key: [("restart", reason)] for key in restarts})
            log.warning("%s: running %d lost requests again", self.model, len(restarts))

    def pull(self, room: int, block_ms: int | None) -> list[Entry]:
        """Online entries for ``room`` slots; else one bulk entry when no bulk row waits."""
        online = self.broker.pull(
            self.model, self.worker_id, self.batching.online_levels, room, block_ms
        )
        if online or self.backlog:
            return online
        return self.broker.pull(self.model, self.worker_id, [self.batching.bulk_level], 1, None)

    def write(self, events: list[TokenEvent], room: int) -> set[str]:
        """Append this step's tokens and, in the same round trip, pull entries for ``room``
        free slots (into ``pending``); return the running requests asked to stop."""
        now = now_ms()
        batch: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for event in events:
            running = self.running[event.key]
            if running.first_token_ms is None:
                running.first_token_ms = now
            if event.token_id is not None:
                running.tokens.append(event.token_id)
            running.text.append(event.piece)
            if running.row is not None:
                continue  # a bulk row: its results are read from the batch, not streamed
            index = len(running.tokens) - 1
            batch[event.key] = [
                ("token", {"index": index, "id": event.token_id, "text": event.piece})
            ]
        pulls: list[tuple[list[int], int]] = []
        if room > 0 and not (self.stop.is_set() or self.pending or self.ready):
            pulls.append((list(self.batching.online_levels), room))
            if not self.backlog:  # one bulk entry at a time: its rows wait behind online work
                pulls.append(([self.batching.bulk_level], 1))
        with self.redis.pipeline(transaction=False) as pipe:
            self._queue_events(pipe, batch)
            pipe.zrange(keys.stopping(self.model), 0, -1)
            for levels, count in pulls:
                self.broker.queue_pull(pipe, self.worker_id, self.model, levels, count)
            replies = pipe.execute()
        for reply in replies[len(replies) - len(pulls) :]:
            self.pending += pulled(self.model, reply)
        stopping = replies[len(replies) - len(pulls) - 1]
        return {ref.decode() for ref in stopping} & self.running.keys()

    def _queue_events(
        self, pipe: redis.client.Pipeline, events: dict[str, list[tuple[str, dict[str, Any]]]]
    ) -> None:
        """Queue token events; a stream's expiry is set with its first token and its final
        event (and a restart), not with every token."""
        cap = (self.runtime.spec.max_new_tokens if self.runtime else 0) + STREAM_EXTRA
        ttl = self.settings.result_ttl_s
        for ref, items in events.items():
            first_or_last = items[0][0] != "token" or items[-1][0] != "token"
            first_or_last = first_or_last or items[0][1].get("index") == 0
            expiry = ttl if first_or_last else None
            tokens.append(pipe, self.model, ref, items, cap=cap, ttl_s=expiry)

    def _append(self, events: dict[str, list[tuple[str, dict[str, Any]]]]) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            self._queue_events(pipe, events)
            pipe.execute()

    def finish(self, events: list[TokenEvent], error: dict[str, Any] | None = None) -> None:
        """Complete retired sequences (one call per version that ran them), then append
        each one's ``done`` event. A bulk entry completes once its last row has retired."""
        if not events:
            return
        finished: dict[int, list[Finished]] = {}
        done_events: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        now = now_ms()
        for event in events:
            running = self.running.pop(event.key)
            runtime = running.runtime
            if event.token_id is None and event.piece:  # a cancel flushed held-back text
                running.text.append(event.piece)
            reason = event.finish_reason or "stop"
            state = "failed" if error else REASON_STATE.get(reason, "done")
            result = _result(running, reason, now, runtime.version, self.worker_id)
            if error:
                result.update(error)
            elif state == "expired":
                result.update(error_result("expired", "the request's deadline passed while it ran"))
            if running.row is not None:
                bulk = self.bulk[running.entry.ref]
                bulk.results[running.row] = {"status": state, **result}
                if bulk.done():
                    del self.bulk[running.entry.ref]
                    done = Finished(bulk.entry, "done", _bulk_result(bulk.results))
                    finished.setdefault(runtime.version, []).append(done)
                continue
            finished.setdefault(runtime.version, []).append(Finished(running.entry, state, result))
            body = {"status": state, **result["generation"], "timings": result["timings"]}
            body["version"] = str(runtime.version)
            if "error" in result:
                body["error"] = result["error"]
            done_events[event.key] = [("done", body)]
            if event.token_id is None and event.piece:  # the streamed pieces add up to the text
                tail = {"index": len(running.tokens) - 1, "id": None, "text": event.piece}
                done_events[event.key].insert(0, ("token", tail))
        for version, group in finished.items():
            self.broker.complete(group, self.settings.result_ttl_s, version=version)
        if done_events:
            self._append(done_events)
            self.redis.zrem(keys.stopping(self.model), *done_events)
        self.entries_done += sum(len(group) for group in finished.values())

    def reclaim(self, room: int) -> list[Entry]:
        """Claim up to ``room`` entries other (dead) workers left idle past the visibility
        timeout; never one this worker runs (those were just held)."""
        claimed: list[Entry] = []
        for level in self.batching.online_levels:
            if room - len(claimed) <= 0:
                break
            entries, dead = self.broker.reclaim(
                self.model,
                level,
                self.worker_id,
                min_idle_ms=int(self.settings.visibility_timeout_s * 1000),
                max_deliveries=self.settings.max_deliveries,
                ttl_s=self.settings.result_ttl_s,
                count=room - len(claimed),
            )
            claimed += [e for e in entries if e.ref not in self.running]
            if entries or dead:
                log.warning(
                    "%s p%d: reclaimed %d idle requests, dead-lettered %d",
                    self.model,
                    level,
                    len(entries),
                    len(dead),
                )
        return claimed

    def hold(self) -> None:
        """Keep what runs here from being reclaimed; drop stop requests nobody acted on."""
        by_level: dict[int, set[str]] = {}
        held = [r.entry for r in self.running.values()] + [b.entry for b in self.bulk.values()]
        held += self.pending + [r.entry for r, _ in self.ready]
        for entry in held:
            by_level.setdefault(entry.priority, set()).add(entry.id)
        for level, ids in by_level.items():
            self.broker.hold(self.model, level, self.worker_id, sorted(ids))
        self.redis.zremrangebyscore(
            keys.stopping(self.model), 0, time.time() - STOP_REQUESTS_KEEP_S
        )


def _requests(entry: Entry) -> list[Request]:
    """One request per row: an online entry has one; a bulk entry's 'g' lists each row's."""
    if entry.generate is None:
        raise ValueError("not a generation request (POST /v1/models/<m>/generate)")
    params = orjson.loads(entry.generate)
    rows = params if isinstance(params, list) else [params]
    if len(rows) != entry.rows:
        raise ValueError(f"{len(rows)} rows of parameters for {entry.rows} rows of inputs")
    inputs = entry.inputs
    return [
        Request(
            key=entry.ref,
            inputs={name: array[i : i + 1] for name, array in inputs.items()},
            max_new_tokens=int(p["max_new_tokens"]),
            temperature=float(p["temperature"]),
            top_k=int(p["top_k"]),
            top_p=float(p["top_p"]),
            seed=int(p["seed"]),
            stop=tuple(p["stop"]),
            ignore_eos=bool(p.get("ignore_eos", False)),
        )
        for i, p in enumerate(rows)
    ]


def _bulk_result(rows: list[dict[str, Any] | None]) -> dict[str, Any]:
    """A bulk entry's result: each row's generation (and error), read line by line."""
    return {
        "generation": [
            {
                **r["generation"],
                "status": r["status"],
                **({"error": r["error"]} if "error" in r else {}),
            }
            for r in rows
            if r is not None
        ],
        "version": next(r["version"] for r in rows if r is not None),
    }


def _result(running: Running, reason: str, now: float, version: int, worker: str) -> dict[str, Any]:
    started = running.pulled_ms
    first = running.first_token_ms
    seconds = max(1e-6, (now - started) / 1000)
    return {
        "generation": {
            "text": "".join(running.text),
            "tokens": running.tokens,
            "finish_reason": reason,
        },
        "timings": {
            "queue_ms": round(max(0.0, started - running.entry.enqueued_ms), 3),
            "time_to_first_token_ms": round(first - running.entry.enqueued_ms, 3)
            if first is not None
            else None,
            "generate_ms": round(now - started, 3),
            "tokens_per_s": round(len(running.tokens) / seconds, 2),
            "worker": worker,
        },
        "version": version,
    }
