"""API keys: hashed in Redis, one tenant's jobs and batches invisible to another, per-key
rate limits, open health, a token on /metrics, and the keys CLI."""

from __future__ import annotations

import subprocess
import sys

import httpx
import orjson
import pytest
from conftest import METRICS_TOKEN, ROOT
from helpers import b64, wait_until

from batching.apikeys import ApiKeys
from fusionserve.zoo import data

MODEL = "demo"


@pytest.fixture(scope="module")
def stack(keyed_demo):
    return keyed_demo


@pytest.fixture(scope="module")
def keys(stack, module_redis):
    store = ApiKeys(module_redis)
    _, alice = store.create("alice")
    _, bob = store.create("bob")
    _, slow = store.create("slow", rate_per_s=0.5, burst=2)
    return store, alice, bob, slow


def client(stack, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=stack.url, headers=headers, timeout=30)


def item() -> dict:
    [sample] = data.generate(1, 3)
    return {"text": sample.question, "image": b64(data.png_bytes(sample.image))}


def test_without_a_valid_key_nothing_answers_but_health(stack, keys) -> None:
    with client(stack, None) as anonymous, client(stack, "fsk_nope_nope") as wrong:
        for http in (anonymous, wrong):
            for method, path in (
                ("POST", f"/v1/models/{MODEL}/infer"),
                ("GET", "/v1/models"),
                ("GET", f"/v2/models/{MODEL}"),
                ("GET", "/v1/batches"),
            ):
                response = http.request(method, path, json=item())
                assert response.status_code == 401, (method, path, response.text)
                assert response.headers["WWW-Authenticate"] == "Bearer"
        error = anonymous.get("/v1/models").json()["error"]
        assert error["code"] == "unauthorized" and "API key" in error["message"]
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/v2/health/live").status_code == 200
        assert anonymous.get("/openapi.json").status_code == 200
        assert anonymous.get("/metrics").status_code == 401
    with client(stack, METRICS_TOKEN) as scraper:
        assert "fusionserve_queue_depth" in scraper.get("/metrics").text


def test_a_tenant_sees_only_its_own_jobs_and_batches(stack, keys) -> None:
    _, alice, bob, _ = keys
    with client(stack, alice) as a, client(stack, bob) as b:
        job_id = a.post(f"/v1/models/{MODEL}/infer", json=item()).json()["job_id"]
        assert a.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()["status"] == "done"
        assert b.get(f"/v1/jobs/{job_id}").status_code == 404
        assert b.get(f"/v1/jobs/{job_id}", params={"wait": 1}).status_code == 404
        assert b.delete(f"/v1/jobs/{job_id}").status_code == 404
        batch = a.post("/v1/batches", params={"model": MODEL}, content=orjson.dumps(item()))
        batch_id = batch.json()["batch_id"]
        assert a.get(f"/v1/batches/{batch_id}").status_code == 200
        for path in (f"/v1/batches/{batch_id}", f"/v1/batches/{batch_id}/results"):
            assert b.get(path).status_code == 404
        assert b.delete(f"/v1/batches/{batch_id}").status_code == 404
        assert batch_id in [x["batch_id"] for x in a.get("/v1/batches").json()["batches"]]
        assert batch_id not in [x["batch_id"] for x in b.get("/v1/batches").json()["batches"]]
        # One tenant's Idempotency-Key never replays another's job.
        headers = {"Idempotency-Key": "same-key"}
        first = a.post(f"/v1/models/{MODEL}/infer", json=item(), headers=headers).json()
        other = b.post(f"/v1/models/{MODEL}/infer", json=item(), headers=headers).json()
        assert first["job_id"] != other["job_id"]


def test_model_loading_needs_an_admin_key(stack, keys) -> None:
    _, alice, _, _ = keys
    with client(stack, alice) as a:
        response = a.post(f"/v2/repository/models/{MODEL}/unload")
        assert response.status_code == 403 and "admin" in response.json()["error"]


def test_a_key_over_its_rate_gets_429_with_retry_after(stack, keys) -> None:
    *_, slow = keys
    with client(stack, slow) as s:
        codes = [s.get("/v1/models").status_code for _ in range(4)]
        assert codes[:2] == [200, 200] and 429 in codes[2:]
        limited = s.get("/v1/models")
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"


def test_keys_cli_creates_lists_and_revokes_and_stores_only_hashes(stack, module_redis) -> None:
    env_cli = [sys.executable, "-m", "fusionserve.cli", "keys"]
    env = {"REDIS_URL": stack.env["REDIS_URL"], "PATH": "/usr/bin:/bin"}
    created = subprocess.run(
        [*env_cli, "create", "--name", "ci"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert created.returncode == 0, created.stderr
    record = orjson.loads(created.stdout)
    token, key_id = record["key"], record["id"]
    stored = b"".join(module_redis.dump(k) or b"" for k in module_redis.scan_iter("fs:apikey*"))
    assert token.encode() not in stored, "a raw key was stored"
    listed = subprocess.run([*env_cli, "list"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert key_id in listed.stdout and token not in listed.stdout
    with client(stack, token) as http:
        assert http.get("/v1/models").status_code == 200
        revoked = subprocess.run(
            [*env_cli, "revoke", key_id], capture_output=True, text=True, env=env, cwd=ROOT
        )
        assert revoked.returncode == 0
        # each API process trusts a lookup for up to a second, then sees the revocation
        wait_until(lambda: http.get("/v1/models").status_code == 401, "the key still works")
    missing = subprocess.run(
        [*env_cli, "revoke", "nothere"], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert missing.returncode == 1
