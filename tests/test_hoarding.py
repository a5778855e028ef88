"""A worker holds at most its next batch plus one batch of look-ahead, and never hoards.

Entries of several rows each, and more work than the worker can run: it must not pull
from the queue faster than it runs, nor claim back what it holds (a healthy entry would
be delivered again and again until dead-lettered).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
from helpers import pending_by_consumer, publish_then_pause, wait_all
from onnx_models import heavy_model
from test_drain_carry import inferences

MODEL = "heavy"
CAP = 8


def slow_model(repository: Path) -> None:
    """The heavy model, its jobs given ten minutes: a loaded machine must not expire them."""
    config = heavy_model(repository, MODEL, width=512, layers=32, max_batch_size=CAP)
    with (config / "config.toml").open("a") as f:
        f.write("default_timeout_ms = 600000\n")  # the [batching] table is the last one


def submit_all(url: str, inputs: np.ndarray, rows_per_entry: int) -> list[str]:
    job_ids: list[str] = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for start in range(0, len(inputs), rows_per_entry):
            items = [{"inputs": {"x": r.tolist()}} for r in inputs[start : start + rows_per_entry]]
            response = http.post(f"/v1/models/{MODEL}/infer", json={"items": items})
            assert response.status_code == 202, response.text
            job_ids += response.json()["job_ids"]
    return job_ids


def test_pending_per_worker_stays_within_two_batches(
    stack_factory, redis_client, tmp_path: Path
) -> None:
    slow_model(tmp_path / "repo")
    stack = stack_factory(tmp_path / "repo", FUSIONSERVE_VISIBILITY_TIMEOUT_S="600")
    stack.start_api()
    publish_then_pause(stack, MODEL)  # a backlog first, then the workers: more than they run
    rows_per_entry = 2
    bound = 2 * CAP // rows_per_entry  # the batch in hand plus one batch of look-ahead
    most = {"pending": 0}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for count in pending_by_consumer(redis_client, MODEL).values():
                most["pending"] = max(most["pending"], count)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    inputs = np.random.default_rng(2).standard_normal((480, 512)).astype(np.float32)
    job_ids = submit_all(stack.url, inputs, rows_per_entry)
    try:
        stack.start_worker()
        stack.start_worker()
        with httpx.Client(base_url=stack.url, timeout=60) as http:
            results = wait_all(http, job_ids, timeout_s=240)
    finally:
        done.set()
        watcher.join()
    assert {r["status"] for r in results.values()} == {"done"}
    assert most["pending"] > 0, "the watcher never saw a worker hold anything"
    assert most["pending"] <= bound, f"a worker held {most['pending']} entries, bound {bound}"


def test_short_visibility_timeout_dead_letters_no_healthy_entry(
    stack_factory, redis_client, tmp_path: Path
) -> None:
    slow_model(tmp_path / "repo")
    # one delivery allowed: any reclaim of an entry a live worker holds fails that job
    stack = stack_factory(
        tmp_path / "repo",
        FUSIONSERVE_VISIBILITY_TIMEOUT_S="1",
        FUSIONSERVE_MAX_DELIVERIES="1",
    )
    stack.start_api()
    publish_then_pause(stack, MODEL)
    inputs = np.random.default_rng(3).standard_normal((2400, 512)).astype(np.float32)
    job_ids = submit_all(stack.url, inputs, CAP)  # a backlog of full-batch entries
    stack.start_worker()
    stack.start_worker()
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        results = wait_all(http, job_ids, timeout_s=240)
    failed = {r.get("error", {}).get("code") for r in results.values() if r["status"] != "done"}
    assert not failed, f"healthy entries failed: {failed}"
    assert inferences(redis_client) == len(inputs), "an entry ran twice"
