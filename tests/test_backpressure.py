"""A full queue answers 429 with a Retry-After computed from its depth and drain rate."""

from __future__ import annotations

from pathlib import Path

import httpx
from helpers import entries_added
from onnx_models import heavy_model

from batching import keys


def test_a_full_queue_refuses_with_a_computed_retry_after(
    stack_factory, redis_client, tmp_path: Path
) -> None:
    heavy_model(tmp_path / "repo", "heavy", width=512, layers=32, max_batch_size=1)
    config = tmp_path / "repo" / "heavy" / "config.toml"
    config.write_text(config.read_text().replace("max_queue_size = 100000", "max_queue_size = 40"))
    stack = stack_factory(tmp_path / "repo")
    stack.start_api()
    stack.start_worker()
    stack.wait_ready("heavy", 1)
    body = {"items": [{"inputs": {"x": [0.01] * 512}}] * 32}  # one entry of 32 rows
    refused = []
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        for _ in range(400):  # bounded: keep the queue full for a few heartbeats
            before = entries_added(redis_client, "heavy")
            response = http.post("/v1/models/heavy/infer", json=body)
            if response.status_code == 429:
                assert entries_added(redis_client, "heavy") == before  # nothing enqueued
                refused.append(response)
                if len(refused) >= 50:
                    break
            else:
                assert response.status_code == 202, response.text
    assert refused, "the queue never filled"
    for response in refused:
        assert response.json()["error"]["code"] == "queue_full"
        assert 1 <= int(response.headers["Retry-After"]) <= 60
    # the worker measured and published the drain rate that Retry-After is computed from
    rates = [float(v.decode().split(",")[0]) for v in redis_client.hvals(keys.drain_rates("heavy"))]
    assert rates and max(rates) > 0
