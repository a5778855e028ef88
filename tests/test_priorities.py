"""Strict priority through real processes: all waiting level-1 work runs before level 2."""

from __future__ import annotations

from pathlib import Path

import httpx
import redis
from helpers import publish_then_pause, wait_all
from onnx_models import scale_model

from batching import keys


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
        order = run_order(redis_client, stack, lambda: wait_all(http, low + high), 20)

    def record(job_id: str) -> str:
        return keys.job("scale", job_id.split(".")[1])

    assert order == [record(j) for j in high + low]  # level 1 first, FIFO within a level


def run_order(client: redis.Redis, stack, finish, jobs: int) -> list[str]:
    """Start a worker and return job records in the order the worker started them.

    Observed on Redis itself (keyspace events of the records), not rebuilt from clocks:
    with a batch size of one, the first write to a record after the worker starts is
    the worker marking it running.
    """
    client.config_set("notify-keyspace-events", "Kh")
    prefix = f"__keyspace@{client.connection_pool.connection_kwargs.get('db', 0)}__:"
    events = client.pubsub()
    events.psubscribe(prefix + keys.job("scale", "*"))
    try:
        events.get_message(timeout=5)  # the subscription's confirmation
        stack.start_worker()
        results = finish()
        assert {r["status"] for r in results.values()} == {"done"}
        order: list[str] = []
        while len(order) < jobs:
            message = events.get_message(timeout=10)
            assert message is not None, f"saw {len(order)} of {jobs} jobs start"
            name = message["channel"].decode().removeprefix(prefix)
            if name not in order:
                order.append(name)
        return order
    finally:
        events.close()
        client.config_set("notify-keyspace-events", "")
