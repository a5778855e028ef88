"""The repository API (load / unload) through a real API and worker serving ``clip``.

An unload answers once a worker applied it; from then on the model is not ready, is
listed as not ready, and refuses work at submit with nothing enqueued. Unknown versions
are 404 and bad bodies 400, each changing nothing. A load after an unload serves again.
"""

from __future__ import annotations

import httpx
import orjson
import pytest
from conftest import ROOT
from helpers import b64, entries_added

from batching import keys
from fusionserve.zoo import data

MODEL = "clip"


@pytest.fixture(scope="module")
def stack(module_stack_factory, tmp_path_factory):
    stack = module_stack_factory(
        ROOT / "model_repository", FUSIONSERVE_DATA_DIR=str(tmp_path_factory.mktemp("data"))
    )
    stack.start_api()
    stack.start_worker(MODEL)
    stack.wait_ready(MODEL, 1)
    return stack


@pytest.fixture
def http(stack):
    # Longer than the API's own wait for an order (60 s): a missed ack answers, not hangs.
    with httpx.Client(base_url=stack.url, timeout=90) as client:
        yield client


def item() -> dict:
    [sample] = data.generate(1, 7)
    return {"text": sample.question, "image": b64(data.png_bytes(sample.image))}


def listed(http: httpx.Client) -> dict:
    return {m["name"]: m for m in http.get("/v1/models").json()["models"]}[MODEL]


def generation(redis_client) -> int:
    return int(redis_client.hget(keys.control(MODEL), "gen") or 0)


def assert_serving(http: httpx.Client) -> None:
    assert http.get(f"/v2/models/{MODEL}/ready").status_code == 200
    assert listed(http)["ready"] is True
    job = http.post(f"/v1/models/{MODEL}/infer", json=item())
    assert job.status_code == 202, job.text
    result = http.get(f"/v1/jobs/{job.json()['job_id']}", params={"wait": 30}).json()
    assert result["status"] == "done", result


def test_unload_answers_once_applied_then_the_model_refuses_work_until_loaded(
    stack, http, module_redis
) -> None:
    assert_serving(http)
    # What tritonclient's unload_model sends.
    body = {"parameters": {"unload_dependents": False}}
    unload = http.post(f"/v2/repository/models/{MODEL}/unload", json=body)
    assert unload.status_code == 200, unload.text

    # At once, in the registry's view: not ready, listed as not ready, no versions served.
    assert http.get(f"/v2/models/{MODEL}/ready").status_code == 503
    assert listed(http)["ready"] is False
    assert http.get(f"/v2/models/{MODEL}").json()["versions"] == []
    index = {m["version"]: m for m in http.post("/v2/repository/index").json()}
    assert index["1"]["state"] == "UNAVAILABLE" and index["1"]["reason"] == "unloaded"

    # Work is refused at submit, with nothing enqueued.
    before = entries_added(module_redis, MODEL)
    refused = http.post(f"/v1/models/{MODEL}/infer", json=item())
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert error["code"] == "model_unloaded" and "load" in error["message"]
    v2 = http.post(f"/v2/models/{MODEL}/infer", json={"inputs": []})
    assert v2.status_code == 503 and "unloaded" in v2.json()["error"]
    batch = http.post(f"/v1/batches?model={MODEL}", content=orjson.dumps(item()) + b"\n")
    assert batch.status_code == 503 and batch.json()["error"]["code"] == "model_unloaded"
    assert http.get("/v1/batches").json()["batches"] == []
    assert entries_added(module_redis, MODEL) == before

    # Load (tritonclient's load_model sends {}) serves again.
    load = http.post(f"/v2/repository/models/{MODEL}/load", json={})
    assert load.status_code == 200, load.text
    assert http.get(f"/v2/models/{MODEL}").json()["versions"] == ["1"]
    assert_serving(http)


def test_unloading_an_unknown_version_is_404_and_changes_nothing(stack, http, module_redis) -> None:
    gen = generation(module_redis)
    for version in ("999", 999):
        response = http.post(
            f"/v2/repository/models/{MODEL}/unload", json={"parameters": {"version": version}}
        )
        assert response.status_code == 404, response.text
        assert "unknown version '999'" in response.json()["error"]
    missing = http.post("/v2/repository/models/nosuchmodel/unload")
    assert missing.status_code == 404 and "nosuchmodel" in missing.json()["error"]
    assert generation(module_redis) == gen
    assert_serving(http)


@pytest.mark.parametrize(
    ("action", "content", "says"),
    [
        ("load", b"not json", "JSON"),
        ("unload", b"not json", "JSON"),
        ("load", b"[1, 2]", "JSON object"),
        ("unload", b'"version"', "JSON object"),
        ("load", b'{"parameters": 5}', "'parameters'"),
        ("unload", b'{"parameters": ["version"]}', "'parameters'"),
        ("load", b'{"model": "clip"}', "'model'"),
        ("load", b'{"parameters": {"config": "{}"}}', "'config'"),
        ("unload", b'{"parameters": {"version": "one"}}', "'version'"),
        ("unload", b'{"parameters": {"version": -1}}', "'version'"),
        ("unload", b'{"parameters": {"version": true}}', "'version'"),
        ("unload", b'{"parameters": {"unload_dependents": "yes"}}', "'unload_dependents'"),
        ("unload", b'{"parameters": {"force": true}}', "'force'"),
    ],
)
def test_a_bad_body_is_400_and_changes_nothing(
    stack, http, module_redis, action: str, content: bytes, says: str
) -> None:
    gen = generation(module_redis)
    response = http.post(
        f"/v2/repository/models/{MODEL}/{action}",
        content=content,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert says in response.json()["error"]
    assert generation(module_redis) == gen
    assert http.get(f"/v2/models/{MODEL}/ready").status_code == 200


def test_unloading_the_only_version_unloads_the_model_and_load_brings_it_back(
    stack, http, module_redis
) -> None:
    unload = http.post(f"/v2/repository/models/{MODEL}/unload", json={"parameters": {"version": 1}})
    assert unload.status_code == 200, unload.text
    assert http.get(f"/v2/models/{MODEL}/versions/1/ready").status_code == 404
    assert http.get(f"/v2/models/{MODEL}/ready").status_code == 503
    before = entries_added(module_redis, MODEL)
    refused = http.post(f"/v1/models/{MODEL}/infer", json=item())
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_unloaded"
    assert entries_added(module_redis, MODEL) == before
    # An unload of a version already unloaded is no error (the state asked for holds).
    again = http.post(
        f"/v2/repository/models/{MODEL}/unload", json={"parameters": {"version": "1"}}
    )
    assert again.status_code == 200, again.text
    assert http.post(f"/v2/repository/models/{MODEL}/load").status_code == 200
    assert_serving(http)
