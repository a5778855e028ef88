"""Synchronous KServe V2 inference goes through the same queue and batcher as /v1."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from helpers import entries_added
from onnx_models import masked_sum_model, scale_model

from batching import keys


@pytest.fixture(scope="module")
def v2(module_stack_factory, module_redis, tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("repo")
    scale_model(repo)
    masked_sum_model(repo)
    stack = module_stack_factory(repo)
    stack.start_api()
    stack.start_worker()
    stack.wait_ready("scale", 1)
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        yield http, module_redis


def tensor(name: str, array: np.ndarray, datatype: str) -> dict:
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "data": array.ravel().tolist(),
    }


def test_infer_returns_outputs_and_echoes_the_id(v2) -> None:
    http, client = v2
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    body = {"id": "req-7", "inputs": [tensor("x", x, "FP32")], "outputs": [{"name": "y"}]}
    response = http.post("/v2/models/scale/infer", json=body)
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["id"] == "req-7" and out["model_name"] == "scale" and out["model_version"] == "1"
    [y] = out["outputs"]
    assert y["name"] == "y" and y["datatype"] == "FP32" and y["shape"] == [3, 4]
    np.testing.assert_allclose(np.array(y["data"]).reshape(3, 4), x * 2)
    assert entries_added(client, "scale") == 1  # three rows, one queue entry


def test_ragged_text_inputs_in_one_batch_do_not_leak_padding(v2) -> None:
    http, _ = v2
    ids = np.array([[3, 4, 5, 0], [7, 1, 2, 9]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=np.int64)
    inputs = [tensor("input_ids", ids, "INT64"), tensor("attention_mask", mask, "INT64")]
    out = http.post("/v2/models/masked_sum/infer", json={"inputs": inputs}).json()
    assert out["outputs"][0]["data"] == [12, 19]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/nosuch/infer", {"inputs": []}, 404, "unknown model 'nosuch'"),
        ("/v2/models/scale/versions/9/infer", {"inputs": []}, 404, "unknown version '9'"),
        ("/v2/models/scale/infer", {"inputs": []}, 400, "inputs"),
        ("/v2/models/scale/infer", {"inputs": [{"name": "x"}]}, 400, "shape"),
        (
            "/v2/models/scale/infer",
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT64", "data": [1, 2, 3, 4]}]},
            422,
            "has datatype INT64; the model takes FP32",
        ),
        (
            "/v2/models/scale/infer",
            {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
            422,
            "has 4 values; shape [2, 4] needs 8",
        ),
        (
            "/v2/models/scale/infer",
            {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
            422,
            "the model takes [-1, 4]",
        ),
    ],
)
def test_errors_use_the_protocol_shape_and_enqueue_nothing(v2, path, body, status, message) -> None:
    http, client = v2
    before = entries_added(client, "scale")
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert entries_added(client, "scale") == before


def test_health_endpoints(v2) -> None:
    http, _ = v2
    assert http.get("/v2/health/live").status_code == 200
    assert http.get("/v2/health/ready").status_code == 200


def test_a_synchronous_request_leaves_no_job_record_watch_or_idempotency_key(v2) -> None:
    """Its caller waits on the submitting process: the entry carries the reply channel,
    the result is only published, and the entry is gone once answered."""
    http, client = v2

    def per_request_keys() -> set[bytes]:
        patterns = ("fs:*:job:*", "fs:*:watch:*", "fs:*:idem:*")
        return {k for pattern in patterns for k in client.scan_iter(match=pattern)}

    before, added = per_request_keys(), entries_added(client, "scale")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for path in ("/v2/models/scale/infer", "/v2/models/scale/versions/1/infer"):
        response = http.post(path, json={"inputs": [tensor("x", x, "FP32")]})
        assert response.status_code == 200, response.text
    assert entries_added(client, "scale") == added + 2
    assert per_request_keys() == before == set()
    assert sum(client.xlen(keys.stream("scale", level)) for level in (1, 2)) == 0
    assert int(client.get(keys.pinned("scale", 1)) or 0) == 0  # the pinned one let go
