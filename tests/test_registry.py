"""A model is served as soon as a worker publishes it, even by an API that looked for it before."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from onnx_models import scale_model

from batching import keys


def test_a_model_published_after_a_miss_is_served_at_once(
    stack_factory, redis_client, tmp_path: Path
) -> None:
    scale_model(tmp_path / "repo")
    stack = stack_factory(tmp_path / "repo")
    stack.start_api()
    with httpx.Client(base_url=stack.url, timeout=10) as http:
        assert http.get("/v1/models/scale").status_code == 404  # looked up before it exists
        stack.start_worker()
        deadline = time.monotonic() + 30
        while not redis_client.exists(keys.meta("scale")):
            assert time.monotonic() < deadline, "the worker never published its model"
            time.sleep(0.01)
        response = http.post("/v1/models/scale/infer", json={"inputs": {"x": [1, 2, 3, 4]}})
        assert response.status_code == 202, response.text
