"""The run loop of one model in one worker: pull, form a micro-batch, run, finish, ack."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import redis

from batching import assembly, codec
from batching.adaptive import ExecutionModel, RateMeter, SloController
from batching.broker import Broker, Entry, Finished, now_ms
from batching.histograms import bucket_field
from batching.policy import BatchPolicy, Decision, by_priority, expired, runnable
from batching.settings import Settings
from worker.isolate import Piece, bisect, by_entry
from worker.runtime import ModelRuntime
from worker.versions import ModelVersions

log = logging.getLogger(__name__)

IDLE_BLOCK_MS = 500
"""How long an idle pull blocks: bounds how late a stop request or a reclaim check is seen."""


class ModelLoop:
    def __init__(
        self,
        broker: Broker,
        versions: ModelVersions,
        worker_id: str,
        settings: Settings,
        stop: threading.Event,
    ) -> None:
        self.broker = broker
        self.versions = versions
        self.model = versions.name
        self.batching = versions.files.config.batching
        self.worker_id = worker_id
        self.settings = settings
        self.stop = stop
        self.policy = BatchPolicy(
            max_batch_size=self.batching.max_batch_size,
            max_queue_delay_s=self.batching.max_queue_delay_ms / 1000.0,
            preferred_sizes=tuple(self.batching.preferred_batch_sizes),
        )
        self.controller = (
            SloController(self.batching.latency_slo_ms / 1000.0, self.batching.max_batch_size)
            if self.batching.latency_slo_ms
            else None
        )
        self.arrivals = RateMeter()
        self.execution = ExecutionModel()
        self.carry: list[Entry] = []
        self.reclaim_every_s = min(self.settings.visibility_timeout_s / 2, 5.0)
        self._next_reclaim = 0.0
        self.entry_rows = self.batching.max_batch_size
        """Rows per entry lately pulled: turns a row budget into a count of entries to claim."""
        self.batches = 0
        self.entries_done = 0
        self.stats: dict[str, int] = {}
        self.lost_replies = False
        """A call failed: a pull's reply may have been lost with entries in it."""
        self.unwritten: list[tuple[list[Finished], dict[str, Any]]] = []
        """Outcomes whose completion call met a Redis error: written before anything else.
        Writing one twice is harmless (a final record is never written again); dropping one
        would leave its entry pending until the visibility timeout, past many deadlines."""

    def run(self) -> None:
        self.broker.ensure_groups(self.model, self.batching.all_levels)
        log.info("worker %s serving %s", self.worker_id, self.model)
        while not self.stop.is_set():
            try:
                self.step()
            except Exception:  # a Redis hiccup or a bug must not kill the worker thread
                log.exception("model loop %s failed; retrying", self.model)
                self.lost_replies = True
                time.sleep(0.5)
        self.write_unwritten()
        while self.carry:  # entries already delivered to us are ours to finish, once each
            held, self.carry = self.carry, []
            self.process(self.take_batch(held))  # runs one batch, carries the rest

    def complete(self, finished: list[Finished], **kwargs: Any) -> None:
        """Write a batch's outcomes; on a Redis error keep them to write again, then raise."""
        try:
            self.broker.complete(finished, self.settings.result_ttl_s, **kwargs)
        except redis.RedisError:
            self.unwritten.append((finished, kwargs))
            raise

    def take_back_own(self) -> None:
        """After a failed call, hold again what was delivered to this worker unseen."""
        held = [*self.carry, *(f.entry for finished, _ in self.unwritten for f in finished)]
        for level in self.batching.all_levels:
            known = {e.id for e in held if e.priority == level}
            found = self.broker.own_pending(self.model, level, self.worker_id, known)
            if found:
                log.warning(
                    "%s p%d: took back %d entries of a lost reply", self.model, level, len(found)
                )
            self.carry += found
        self.lost_replies = False

    def write_unwritten(self) -> None:
        while self.unwritten:
            finished, kwargs = self.unwritten[0]
            self.broker.complete(finished, self.settings.result_ttl_s, **kwargs)
            self.unwritten.pop(0)

    def step(self) -> None:
        self.write_unwritten()
        if self.lost_replies:
            self.take_back_own()
        if time.monotonic() >= self._next_reclaim:
            self._next_reclaim = time.monotonic() + self.reclaim_every_s
            self.carry += self.reclaim()
        entries = self.form_batch()
        if entries:
            self.process(entries)

    @property
    def budget_rows(self) -> int:
        """Rows this worker may still take: its next batch plus one batch of look-ahead."""
        return 2 * self.batching.max_batch_size - sum(e.rows for e in self.carry)

    def reclaim(self) -> list[Entry]:
        """Claim what other (dead or hung) consumers left idle, never what this one holds.

        What it holds is first marked fresh (no delivery counted), so neither it nor another
        worker reclaims its look-ahead; and it claims no more than its budget.
        """
        claimed: list[Entry] = []
        held = {e.ref for e in self.carry}
        for level in self.batching.all_levels:
            self.broker.hold(
                self.model, level, self.worker_id, [e.id for e in self.carry if e.priority == level]
            )
            room = self.budget_rows - sum(e.rows for e in claimed)
            if room <= 0:
                break
            entries, dead = self.broker.reclaim(
                self.model,
                level,
                self.worker_id,
                min_idle_ms=int(self.settings.visibility_timeout_s * 1000),
                max_deliveries=self.settings.max_deliveries,
                ttl_s=self.settings.result_ttl_s,
                count=max(1, room // self.entry_rows),
            )
            entries = [e for e in entries if e.ref not in held]
            if entries or dead:
                log.warning(
                    "%s p%d: reclaimed %d idle entries, dead-lettered %d",
                    self.model,
                    level,
                    len(entries),
                    len(dead),
                )
            claimed += entries
        return claimed

    def adapt(self) -> None:
        """With a latency SLO, retune the batch cap and delay from this worker's measurements."""
        if self.controller is not None:
            setting = self.controller.decide(self.arrivals.rate(time.monotonic()), self.execution)
            self.policy.fill_target = setting.max_batch_size
            self.policy.max_queue_delay_s = setting.max_queue_delay_s

    def pull(self, rows: int, block_ms: int | None, *, bulk: bool = False) -> list[Entry]:
        """Online work first, up to ``rows`` rows; one bulk entry only when asked and no
        online work waits.

        A bulk entry is one batch (``bulk_batch_size`` rows): pulling more would only
        hold them here while other workers idle, and make an online arrival wait longer.
        ``block_ms`` waits on every lane (any arrival wakes it) when all were empty.
        """
        b = self.batching
        entries = self.broker.take(self.model, self.worker_id, b.online_levels, rows)
        if not entries and bulk:
            entries = self.broker.pull(self.model, self.worker_id, [b.bulk_level], 1, None)
        if not entries and block_ms is not None:
            entries = self.broker.pull(self.model, self.worker_id, b.all_levels, 1, block_ms)
        if entries:
            self.entry_rows = max(e.rows for e in entries)
        if entries and self.controller is not None:
            self.arrivals.add(time.monotonic(), sum(e.rows for e in entries))
        return entries

    def form_batch(self) -> list[Entry]:
        """Gather entries per the batching policy; returns at most one batch, carries the rest."""
        self.adapt()
        cap = self.batching.max_batch_size
        room = self.budget_rows  # the next batch and one batch of look-ahead, in rows
        entries, self.carry = self.carry, []
        # Held entries may be of a lower level than what arrived meanwhile: look first.
        idle = not entries
        entries += self.pull(room, IDLE_BLOCK_MS if idle else None, bulk=idle)
        if not entries:
            return []
        state = self.policy.open(time.monotonic(), len(entries), sum(e.rows for e in entries))
        while True:
            decision, wait_s = self.policy.decide(state, time.monotonic())
            if decision is Decision.RUN:
                break
            time.sleep(wait_s)
            more = self.pull(2 * cap - sum(e.rows for e in entries), None)
            self.policy.add(state, len(more), sum(e.rows for e in more))
            entries += more
        return self.take_batch(entries)

    def take_batch(self, entries: list[Entry]) -> list[Entry]:
        """The leading entries that fit ``max_batch_size`` rows (at least one); the rest carry.

        Strict priority: level 1 before level 2, first in first out within a level.
        """
        entries = by_priority(entries)
        cap, rows, n = self.batching.max_batch_size, 0, 0
        for e in entries:
            if n and rows + e.rows > cap:
                break
            rows += e.rows
            n += 1
        self.carry = entries[n:] + self.carry
        return entries[:n]

    def process(self, entries: Sequence[Entry]) -> None:
        cycle_started = time.perf_counter()
        pulled_ms = now_ms()
        try:
            states = self.broker.start(entries, self.worker_id)
        except redis.RedisError:  # nothing ran: they are still ours, to run once Redis answers
            self.carry = list(entries) + self.carry
            raise
        finished: list[Finished] = []
        live: list[Entry] = []
        for entry, state in zip(entries, states, strict=True):
            if not runnable(state):
                # a redelivered duplicate or a record that is gone: only acknowledge it
                finished.append(Finished(entry, "failed", {}))
                continue
            if expired(entry, pulled_ms):
                message = "the job's deadline passed before it was batched; it never ran"
                finished.append(Finished(entry, "expired", error_result("expired", message)))
                continue
            try:
                entry.inputs  # noqa: B018 - decode now so one bad entry fails alone
            except codec.CodecError as exc:
                finished.append(Finished(entry, "failed", error_result("bad_entry", str(exc))))
                continue
            live.append(entry)
        by_version: dict[int, list[Entry]] = {}
        runtimes: dict[int, ModelRuntime] = {}
        for entry in live:
            runtime = self.versions.runtime_for(entry.version)
            if runtime is None:
                message = f"version {entry.version or 'newest'} of {self.model} is not loaded"
                finished.append(
                    Finished(entry, "failed", error_result("version_unavailable", message))
                )
                continue
            by_version.setdefault(runtime.version, []).append(entry)
            runtimes[runtime.version] = runtime
        if not by_version:  # nothing ran: count it where a version that is read counts it
            newest = self.versions.newest()
            self.complete(finished, version=newest.version if newest is not None else None)
        lost: redis.RedisError | None = None
        for version, group in by_version.items():  # normally one group: the newest version
            done = self.run_batch(group, pulled_ms, runtimes[version])
            try:
                self.complete(finished + done, version=version, stats=self.stats)
            except redis.RedisError as exc:  # kept in self.unwritten; run the other groups
                lost = exc
            finished = []
        if lost is not None:
            raise lost
        self.policy.ran(sum(e.rows for e in live))
        if live and self.controller is not None:  # the whole cycle, Redis included
            self.execution.add(sum(e.rows for e in live), time.perf_counter() - cycle_started)
        self.batches += 1
        self.entries_done += len(entries)

    def _result(
        self,
        entry: Entry,
        outputs: dict,
        pulled_ms: float,
        compute_ms: float,
        batch_size: int,
        runtime: ModelRuntime,
    ) -> dict:
        timings = {
            "queue_ms": round(max(0.0, pulled_ms - entry.enqueued_ms), 3),
            "compute_ms": round(compute_ms, 3),
            "batch_size": batch_size,
            "worker": self.worker_id,
        }
        return {
            "outputs": {k: codec.tensor_to_wire(v) for k, v in outputs.items()},
            "timings": timings,
            "version": runtime.version,
        }

    def isolate(
        self, entries: Sequence[Entry], pulled_ms: float, runtime: ModelRuntime
    ) -> list[Finished]:
        """Bisect a failed batch: only the rows the model rejects fail, with its message."""

        def run(pieces: Sequence[Piece]) -> list[dict]:
            batch = assembly.stack([p.inputs() for p in pieces], runtime.pad_values)
            return assembly.split(runtime.run(batch), [p.rows for p in pieces])

        started = time.perf_counter()
        results = [
            r
            for group in _pieces(entries, self.batching.max_batch_size)
            for r in bisect(run, group)
        ]
        compute_ms = (time.perf_counter() - started) * 1000.0
        merged = by_entry(results)
        finished = []
        for entry in entries:
            outcome = merged[entry.ref]
            if outcome.outputs is None:
                message = next(iter(outcome.row_errors.values()))
                finished.append(Finished(entry, "failed", error_result("model_error", message)))
                continue
            result = self._result(
                entry, outcome.outputs, pulled_ms, compute_ms, sum(e.rows for e in entries), runtime
            )
            if outcome.row_errors:
                result["row_errors"] = {
                    str(row): {"code": "model_error", "message": message}
                    for row, message in outcome.row_errors.items()
                }
            finished.append(Finished(entry, "done", result))
        return finished

    def run_batch(
        self, entries: Sequence[Entry], pulled_ms: float, runtime: ModelRuntime
    ) -> list[Finished]:
        """Run the entries as one batch; also leaves this batch's statistics in ``self.stats``."""
        cap = self.batching.max_batch_size
        rows = [e.rows for e in entries]
        t0 = time.perf_counter_ns()
        try:
            if len(entries) == 1 and rows[0] > cap:  # an oversized entry runs alone, in chunks
                parts = assembly.chunks(entries[0].inputs, rows[0], cap)
                t1 = time.perf_counter_ns()
                outputs = [runtime.run(p) for p in parts]
                t2 = time.perf_counter_ns()
                per_entry = [assembly.concat(outputs)]
                batch_size = cap
            else:
                batch = assembly.stack([e.inputs for e in entries], runtime.pad_values)
                t1 = time.perf_counter_ns()
                output = runtime.run(batch)
                t2 = time.perf_counter_ns()
                per_entry = assembly.split(output, rows)
                batch_size = sum(rows)
        except Exception as exc:  # the model rejected the batch: find the rows at fault
            log.warning("%s: batch of %d rows failed (%s); isolating", self.model, sum(rows), exc)
            self.stats = {}
            return self.isolate(entries, pulled_ms, runtime)
        compute_ms = (t2 - t0) / 1e6
        finished = [
            Finished(
                entry,
                "done",
                self._result(entry, outputs_, pulled_ms, compute_ms, batch_size, runtime),
            )
            for entry, outputs_ in zip(entries, per_entry, strict=True)
        ]
        t3 = time.perf_counter_ns()
        self.stats = batch_statistics(entries, pulled_ms, batch_size, t1 - t0, t2 - t1, t3 - t2)
        return finished


def _pieces(entries: Sequence[Entry], cap: int) -> list[list[Piece]]:
    """The batch as pieces, in runs of at most ``cap`` rows (an oversized entry in chunks)."""
    if len(entries) == 1 and entries[0].rows > cap:
        e = entries[0]
        return [[Piece(e, a, min(a + cap, e.rows))] for a in range(0, e.rows, cap)]
    return [[Piece(e, 0, e.rows) for e in entries]]


def batch_statistics(
    entries: Sequence[Entry],
    pulled_ms: float,
    batch_size: int,
    input_ns: int,
    infer_ns: int,
    output_ns: int,
) -> dict[str, int]:
    """Triton's statistics for one executed batch: per request, and per batch size."""
    n = len(entries)
    waits = [max(0.0, (pulled_ms - e.enqueued_ms) / 1000.0) for e in entries]
    queue_ns = int(sum(waits) * 1e9)
    buckets: dict[str, int] = {}
    for wait in waits:
        field = bucket_field("queue", wait)
        buckets[field] = buckets.get(field, 0) + 1
    compute = bucket_field("compute", (input_ns + infer_ns + output_ns) / 1e9)
    buckets[compute] = buckets.get(compute, 0) + n
    return buckets | {
        "queue_count": n,
        "queue_ns": queue_ns,
        "compute_input_count": n,
        "compute_input_ns": n * input_ns,
        "compute_infer_count": n,
        "compute_infer_ns": n * infer_ns,
        "compute_output_count": n,
        "compute_output_ns": n * output_ns,
        "inference_count": sum(e.rows for e in entries),
        "execution_count": 1,
        f"batch:{batch_size}:count": 1,
        f"batch:{batch_size}:compute_input_ns": input_ns,
        f"batch:{batch_size}:compute_infer_ns": infer_ns,
        f"batch:{batch_size}:compute_output_ns": output_ns,
        "last_inference": int(time.time() * 1000),
    }


def error_result(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}
