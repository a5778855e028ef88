"""SIGTERM drains a worker: it finishes the batch in hand, acknowledges it, and exits."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from helpers import pending_by_consumer, wait_all
from onnx_models import heavy_model

MODEL = "heavy"


def test_sigterm_finishes_the_batch_in_hand(stack_factory, redis_client, tmp_path: Path) -> None:
    heavy_model(tmp_path / "repo", MODEL, width=512, layers=32)
    # a long visibility timeout: only the draining worker itself can finish what it holds
    stack = stack_factory(tmp_path / "repo", FUSIONSERVE_VISIBILITY_TIMEOUT_S="600")
    stack.start_api()
    worker = stack.start_worker()
    stack.wait_ready(MODEL, 1)
    signalled = threading.Event()

    def stop_when_holding() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(pending_by_consumer(redis_client, MODEL).values()) > 0:
                worker.send_signal(signal.SIGTERM)
                signalled.set()
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=stop_when_holding)
    watcher.start()
    inputs = np.random.default_rng(1).standard_normal((800, 512)).astype(np.float32)
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        job_ids = []
        for start in range(0, len(inputs), 8):
            items = [{"inputs": {"x": row.tolist()}} for row in inputs[start : start + 8]]
            response = http.post(f"/v1/models/{MODEL}/infer", json={"items": items})
            job_ids += response.json()["job_ids"]
        watcher.join()
        assert signalled.is_set(), "the worker never took an entry"
        assert worker.wait(30) == 0
        assert sum(pending_by_consumer(redis_client, MODEL).values()) == 0  # nothing left unacked
        states = [http.get(f"/v1/jobs/{j}").json()["status"] for j in job_ids]
        assert "done" in states
        assert "running" not in states
        assert "queued" in states  # it stopped pulling new work

        stack.start_worker()  # the rest of the queue is still there for the next worker
        results = wait_all(http, job_ids)
    assert {r["status"] for r in results.values()} == {"done"}
