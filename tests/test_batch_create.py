"""Creating a batch is all or nothing as the client sees it, and a key lists only its own.

These tests run on a Valkey of their own: they make it refuse writes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from conftest import DEMO
from helpers import publish_then_pause
from stack import Stack

from batching import keys
from batching.apikeys import ApiKeys
from batching.settings import Settings
from fusionserve.embedded import EmbeddedRedis
from worker.bulk import Sweeper

MODEL = "demo"
INGEST_QUEUE = "rq:queue:fusionserve-bulk"


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("own-valkey"), appendonly=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(own_redis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def stack(own_redis, data_dir, tmp_path_factory) -> Iterator[Stack]:
    """An API (keys off) over the demo model, published then paused: nothing ingests."""
    stack = Stack(
        own_redis.url,
        DEMO.parent,
        tmp_path_factory.mktemp("logs"),
        FUSIONSERVE_DATA_DIR=str(data_dir),
    )
    try:
        stack.start_api()
        publish_then_pause(stack, MODEL)
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def http(stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        yield http


def jsonl(n: int, tag: str) -> bytes:
    return b"".join(
        orjson.dumps({"custom_id": f"{tag}-{i}", "text": "x"}) + b"\n" for i in range(n)
    )


def listed(http: httpx.Client) -> list[str]:
    return [b["batch_id"] for b in http.get("/v1/batches", params={"limit": 100}).json()["batches"]]


def stored_files(data_dir: Path) -> set[str]:
    folder = data_dir / "batches"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def assert_nothing_left(http: httpx.Client, data_dir: Path, before: list[str]) -> None:
    """No new batch is listed, and every stored file belongs to a listed batch."""
    now = listed(http)
    assert now == before
    assert stored_files(data_dir) == {f"{b}.jsonl" for b in now}


def sweep_once(client: redis.Redis, own_redis, data_dir: Path) -> None:
    """One pass of the real sweeper (as a bulk worker runs it)."""
    settings = Settings(redis_url=own_redis.url, data_dir=data_dir, sweep_interval_s=1.0)
    client.delete(keys.SWEEP_LOCK)  # an earlier pass's lock: this is a new sweeper
    assert Sweeper(client, settings).sweep()


def raw_post(url: str, head: dict[str, str], body: bytes, declared: int) -> tuple[int, dict]:
    """POST over a socket: declare ``declared`` bytes, send ``body``, close the write side."""
    host, port = url.removeprefix("http://").split(":")
    lines = [f"POST /v1/batches?model={MODEL} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in head.items()]
    lines += [f"Content-Length: {declared}", "Connection: close", "", ""]
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall("\r\n".join(lines).encode() + body)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), orjson.loads(payload)


def test_a_truncated_upload_is_refused_and_its_retry_succeeds(stack, http, data_dir) -> None:
    before = listed(http)
    body = jsonl(50, "cut")
    head = {"Content-Type": "application/jsonl", "Idempotency-Key": "cut-upload-1"}
    status, error = raw_post(stack.url, head, body[: len(body) // 2], declared=len(body))
    assert status == 400, error
    assert error["error"]["code"] == "bad_request"
    assert "Content-Length" in error["error"]["message"]
    assert_nothing_left(http, data_dir, before)

    retried = http.post(
        "/v1/batches",
        params={"model": MODEL},
        content=body,
        headers={"Idempotency-Key": "cut-upload-1"},
    )
    assert retried.status_code == 202, retried.text
    assert retried.json()["total"] == 50
    assert "Idempotent-Replayed" not in retried.headers
    assert listed(http) == [retried.json()["batch_id"], *before]


def test_redis_refusing_the_record_leaves_no_file(stack, http, client, own_redis, data_dir) -> None:
    before, queued = listed(http), client.llen(INGEST_QUEUE)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)  # every write is refused (OOM); reads still work
    try:
        response = http.post(
            "/v1/batches",
            params={"model": MODEL},
            content=jsonl(5, "oom"),
            headers={"Idempotency-Key": "oom-1"},
        )
    finally:
        client.config_set("maxmemory", 0)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"
    assert_nothing_left(http, data_dir, before)
    sweep_once(client, own_redis, data_dir)
    assert client.llen(INGEST_QUEUE) == queued


def test_a_failed_enqueue_undoes_the_batch_and_the_sweeper_never_starts_it(
    stack, http, client, own_redis, data_dir
) -> None:
    before, queued = listed(http), client.lrange(INGEST_QUEUE, 0, -1)
    client.delete(INGEST_QUEUE)
    client.set(INGEST_QUEUE, "not a list")  # RQ's push of the ingest job fails (WRONGTYPE)
    body = jsonl(5, "enqueue")
    try:
        response = http.post(
            "/v1/batches",
            params={"model": MODEL},
            content=body,
            headers={"Idempotency-Key": "enqueue-1"},
        )
    finally:
        client.delete(INGEST_QUEUE)
        if queued:
            client.rpush(INGEST_QUEUE, *queued)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"
    assert_nothing_left(http, data_dir, before)
    sweep_once(client, own_redis, data_dir)
    assert client.lrange(INGEST_QUEUE, 0, -1) == queued, "the sweeper started a refused batch"
    assert listed(http) == before

    retried = http.post(
        "/v1/batches",
        params={"model": MODEL},
        content=body,
        headers={"Idempotency-Key": "enqueue-1"},
    )
    assert retried.status_code == 202, retried.text
    assert "Idempotent-Replayed" not in retried.headers
    assert listed(http) == [retried.json()["batch_id"], *before]
    assert client.llen(INGEST_QUEUE) == len(queued) + 1


def test_a_key_pages_through_all_its_own_batches(stack, client) -> None:
    """Another key's newer batches neither shorten nor end a key's pages."""
    url = stack.start_api(FUSIONSERVE_AUTH="keys")
    store = ApiKeys(client)
    _, alice = store.create("alice")
    _, bob = store.create("bob")
    auth = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731
    with httpx.Client(base_url=url, timeout=60) as http:

        def submit(token: str, tag: str) -> str:
            response = http.post(
                "/v1/batches", params={"model": MODEL}, content=jsonl(2, tag), headers=auth(token)
            )
            assert response.status_code == 202, response.text
            return response.json()["batch_id"]

        mine = [submit(alice, f"alice-{i}") for i in range(3)]
        theirs = [submit(bob, f"bob-{i}") for i in range(4)]  # newer than all of alice's

        seen: list[str] = []
        page = http.get("/v1/batches", params={"limit": 2}, headers=auth(alice)).json()
        while True:
            assert page["batches"], "an empty page before the end"
            seen += [b["batch_id"] for b in page["batches"]]
            if page["next"] is None:
                break
            page = http.get(page["next"], headers=auth(alice)).json()
        assert seen == mine[::-1]

        first = http.get("/v1/batches", params={"limit": 3, "model": MODEL}, headers=auth(bob))
        assert [b["batch_id"] for b in first.json()["batches"]] == theirs[::-1][:3]
        assert first.json()["next"] is not None
