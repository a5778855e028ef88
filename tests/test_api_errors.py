"""Every bad input gets the right 4xx, a message naming the problem, and enqueues nothing."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from helpers import b64, entries_added

from fusionserve.zoo import data

MODEL = "demo"


@pytest.fixture(scope="module")
def api(module_stack_factory, module_redis) -> Iterator[tuple[httpx.Client, object]]:
    from conftest import DEMO

    stack = module_stack_factory(
        DEMO.parent, FUSIONSERVE_MAX_ITEMS="8", FUSIONSERVE_MAX_BODY_BYTES=str(1024 * 1024)
    )
    stack.start_api()
    stack.start_worker(MODEL)
    stack.wait_ready(MODEL, 1)
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        yield http, module_redis


def sample_item() -> dict:
    [s] = data.generate(1, 7)
    return {"text": s.question, "image": b64(data.png_bytes(s.image))}


def tensor_item() -> dict:
    [s] = data.generate(1, 7)
    return {
        "inputs": {
            "input_ids": [2, 5, 6],
            "attention_mask": [1, 1, 1],
            "image": data.normalize(s.image).tolist(),
        }
    }


def with_inputs(**changes) -> dict:
    item = tensor_item()
    for name, value in changes.items():
        if value is None:
            del item["inputs"][name]
        else:
            item["inputs"][name] = value
    return item


BAD = {
    "missing input": (with_inputs(attention_mask=None), 422, "missing input(s) ['attention_mask']"),
    "extra input": (with_inputs(audio=[1.0]), 422, "unknown input(s) ['audio']"),
    "wrong dtype": (with_inputs(input_ids=[2.5, 1.0, 3.0]), 422, "'input_ids' expects INT64"),
    "wrong shape": (with_inputs(image=[[0.0] * 64] * 64), 422, "'image' has shape [64, 64]"),
    "disagreeing lengths": (
        with_inputs(attention_mask=[1, 1]),
        422,
        "must agree on dimension",
    ),
    "not numbers": (with_inputs(input_ids="2 5 6"), 422, "'input_ids' must hold numbers"),
    "undecodable image": (
        {"text": "is there a red square?", "image": b64(b"not an image at all")},
        422,
        "'image' could not be decoded as PNG or JPEG",
    ),
    "image not base64": ({"text": "what colour?", "image": "%%%"}, 422, "not valid base64"),
    "empty text": ({**sample_item(), "text": "   "}, 422, "'text' is empty"),
    "text without image": ({"text": "how many circles?"}, 422, "needs ['text', 'image']"),
    "both forms": ({**tensor_item(), "text": "hi"}, 422, "either 'inputs'"),
    "neither form": ({}, 422, "needs 'inputs'"),
    "too many items": ({"items": [sample_item()] * 9}, 413, "9 items exceed the limit of 8"),
    "empty items": ({"items": []}, 422, "'items' is empty"),
    "bad item in list": (
        {"items": [sample_item(), {"text": "", "image": sample_item()["image"]}]},
        422,
        "items[1]: 'text' is empty",
    ),
    "priority out of range": ({**sample_item(), "priority": 3}, 422, "priority must be 1..2"),
    "unknown field": ({**sample_item(), "colour": "red"}, 422, "colour: Extra inputs"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_submissions_are_refused_and_enqueue_nothing(api, case: str) -> None:
    http, client = api
    body, status, message = BAD[case]
    before = entries_added(client, MODEL)
    response = http.post(f"/v1/models/{MODEL}/infer", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"], error
    assert error["code"]
    assert entries_added(client, MODEL) == before


def test_an_oversized_body_is_413_and_enqueues_nothing(api) -> None:
    http, client = api
    before = entries_added(client, MODEL)
    huge = {"inputs": {"x": np.zeros(300_000).tolist()}}
    response = http.post(f"/v1/models/{MODEL}/infer", json=huge)
    assert response.status_code == 413
    assert "exceeds the limit of 1048576 bytes" in response.json()["error"]["message"]
    assert entries_added(client, MODEL) == before


def test_a_body_that_is_not_json_is_400(api) -> None:
    http, client = api
    before = entries_added(client, MODEL)
    response = http.post(f"/v1/models/{MODEL}/infer", content=b"{not json")
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]
    assert entries_added(client, MODEL) == before


def test_an_unknown_model_is_404_and_creates_no_queue(api) -> None:
    http, client = api
    response = http.post("/v1/models/nosuch/infer", json=sample_item())
    assert response.status_code == 404
    assert "no model named 'nosuch'" in response.json()["error"]["message"]
    assert client.keys("fs:{nosuch}*") == []
    assert http.get("/v1/models/nosuch").status_code == 404


@pytest.mark.parametrize("job_id", ["nope", "demo.1-0-2.0", "demo.1-0-2.0.1", "x.y"])
def test_an_unknown_job_is_404_with_the_id(api, job_id: str) -> None:
    http, _ = api
    response = http.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 404
    assert job_id in response.json()["error"]["message"]


def test_a_row_past_the_entry_is_404(api) -> None:
    http, _ = api
    job_id = http.post(f"/v1/models/{MODEL}/infer", json=sample_item()).json()["job_id"]
    assert http.get(f"/v1/jobs/{job_id}", params={"wait": 10}).json()["status"] == "done"
    past = job_id.rsplit(".", 1)[0] + ".1"
    assert http.get(f"/v1/jobs/{past}").status_code == 404


@pytest.mark.parametrize("wait", ["soon", "-1", "1e9"])
def test_a_bad_wait_is_400(api, wait: str) -> None:
    http, _ = api
    response = http.get("/v1/jobs/demo.1-0-2.0", params={"wait": wait})
    assert response.status_code == 400
    assert "wait must be" in response.json()["error"]["message"]


def test_unknown_routes_and_methods_answer_json(api) -> None:
    http, _ = api
    assert http.get("/v1/nothing").json()["error"]["code"] == "not_found"
    assert http.delete("/v1/models").json()["error"]["code"] == "method_not_allowed"


def test_models_are_listed_and_described(api) -> None:
    http, _ = api
    listed = http.get("/v1/models").json()["models"]
    assert [m["name"] for m in listed] == [MODEL] and listed[0]["ready"]
    described = http.get(f"/v1/models/{MODEL}").json()
    assert {i["name"] for i in described["inputs"]} == {"input_ids", "attention_mask", "image"}
    assert described["inputs"][0]["shape"][0] == -1
    assert described["config"]["postprocessing"]["labels"] == data.LABELS
    assert described["workers"] == 1


def test_health_and_readiness(api) -> None:
    http, _ = api
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["workers"] == {MODEL: 1}


def test_console_samples_and_stats_answer_json(api) -> None:
    http, _ = api
    missing = http.get("/console/sample", params={"model": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    bad_seed = http.get("/console/sample", params={"model": MODEL, "seed": "abc"})
    assert bad_seed.status_code == 422 and "seed" in bad_seed.json()["error"]["message"]
    sample = http.get("/console/sample", params={"model": MODEL, "seed": 7}).json()
    assert sample["question"] and sample["image"] and sample["answer"] in data.LABELS
    stats = http.get("/v1/stats").json()["models"][MODEL]
    assert stats["queue_depth"].keys() == {"1", "2", "bulk"}
    assert stats["ready_workers"] == 1
