"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable

import httpx
import redis

from batching import keys


def entries_added(client: redis.Redis, model: str, levels: int = 2) -> int:
    """Entries ever added to a model's streams: unchanged means nothing was enqueued."""
    total = 0
    for level in range(1, levels + 1):
        key = keys.stream(model, level)
        if client.exists(key):
            total += int(client.xinfo_stream(key)["entries-added"])
    return total


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wait_all(http: httpx.Client, job_ids: Iterable[str], timeout_s: float = 120) -> dict[str, dict]:
    """Long-poll every job until it is final; returns the bodies by job id."""
    results: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    for job_id in job_ids:
        while True:
            body = http.get(f"/v1/jobs/{job_id}", params={"wait": 5}).json()
            if body["status"] not in ("queued", "running"):
                results[job_id] = body
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {body['status']}")
    return results


def publish_then_pause(stack, model: str) -> None:
    """Start a worker so the model is published, then stop it: work queues until one returns."""
    import signal

    worker = stack.start_worker()
    stack.wait_ready(model, 1)
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)
