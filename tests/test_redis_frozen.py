"""Redis frozen (SIGSTOP: connections stay open, nothing answers) under load.

Every request still ends within the configured bound (``FUSIONSERVE_REDIS_TIMEOUT_S``)
plus slack, as a success or a 503 with ``Retry-After`` and a JSON error body; every
/v1 job acknowledged before, during or after the freeze finishes ``done``; the API
and the worker recover on their own once Redis answers again.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from helpers import publish_then_pause, wait_all, wait_until
from onnx_models import scale_model
from stack import Stack

from batching import keys
from fusionserve.embedded import EmbeddedRedis
from server.jobs import JobId

BOUND_S = 1.0
"""FUSIONSERVE_REDIS_TIMEOUT_S for this stack: the most any Redis call may wait."""
SLACK_S = 4.0
"""Scheduling on two shared, busy cores."""
LIMIT_S = 2 * BOUND_S + SLACK_S
"""A request waits for Redis at most the bound; one parked on the reply listener (a long
poll, a /v2 infer) about twice it: the listener notices the silence, then it re-reads."""
FREEZE_S = 15.0
CLIENTS = 4


@dataclass
class Answer:
    kind: str
    started: float
    seconds: float
    status: int
    headers: httpx.Headers
    body: dict | None
    error: str = ""


def _v1(http: httpx.Client, k: int) -> httpx.Response:
    return http.post("/v1/models/scale/infer", json={"inputs": {"x": [k, 1.0, 2.0, 3.0]}})


def _v2(http: httpx.Client, k: int) -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [k, 1, 2, 3]}]}
    return http.post("/v2/models/scale/infer", json=body)


def _json(response: httpx.Response) -> dict | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, Stack]]:
    """A Valkey of this test's own (it is frozen) and a stack over the scale model on it.

    The visibility timeout stays at its default (30 s, the jobs' default timeout too): a
    worker call cut off by the freeze (a pull answered into a closed connection, a start
    or complete that timed out) must not leave its entries for a reclaim, or they would
    expire instead of finishing. The worker takes them back itself.
    """
    server = EmbeddedRedis(tmp_path / "valkey", appendonly=False).start()
    assert server.process is not None
    repo = tmp_path / "repo"
    scale_model(repo)
    (tmp_path / "logs").mkdir()
    stack = Stack(
        server.url,
        repo,
        tmp_path / "logs",
        FUSIONSERVE_DATA_DIR=str(tmp_path / "data"),
        FUSIONSERVE_REDIS_TIMEOUT_S=str(BOUND_S),
    )
    try:
        yield server, stack
    finally:
        os.kill(server.process.pid, signal.SIGCONT)  # never leave it stopped
        stack.stop()
        server.stop()


def test_frozen_redis_bounds_every_request_and_loses_no_acknowledged_job(
    own_redis: tuple[EmbeddedRedis, Stack],
) -> None:
    server, stack = own_redis
    answers: list[Answer] = []
    acknowledged: list[str] = []
    stop = threading.Event()

    def load(client: int) -> None:
        with httpx.Client(base_url=stack.url, timeout=FREEZE_S * 4) as http:
            k = 0
            while not stop.is_set():
                kind = "v1" if k % 2 == 0 else "v2"
                started = time.monotonic()
                try:
                    response = (_v1 if kind == "v1" else _v2)(http, client * 100_000 + k)
                except httpx.HTTPError as exc:  # a hang past the client timeout, a reset
                    seconds = time.monotonic() - started
                    answers.append(
                        Answer(kind, started, seconds, 0, httpx.Headers(), None, repr(exc))
                    )
                    k += 1
                    continue
                seconds = time.monotonic() - started
                body = _json(response)
                answers.append(
                    Answer(kind, started, seconds, response.status_code, response.headers, body)
                )
                if kind == "v1" and response.status_code == 202 and body:
                    acknowledged.append(body["job_id"])
                if response.status_code == 503:
                    stop.wait(0.05)  # the client honours a short back-off
                k += 1

    def ok_since(moment: float) -> dict[str, int]:
        counts = {"v1": 0, "v2": 0}
        for a in list(answers):
            if a.started >= moment and a.status in (200, 202):
                counts[a.kind] += 1
        return counts

    runners = [threading.Thread(target=load, args=(c,)) for c in range(CLIENTS)]
    try:
        stack.start_api()
        stack.start_worker("scale")
        stack.wait_ready("scale", 1)
        for runner in runners:
            runner.start()
        begun = time.monotonic()
        wait_until(lambda: min(ok_since(begun).values()) >= 20, "no load got through", 120)
        frozen_at = time.monotonic()
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            stop.wait(FREEZE_S)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        thawed_at = time.monotonic()
        with httpx.Client(base_url=stack.url, timeout=30) as http:
            wait_until(lambda: http.get("/readyz").status_code == 200, "never ready again", 30)
        ready_after_s = time.monotonic() - thawed_at
        wait_until(lambda: min(ok_since(thawed_at).values()) >= 20, "no recovery under load", 60)
        stop.set()
        for runner in runners:
            runner.join(FREEZE_S * 5)

        during = [a for a in answers if frozen_at <= a.started < thawed_at]
        worst = max(answers, key=lambda a: a.seconds)
        print(
            f"answers: {len(answers)}, during the freeze: {len(during)}, "
            f"worst {worst.seconds:.2f} s ({worst.kind} {worst.status}), "
            f"ready {ready_after_s:.2f} s after SIGCONT"
        )
        cut = [(a.kind, round(a.seconds, 2), a.error) for a in answers if a.status == 0]
        assert not cut, f"requests hung or were cut off: {cut[:5]}"
        slow = [a for a in answers if a.seconds > LIMIT_S]
        assert not slow, f"{len(slow)} requests took past the bound: " + ", ".join(
            f"{a.kind} {a.status} {a.seconds:.1f}s" for a in slow[:5]
        )
        odd = [a for a in answers if a.status not in (200, 202, 503)]
        assert not odd, [(a.kind, a.status, a.body) for a in odd[:5]]
        refused = [a for a in answers if a.status == 503]
        assert refused, "the freeze refused nothing"
        assert all(a.headers.get("Retry-After") for a in refused)
        assert all(a.body is not None and "error" in a.body for a in refused)
        assert {"v1", "v2"} <= {a.kind for a in during if a.status == 503}
        with httpx.Client(base_url=stack.url, timeout=60) as http:
            results = wait_all(http, acknowledged, timeout_s=120)
        lost = {j: r["status"] for j, r in results.items() if r["status"] != "done"}
        assert not lost, f"acknowledged jobs not done: {list(lost.items())[:5]}"
    finally:
        stop.set()
        os.kill(server.process.pid, signal.SIGCONT)  # never leave it stopped
        for runner in runners:
            if runner.is_alive():
                runner.join(FREEZE_S * 5)


def test_long_poll_across_a_freeze_ends_in_bound_and_the_listener_resumes(
    own_redis: tuple[EmbeddedRedis, Stack],
) -> None:
    """A long poll (on an API process that did not submit the job) parked on the reply
    listener when Redis freezes: its ``wait=30`` is cut short by a 503 within the bound
    (the listener notices the silence and wakes it). After SIGCONT the listener has
    resubscribed: a long poll is woken by the result, not by its deadline."""
    server, stack = own_redis
    submitter = stack.start_api()
    stack.start_api()  # polled: its reply channel joins the job's watchers
    publish_then_pause(stack, "scale")  # no worker: the job stays queued
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        submitted = httpx.post(
            f"{submitter}/v1/models/scale/infer", json={"inputs": {"x": [1, 2, 3, 4]}}
        )
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()["job_id"]
        outcome: list[tuple[float, httpx.Response]] = []

        def long_poll() -> None:
            started = time.monotonic()
            response = http.get(f"/v1/jobs/{job}", params={"wait": 30})
            outcome.append((time.monotonic() - started, response))

        poller = threading.Thread(target=long_poll)
        poller.start()
        parsed = JobId.parse(job)
        assert parsed is not None
        watchers = keys.watchers("scale", parsed.entry)
        with redis.Redis.from_url(server.url) as probe:
            wait_until(lambda: probe.exists(watchers), "the long poll never watched")
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            poller.join(LIMIT_S + 30)
            wait_until(lambda: bool(outcome), "the long poll never ended", 30)
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        frozen_s, response = outcome.pop()
        print(f"long poll over a frozen Redis ended after {frozen_s:.2f} s")
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] and response.json()["error"]["code"]
        assert frozen_s <= LIMIT_S

        wait_until(lambda: http.get("/readyz").json().get("redis") is True, "no Redis", 30)
        poller = threading.Thread(target=long_poll)
        poller.start()
        stack.start_worker("scale")
        poller.join(60)
        woken_s, response = outcome.pop()
        assert response.json()["status"] == "done", response.text
        assert woken_s < 29, "woken by its deadline, not by the result: no listener"
