"""SIGTERM while a worker holds more than one batch: it runs them all, once each, and exits."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import redis
from helpers import pending_by_consumer, publish_then_pause, wait_all
from onnx_models import heavy_model

from batching import keys

MODEL = "heavy"
ROWS_PER_ENTRY = 4
CAP = 8  # heavy_model's max_batch_size: one batch runs two of these entries


def inferences(client: redis.Redis) -> int:
    """Rows the model ran, over every version's statistics."""
    return sum(
        int(client.hget(k, "inference_count") or 0) for k in client.keys(keys.stats(MODEL, "*"))
    )


def test_sigterm_with_more_than_a_batch_held_finishes_each_once_and_exits(
    stack_factory, redis_client, tmp_path: Path
) -> None:
    heavy_model(tmp_path / "repo", MODEL, width=512, layers=32, max_batch_size=CAP)
    # a long visibility timeout: only the draining worker can finish what it holds
    stack = stack_factory(tmp_path / "repo", FUSIONSERVE_VISIBILITY_TIMEOUT_S="600")
    stack.start_api()
    publish_then_pause(stack, MODEL)  # a backlog first: the worker starts with more than a batch
    one_batch = CAP // ROWS_PER_ENTRY
    held: dict[str, int] = {}

    def stop_when_holding_more_than_a_batch() -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            pending = sum(pending_by_consumer(redis_client, MODEL).values())
            if pending > one_batch:
                worker.send_signal(signal.SIGTERM)
                held["entries"] = pending
                return
            time.sleep(0.002)

    inputs = np.random.default_rng(1).standard_normal((400, 512)).astype(np.float32)
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        job_ids = []
        for start in range(0, len(inputs), ROWS_PER_ENTRY):
            items = [{"inputs": {"x": r.tolist()}} for r in inputs[start : start + ROWS_PER_ENTRY]]
            response = http.post(f"/v1/models/{MODEL}/infer", json={"items": items})
            job_ids += response.json()["job_ids"]
        watcher = threading.Thread(target=stop_when_holding_more_than_a_batch)
        watcher.start()
        worker = stack.start_worker()
        watcher.join()
        assert held, "the worker never held more than one batch"
        assert worker.wait(90) == 0, "the draining worker did not exit"
        assert sum(pending_by_consumer(redis_client, MODEL).values()) == 0  # finished all

        stack.start_worker()  # the rest of the queue is still there for the next worker
        results = wait_all(http, job_ids, timeout_s=180)
    assert {r["status"] for r in results.values()} == {"done"}
    assert inferences(redis_client) == len(inputs), "a row ran twice (or never)"
