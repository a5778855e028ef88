"""With Redis unreachable, the API answers a fast 503 with the JSON error shape, not a hang."""

from __future__ import annotations

from pathlib import Path

import httpx
from stack import Stack

from fusionserve.embedded import free_port


def test_requests_get_503_when_redis_is_unreachable(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with Stack(dead, tmp_path, tmp_path) as stack:
        stack.start_api()
        with httpx.Client(base_url=stack.url, timeout=10) as http:
            submit = http.post("/v1/models/demo/infer", json={"text": "hi", "image": "AA=="})
            assert submit.status_code == 503
            assert submit.json()["error"]["code"] == "unavailable"
            assert submit.headers["Retry-After"] == "1"
            infer = http.post("/v2/models/demo/infer", json={"inputs": []})
            assert infer.status_code == 503 and infer.headers["Retry-After"] == "1"
            assert isinstance(infer.json()["error"], str)  # the KServe V2 error shape
            assert http.get("/v1/jobs/demo.1-0-2.0").status_code == 503
            ready = http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["redis"] is False
            assert http.get("/healthz").status_code == 200  # the process itself is alive
