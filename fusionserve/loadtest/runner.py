"""The asyncio load generator: closed loop (N workers) or open loop (Poisson arrivals).

Each sweep point gets its own connection pool (:mod:`fusionserve.loadtest.http`, far cheaper per
request than httpx) and never retries: a refusal is a result here, not something to
hide. Error answers are parsed by the SDK (:func:`fusionserve.client.errors.error_from_response`),
so they are named as the SDK names them. ``--api v1`` submits and then long-polls the
job, so latency runs from the (scheduled) send to the final result; ``--api v2`` is one
synchronous KServe V2 call. Every loop is bounded: by its count or
duration, by ``MAX_REQUESTS``/``MAX_DURATION_S``, and by a hard wall-time cap after
which requests still in flight are cancelled and counted as ``cancelled``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from fusionserve.client import FusionServeError
from fusionserve.client.errors import error_from_response
from fusionserve.client.types import FINAL_STATES, Timings
from fusionserve.loadtest.http import Pool, Response
from fusionserve.loadtest.payloads import Payloads
from fusionserve.loadtest.progress import Progress
from fusionserve.loadtest.schedule import Budget, arrival_times
from fusionserve.loadtest.stats import Record, RunSummary, summarize

clock = time.perf_counter


@dataclass
class RunSettings:
    """One sweep point's settings (the CLI builds these from its flags)."""

    url: str
    model: str
    api: str = "v1"
    mode: str = "closed"
    concurrency: int = 1
    rate: float | None = None
    duration: float | None = None
    requests: int | None = None
    wait_s: float = 30.0
    timeout_s: float = 60.0
    max_time_s: float = 600.0
    max_in_flight: int = 10_000
    connections: int | None = None
    seed: int = 0
    progress: bool = True

    @property
    def label(self) -> str:
        return f"c={self.concurrency}" if self.mode == "closed" else f"r={self.rate:g}"

    @property
    def hard_cap_s(self) -> float:
        """Wall time after which this point stops, in-flight requests included."""
        if self.duration is None:
            return self.max_time_s
        return min(self.max_time_s, self.duration + self.timeout_s + 5.0)


def _error_key(exc: BaseException) -> str:
    if isinstance(exc, FusionServeError):
        return f"{exc.status} {exc.code}" if exc.status else exc.code
    return type(exc).__name__


class Run:
    """One sweep point: sends, records, and reports progress."""

    def __init__(self, settings: RunSettings, payloads: Payloads, pool: Pool) -> None:
        self.s = settings
        self.payloads = payloads
        self.pool = pool
        self.records: list[Record] = []
        self.sent = 0
        self.errors = 0
        self.progress = Progress(settings.label, enabled=settings.progress)
        model = quote(settings.model, safe="")
        self.path = f"/{settings.api}/models/{model}/infer"

    async def _call(
        self, method: str, target: str, body: bytes | None, ok: int, give_up_at: float
    ) -> dict[str, Any]:
        remaining = give_up_at - clock()
        if remaining <= 0:
            raise TimeoutError("no final answer within the request timeout")
        response: Response = await self.pool.request(method, target, body, remaining)
        if response.status != ok:
            raise error_from_response(
                httpx.Response(response.status, headers=response.headers, content=response.body)
            )
        return orjson.loads(response.body)

    async def send(self, i: int) -> Timings | None:
        """One request to its final answer; raises on an error answer."""
        body = self.payloads.body(i)
        give_up_at = clock() + self.s.timeout_s
        if self.s.api == "v2":
            answer = await self._call("POST", self.path, body, 200, give_up_at)
            if "outputs" not in answer:
                raise ValueError("a V2 answer without outputs")
            return None
        answer = await self._call("POST", self.path, body, 202, give_up_at)
        # the items of one submission are one queue entry, finished together: poll the first
        job_id = quote(answer["job_id"] if "job_id" in answer else answer["job_ids"][0], safe="")
        while True:
            wait = min(self.s.wait_s, max(give_up_at - clock(), 0.001))
            job = await self._call(
                "GET", f"/v1/jobs/{job_id}?wait={wait:.3f}", None, 200, give_up_at
            )
            if job["status"] in FINAL_STATES:
                break
        timings = Timings.from_json(job["timings"]) if "timings" in job else None
        if job["status"] != "done":
            error = job.get("error") or {}
            raise JobFailed(f"job {job['status']}: {error.get('code', '?')}", timings)
        return timings

    async def execute(self, scheduled: float, i: int) -> None:
        sent = clock()
        self.sent += 1
        record = Record(scheduled, sent, sent, self.payloads.items)
        timings: Timings | None = None
        try:
            timings = await self.send(i)
        except asyncio.CancelledError:
            record.error = "cancelled"
            raise
        except JobFailed as exc:
            record.error, timings = str(exc), exc.timings
        except Exception as exc:  # a load test counts failures; it does not stop at them
            record.error = _error_key(exc)
        finally:
            record.finished = clock()
            if timings is not None:
                record.batch_size = timings.batch_size
                record.queue_ms, record.compute_ms = timings.queue_ms, timings.compute_ms
            if record.error:
                self.errors += 1
            self.records.append(record)
            self.progress.show(self.sent, len(self.records), self.errors)

    async def closed(self) -> None:
        """N workers, each sending its next request when the previous one finished."""
        budget = Budget(count=self.s.requests, duration=self.s.duration)

        async def worker() -> None:
            while budget.take():
                await self.execute(clock(), budget.taken - 1)

        await self._bounded([asyncio.create_task(worker()) for _ in range(self.s.concurrency)])

    async def open(self) -> None:
        """Send at the scheduled Poisson arrival times, whatever the answers' latency."""
        assert self.s.rate is not None
        offsets = arrival_times(self.s.rate, self.s.duration, self.s.requests, self.s.seed)
        start = clock()
        stop_at = start + self.s.hard_cap_s
        tasks: set[asyncio.Task[None]] = set()
        for i, offset in enumerate(offsets.tolist()):
            due = start + offset
            now = clock()
            if now >= stop_at:
                break
            if due > now:
                await asyncio.sleep(due - now)
            else:
                await asyncio.sleep(0)  # behind schedule: still let in-flight requests run
            if len(tasks) >= self.s.max_in_flight:  # bounded memory: drop, and count it
                self.sent += 1
                self.errors += 1
                self.records.append(Record(due, clock(), clock(), self.payloads.items, "dropped"))
                continue
            task = asyncio.create_task(self.execute(due, i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await self._bounded(list(tasks), stop_at - clock())

    async def _bounded(self, tasks: list[asyncio.Task[None]], timeout: float | None = None) -> None:
        """Wait for ``tasks`` up to the hard cap, then cancel what is left."""
        if not tasks:
            return
        timeout = self.s.hard_cap_s if timeout is None else max(timeout, 0.0)
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def run(self) -> RunSummary:
        wall0, cpu0 = clock(), time.process_time()
        try:
            await (self.closed() if self.s.mode == "closed" else self.open())
        finally:
            self.progress.show(self.sent, len(self.records), self.errors, force=True)
            self.progress.close()
        end = max((r.finished for r in self.records), default=clock())
        return summarize(
            self.records,
            label=self.s.label,
            mode=self.s.mode,
            api=self.s.api,
            wall_s=end - wall0,
            cpu_s=time.process_time() - cpu0,
            concurrency=self.s.concurrency if self.s.mode == "closed" else None,
            target_rate=self.s.rate if self.s.mode == "open" else None,
            items_per_request=self.payloads.items,
        )


class JobFailed(Exception):
    """A job that ended ``failed`` or ``expired`` (its timings still count)."""

    def __init__(self, message: str, timings: Timings | None) -> None:
        super().__init__(message)
        self.timings = timings


def _connections(s: RunSettings) -> int:
    if s.connections:
        return s.connections
    return s.concurrency if s.mode == "closed" else 256


async def run_point(settings: RunSettings, payloads: Payloads) -> RunSummary:
    """One sweep point with a fresh connection pool."""
    pool = Pool(settings.url, _connections(settings))
    try:
        return await Run(settings, payloads, pool).run()
    finally:
        await pool.close()


def run_sweep(points: Sequence[RunSettings], payloads: Payloads) -> list[RunSummary]:
    """Every sweep point in turn (one event loop), each reported as it ends."""

    async def all_points() -> list[RunSummary]:
        return [await run_point(p, payloads) for p in points]

    return asyncio.run(all_points())
