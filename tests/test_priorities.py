"""Strict priority through real processes: all waiting level-1 work runs before level 2."""

from __future__ import annotations

from pathlib import Path

import httpx
from helpers import publish_then_pause, wait_all
from onnx_models import scale_model


def test_level_1_runs_before_waiting_level_2(stack_factory, redis_client, tmp_path: Path) -> None:
    scale_model(tmp_path / "repo", max_batch_size=1)
    stack = stack_factory(tmp_path / "repo")
    stack.start_api()
    publish_then_pause(stack, "scale")  # work queues until a worker starts
    with httpx.Client(base_url=stack.url, timeout=30) as http:

        def submit(priority: int) -> str:
            body = {"inputs": {"x": [1, 2, 3, 4]}, "priority": priority}
            return http.post("/v1/models/scale/infer", json=body).json()["job_id"]

        low = [submit(2) for _ in range(10)]
        high = [submit(1) for _ in range(10)]  # submitted later
        stack.start_worker()
        results = wait_all(http, low + high)

    def started(job_id: str) -> float:  # the Redis clock at submission, plus its queue time
        return int(job_id.split(".")[1].split("-")[0]) + results[job_id]["timings"]["queue_ms"]

    assert {r["status"] for r in results.values()} == {"done"}
    assert max(started(j) for j in high) < min(started(j) for j in low)
    assert [started(j) for j in low] == sorted(started(j) for j in low)  # FIFO within a level
