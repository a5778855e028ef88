"""One poisoned item fails alone: the worker bisects a rejected batch to the rows at fault."""

from __future__ import annotations

from pathlib import Path

import httpx
from helpers import publish_then_pause, wait_all
from onnx_models import lookup_model

POISON = 99  # past the 10-row table: ONNX Runtime rejects any batch holding it


def test_a_poisoned_item_fails_alone(stack_factory, redis_client, tmp_path: Path) -> None:
    lookup_model(tmp_path / "repo")
    stack = stack_factory(tmp_path / "repo")
    stack.start_api()
    publish_then_pause(stack, "lookup")  # work queues until a worker starts
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        listed = [3, 1, POISON, 7, 0, 5, 2, 9]
        items = {"items": [{"inputs": {"idx": i}} for i in listed]}
        list_ids = http.post("/v1/models/lookup/infer", json=items).json()["job_ids"]
        singles = {
            i: http.post("/v1/models/lookup/infer", json={"inputs": {"idx": i}}).json()["job_id"]
            for i in (4, POISON, 8)
        }
        v2 = {"inputs": [{"name": "idx", "shape": [2], "datatype": "INT64", "data": [1, POISON]}]}
        stack.start_worker()
        stack.wait_ready("lookup", 1)  # /v2 refuses (503) until a worker is seen, by design
        whole = http.post("/v2/models/lookup/infer", json=v2)
        results = wait_all(http, [*list_ids, *singles.values()])

    for idx, job_id in [*zip(listed, list_ids, strict=True), *singles.items()]:
        body = results[job_id]
        if idx == POISON:
            assert body["status"] == "failed", body
            assert body["error"]["code"] == "model_error"
            assert "out of" in body["error"]["message"] or "bounds" in body["error"]["message"]
            assert "outputs" not in body
        else:
            assert body["status"] == "done", body
            assert body["outputs"]["y"] == [4.0 * idx + k for k in range(4)]
    assert max(results[j]["timings"]["batch_size"] for j in list_ids) > 1  # it was batched
    assert whole.status_code == 500 and "row 1" in whole.json()["error"]  # V2: the request fails
