"""Bulk batches through real parts: API, Redis, the RQ bulk worker, two model workers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import redis
from conftest import DEMO, ROOT
from helpers import (
    demo_item,
    reference_logits,
    reference_session,
    rq_idle,
    wait_settled,
    wait_until,
)
from tokenizers import Tokenizer

from batching import keys, signature
from fusionserve.client import AsyncClient, Client, NotFound
from fusionserve.zoo import data

MODEL = "demo"
SECRET = "test-webhook-secret"
N_UNIQUE = 500


@pytest.fixture(scope="module")
def stack(module_stack_factory, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    stack = module_stack_factory(
        DEMO.parent,
        FUSIONSERVE_DATA_DIR=str(data_dir),
        FUSIONSERVE_WEBHOOK_SECRET=SECRET,
        FUSIONSERVE_WEBHOOK_ALLOW_PRIVATE="1",  # the receivers are on 127.0.0.1
        FUSIONSERVE_WEBHOOK_BACKOFF_S="1",
        FUSIONSERVE_SWEEP_INTERVAL_S="0.2",
    )
    stack.start_api(processes=2)
    stack.start_worker(MODEL)
    stack.start_worker(MODEL)
    stack.wait_ready(MODEL, 2)
    stack.start_bulk_worker()
    return stack


@pytest.fixture(scope="module")
def http(stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def samples() -> list[data.Sample]:
    return data.generate(N_UNIQUE, data.HELD_OUT_SEED)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_file(str(DEMO / "tokenizer.json"))


def jsonl(rows: list[dict | bytes]) -> bytes:
    """JSON lines; a numpy array in a row is written as nested lists (float32: shortest form)."""
    dump = lambda r: orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY)  # noqa: E731
    return b"".join((r if isinstance(r, bytes) else dump(r)) + b"\n" for r in rows)


def submit(http: httpx.Client, body: bytes, **params: str) -> httpx.Response:
    return http.post("/v1/batches", params={"model": MODEL, **params}, content=body)


def results(http: httpx.Client, batch_id: str) -> list[dict]:
    response = http.get(f"/v1/batches/{batch_id}/results")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/jsonl")
    return [orjson.loads(line) for line in response.content.splitlines()]


TENSOR_EVERY = 10
"""In the 10,000-item batch every 10th line carries named tensors, the rest raw text+PNG."""


def test_10000_items_complete_in_input_order_matching_onnxruntime(http, samples, tokenizer) -> None:
    """Raw text+PNG and named-tensor lines, each with a custom id, through the bulk lane.

    Every bulk chunk mixes the two forms (one line in ``TENSOR_EVERY`` is named tensors). A
    named-tensor line is ~140 KB of JSON (a 3x64x64 image), so their share, not the item
    count, sets the upload's size: one in ten keeps it near 140 MB. The image is written
    as float32 numbers in their shortest form, which parse back to the very same float32s.
    """
    unique = [
        demo_item(s, as_tensors=i % TENSOR_EVERY == 0, tokenizer=tokenizer)
        for i, s in enumerate(samples)
    ]
    for i, sample in enumerate(samples):
        if i % TENSOR_EVERY == 0:
            image = data.normalize(sample.image)
            assert image.dtype == np.float32
            unique[i]["inputs"]["image"] = image  # as a float32 array: ~half the bytes
    lines = [{"custom_id": f"item-{i}", **unique[i % N_UNIQUE]} for i in range(10_000)]
    response = submit(http, jsonl(lines))
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["total"] == 10_000
    batch_id = created["batch_id"]
    assert created["status_url"] == f"/v1/batches/{batch_id}"

    status = wait_settled(http, batch_id)
    assert status["status"] == "completed"
    assert status["counts"] == {
        "total": 10_000,
        "queued": 0,
        "done": 10_000,
        "failed": 0,
        "expired": 0,
        "cancelled": 0,
    }
    assert status["created_at"] <= status["started_at"] <= status["finished_at"]

    rows = results(http, batch_id)
    assert [r["custom_id"] for r in rows] == [f"item-{i}" for i in range(10_000)]
    assert [r["line"] for r in rows] == list(range(1, 10_001))
    session = reference_session()
    expected = np.stack([reference_logits(session, tokenizer, s) for s in samples])
    served = np.array([r["outputs"]["logits"] for r in rows], dtype=np.float32)
    worst = float(np.abs(served - expected[np.arange(10_000) % N_UNIQUE]).max())
    assert worst <= 1e-4, f"served vs in-process ORT: max abs diff {worst}"
    assert {r["status"] for r in rows} == {"done"}
    assert all(r["labels"] and r["error"] is None for r in rows)


def test_malformed_lines_fail_alone_and_the_batch_completes(http, samples, tokenizer) -> None:
    good = demo_item(samples[0], as_tensors=False, tokenizer=tokenizer)
    lines: list[dict | bytes] = [
        {"custom_id": "ok-1", **good},
        b"{not json",
        b"",  # a blank line is no item
        {"custom_id": "no-image", "text": "how many squares?"},
        {"custom_id": "extra-field", **good, "colour": "red"},
        {
            "custom_id": "bad-shape",
            "inputs": {"input_ids": [1], "attention_mask": [1], "image": [1]},
        },
        {"custom_id": 7, **good},
        b"[1, 2, 3]",
        {"custom_id": "ok-2", **good},
    ]
    created = submit(http, jsonl(lines)).json()
    assert created["total"] == 8
    status = wait_settled(http, created["batch_id"])
    assert status["status"] == "completed"
    assert status["counts"]["done"] == 2 and status["counts"]["failed"] == 6
    rows = results(http, created["batch_id"])
    assert [r["line"] for r in rows] == [1, 2, 4, 5, 6, 7, 8, 9]
    by_line = {r["line"]: r for r in rows}
    assert by_line[1]["status"] == by_line[9]["status"] == "done"
    assert "not valid JSON" in by_line[2]["error"]["message"]
    assert "image" in by_line[4]["error"]["message"]
    assert "colour" in by_line[5]["error"]["message"]
    assert "shape" in by_line[6]["error"]["message"]
    assert "custom_id" in by_line[7]["error"]["message"]
    assert "JSON object" in by_line[8]["error"]["message"]
    assert by_line[4]["custom_id"] == "no-image"
    for line in (2, 4, 5, 6, 7, 8):
        assert by_line[line]["status"] == "failed" and by_line[line]["outputs"] is None


def test_multipart_upload_and_listing(http, samples, tokenizer) -> None:
    body = jsonl([demo_item(s, as_tensors=False, tokenizer=tokenizer) for s in samples[:5]])
    response = http.post(
        "/v1/batches",
        data={"model": MODEL},
        files={"file": ("items.jsonl", body, "application/jsonl")},
    )
    assert response.status_code == 202, response.text
    batch_id = response.json()["batch_id"]
    wait_settled(http, batch_id)
    rows = results(http, batch_id)
    assert [r["custom_id"] for r in rows] == [None] * 5
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5]

    listed = http.get("/v1/batches", params={"model": MODEL, "limit": 1}).json()
    assert [b["batch_id"] for b in listed["batches"]] == [batch_id]  # newest first
    older = http.get(listed["next"]).json()
    assert older["batches"] and batch_id not in [b["batch_id"] for b in older["batches"]]
    assert http.get("/v1/batches").json()["batches"][0]["batch_id"] == batch_id


@pytest.mark.parametrize(
    ("params", "body", "status", "needle"),
    [
        ({}, b'{"text": "x"}\n', 404, "no model"),
        ({"model": ""}, b'{"text": "x"}\n', 422, "model"),
        ({"model": MODEL}, b"\n\n", 422, "no items"),
        ({"model": MODEL, "priority": "9"}, b'{"text": "x"}\n', 422, "priority"),
        ({"model": MODEL, "priority": "high"}, b'{"text": "x"}\n', 422, "integer"),
        ({"model": MODEL, "webhook_url": "ftp://x"}, b'{"text": "x"}\n', 422, "webhook_url"),
    ],
)
def test_bad_submissions_are_refused_and_create_nothing(
    http, module_redis, params, body, status, needle
) -> None:
    if params == {}:
        params = {"model": "nope"}
    before = module_redis.zcard(keys.batches(MODEL))
    response = http.post("/v1/batches", params=params, content=body)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]["message"]
    assert module_redis.zcard(keys.batches(MODEL)) == before


def test_unknown_batches_and_multipart_without_file(http) -> None:
    for path in ("/v1/batches/demo.batch_0000000000000000", "/v1/batches/garbage"):
        response = http.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "batch_not_found"
    assert http.get("/v1/batches/demo.batch_0000000000000000/results").status_code == 404
    assert http.delete("/v1/batches/demo.batch_0000000000000000").status_code == 404
    response = http.post("/v1/batches", data={"model": MODEL}, files={"other": ("x", b"{}")})
    assert response.status_code == 422 and "file" in response.json()["error"]["message"]
    assert http.get("/v1/batches", params={"limit": 0}).status_code == 422


def test_idempotent_batch_resubmission_returns_the_same_batch(http, samples, tokenizer) -> None:
    body = jsonl([demo_item(s, as_tensors=False, tokenizer=tokenizer) for s in samples[:3]])
    headers = {"Idempotency-Key": "upload-2026-11-29-a"}
    first = http.post("/v1/batches", params={"model": MODEL}, content=body, headers=headers)
    again = http.post("/v1/batches", params={"model": MODEL}, content=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["batch_id"] == first.json()["batch_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = http.post("/v1/batches", params={"model": MODEL}, content=body + body, headers=headers)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    listed = http.get("/v1/batches", params={"model": MODEL, "limit": 100}).json()["batches"]
    assert [b["batch_id"] for b in listed].count(first.json()["batch_id"]) == 1
    assert wait_settled(http, first.json()["batch_id"])["counts"]["done"] == 3


def test_idempotent_infer_returns_the_same_jobs_and_enqueues_once(
    http, module_redis, samples, tokenizer
) -> None:
    item = demo_item(samples[1], as_tensors=False, tokenizer=tokenizer)
    stream = keys.stream(MODEL, 2)
    added = lambda: int(module_redis.xinfo_stream(stream)["entries-added"])  # noqa: E731
    before = added()
    for body, key in (({"items": [item, item]}, "list-1"), (item, "one-1")):
        headers = {"Idempotency-Key": key}
        first = http.post(f"/v1/models/{MODEL}/infer", json=body, headers=headers)
        again = http.post(f"/v1/models/{MODEL}/infer", json=body, headers=headers)
        assert first.status_code == again.status_code == 202
        assert first.json() == again.json()
        assert again.headers["Idempotent-Replayed"] == "true"
    assert added() == before + 2
    job_id = first.json()["job_id"]
    assert http.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()["status"] == "done"
    again = http.post(f"/v1/models/{MODEL}/infer", json=item, headers={"Idempotency-Key": "one-1"})
    assert again.json()["job_id"] == job_id  # and later, its result
    changed = dict(item, text="how many circles?")
    response = http.post(
        f"/v1/models/{MODEL}/infer", json=changed, headers={"Idempotency-Key": "one-1"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    bad = http.post(f"/v1/models/{MODEL}/infer", json=item, headers={"Idempotency-Key": "a b"})
    assert bad.status_code == 422
    assert added() == before + 2


class FlakyReceiver(BaseHTTPRequestHandler):
    """Answers 500 to the first ``failures`` deliveries, then 200; keeps what it got."""

    failures = 2
    received: list[tuple[int, dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        code = 500 if len(self.received) < self.failures else 200
        self.received.append((code, dict(self.headers), body))
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    FlakyReceiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/fusionserve"
    server.shutdown()


def test_webhook_is_delivered_signed_once_after_two_failures(
    stack, http, receiver, samples, tokenizer
) -> None:
    body = jsonl([demo_item(s, as_tensors=False, tokenizer=tokenizer) for s in samples[:4]])
    batch_id = submit(http, body, webhook_url=receiver).json()["batch_id"]
    wait_settled(http, batch_id)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = http.get(f"/v1/batches/{batch_id}").json()
        if status["webhook"]["state"] != "pending":
            break
        time.sleep(0.2)
    assert status["webhook"]["state"] == "delivered"
    assert [a["status_code"] for a in status["webhook"]["attempts"]] == [500, 500, 200]
    # a second delivery could only come from an RQ job: wait until none is left
    with redis.Redis.from_url(stack.env["REDIS_URL"]) as client:
        wait_until(lambda: rq_idle(client), "a webhook job is still queued or scheduled")
    assert [code for code, _, _ in FlakyReceiver.received] == [500, 500, 200]
    _, headers, delivered = FlakyReceiver.received[-1]
    assert signature.verify(SECRET.encode(), delivered, headers[signature.HEADER])
    assert not signature.verify(b"wrong", delivered, headers[signature.HEADER])
    assert not signature.verify(SECRET.encode(), delivered + b" ", headers[signature.HEADER])
    summary = orjson.loads(delivered)
    assert summary["batch"]["batch_id"] == batch_id
    assert summary["batch"]["counts"]["done"] == 4 and summary["batch"]["status"] == "completed"


def test_signature_refuses_replays_past_the_tolerance() -> None:
    body = b'{"batch": {}}'
    old = signature.sign(b"k", body, at=int(time.time()) - 600)
    assert not signature.verify(b"k", body, old, tolerance_s=300)
    assert signature.verify(b"k", body, old, tolerance_s=900)
    assert not signature.verify(b"k", body, "t=abc,v1=00")


def test_cli_submits_waits_and_downloads(stack, tmp_path: Path, samples, tokenizer) -> None:
    source = tmp_path / "items.jsonl"
    rows = [
        {"custom_id": f"cli-{i}", **demo_item(s, False, tokenizer)}
        for i, s in enumerate(samples[:20])
    ]
    source.write_bytes(jsonl(rows))
    cli = [sys.executable, "-m", "fusionserve.cli", "batch", "--url", stack.url]
    submitted = subprocess.run(
        [*cli, "submit", str(source), "--model", MODEL, "--wait"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    out = tmp_path / "out.jsonl"
    fetched = subprocess.run(
        [*cli, "results", batch_id, "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert fetched.returncode == 0, fetched.stderr
    got = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [r["custom_id"] for r in got] == [f"cli-{i}" for i in range(20)]
    assert {r["status"] for r in got} == {"done"}
    shown = subprocess.run([*cli, "status", batch_id], capture_output=True, text=True, cwd=ROOT)
    assert orjson.loads(shown.stdout)["counts"]["done"] == 20
    missing = subprocess.run(
        [*cli, "status", "demo.batch_0000000000000000"], capture_output=True, text=True, cwd=ROOT
    )
    assert missing.returncode == 1 and "no batch" in missing.stderr


def test_sdk_submits_follows_and_streams_batches(stack, tmp_path: Path, samples, tokenizer) -> None:
    source = tmp_path / "sdk.jsonl"
    items = [demo_item(s, False, tokenizer) for s in samples[:6]]
    source.write_bytes(jsonl([{"custom_id": f"sdk-{i}", **it} for i, it in enumerate(items)]))
    sent: list[int] = []
    with Client(stack.url) as fs:
        created = fs.submit_batch(MODEL, source, idempotency_key="sdk-key", on_bytes=sent.append)
        again = fs.submit_batch(MODEL, source, idempotency_key="sdk-key")
        assert again["batch_id"] == created["batch_id"] and sum(sent) == source.stat().st_size
        while fs.batch(created["batch_id"])["finished_at"] is None:
            time.sleep(0.1)
        rows = list(fs.batch_results(created["batch_id"]))
        assert [r["custom_id"] for r in rows] == [f"sdk-{i}" for i in range(6)]
        assert created["batch_id"] in [b["batch_id"] for b in fs.batches(MODEL)]
        with pytest.raises(NotFound):
            list(fs.batch_results("demo.batch_0000000000000000"))

    async def through_asyncio() -> list[dict]:
        async with AsyncClient(stack.url) as fs:
            batch_id = (await fs.submit_batch(MODEL, source))["batch_id"]
            assert batch_id != created["batch_id"]  # no key given: a fresh one, a new batch
            while (await fs.batch(batch_id))["finished_at"] is None:
                await asyncio.sleep(0.1)
            return [row async for row in fs.batch_results(batch_id)]

    rows = asyncio.run(through_asyncio())
    assert [r["status"] for r in rows] == ["done"] * 6
