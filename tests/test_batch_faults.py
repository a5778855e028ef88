"""Bulk batches under faults: killed RQ worker, killed API, killed model worker, cancel."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from conftest import DEMO
from helpers import (
    children,
    demo_item,
    pending_by_consumer,
    publish_then_pause,
    wait_settled,
    wait_until,
)
from tokenizers import Tokenizer

from batching import keys
from batching.bulk import BatchId
from fusionserve.zoo import data

MODEL = "demo"


@pytest.fixture(scope="module")
def batch_body() -> bytes:
    """2,000 raw text+PNG lines with custom ids (200 distinct samples repeated)."""
    tokenizer = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    unique = [demo_item(s, False, tokenizer) for s in data.generate(200, data.HELD_OUT_SEED)]
    lines = [orjson.dumps({"custom_id": f"id-{i}", **unique[i % 200]}) for i in range(2000)]
    return b"\n".join(lines) + b"\n"


def bulk_stack(stack_factory, tmp_path, **env: str):
    return stack_factory(
        DEMO.parent,
        FUSIONSERVE_DATA_DIR=str(tmp_path / "data"),
        FUSIONSERVE_INGEST_LEASE_S="1",
        FUSIONSERVE_SWEEP_INTERVAL_S="0.2",
        FUSIONSERVE_BULK_WINDOW="2",
        **env,
    )


def field(client: redis.Redis, batch_id: str, name: str) -> int:
    bid = BatchId.parse(batch_id)
    assert bid is not None
    return int(client.hget(bid.key, name) or 0)


def settled(url: str, batch_id: str) -> dict:
    with httpx.Client(base_url=url, timeout=30) as http:
        return wait_settled(http, batch_id, timeout_s=180)


def results(url: str, batch_id: str) -> list[dict]:
    response = httpx.get(f"{url}/v1/batches/{batch_id}/results", timeout=60)
    return [orjson.loads(line) for line in response.content.splitlines()]


def inferences(client: redis.Redis) -> int:
    """Rows the model ran, over every version's statistics."""
    return sum(
        int(client.hget(k, "inference_count") or 0) for k in client.keys(keys.stats(MODEL, "*"))
    )


def submit(url: str, body: bytes) -> str:
    response = httpx.post(f"{url}/v1/batches", params={"model": MODEL}, content=body, timeout=60)
    assert response.status_code == 202, response.text
    return response.json()["batch_id"]


def test_sigkill_of_rq_worker_and_api_mid_ingest_counts_every_item_once(
    stack_factory, redis_client, tmp_path, batch_body
) -> None:
    stack = bulk_stack(stack_factory, tmp_path)
    stack.start_api()
    publish_then_pause(stack, MODEL)  # no model worker: the lane fills its window, ingest waits
    bulk = stack.start_bulk_worker()
    batch_id = submit(stack.url, batch_body)
    wait_until(lambda: field(redis_client, batch_id, "fed") > 0, "the ingest never fed a chunk")

    horses = children(bulk.pid)  # RQ's work horse runs the ingest in its own process group
    assert horses, "the ingest job was meant to be running"
    for pid in [bulk.pid, *horses]:
        os.kill(pid, signal.SIGKILL)  # as a machine or container dies: worker and job at once
    bulk.wait()
    [api] = [p for p in stack.procs if "api" in p.args]
    api.kill()  # and the API: it holds nothing once the batch is accepted
    api.wait()
    fed = field(redis_client, batch_id, "fed")
    assert 0 < fed < 2000, "the kill was meant to land mid-ingest"

    stack.start_api()
    stack.start_bulk_worker()
    stack.start_worker(MODEL)
    status = settled(stack.url, batch_id)
    assert status["status"] == "completed"
    assert status["counts"]["done"] == 2000
    assert status["counts"]["failed"] == status["counts"]["cancelled"] == 0
    assert field(redis_client, batch_id, "settled") == 2000
    assert field(redis_client, batch_id, "fed") == 2000
    rows = results(stack.url, batch_id)
    assert [r["custom_id"] for r in rows] == [f"id-{i}" for i in range(2000)]
    assert {r["status"] for r in rows} == {"done"}
    assert inferences(redis_client) == 2000, "an item was fed (and run) twice"
    assert all(not pid_alive(pid) for pid in horses)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_cancel_stops_the_batch_and_what_finished_stays_readable(
    stack_factory, redis_client, tmp_path, batch_body
) -> None:
    stack = bulk_stack(stack_factory, tmp_path)
    stack.start_api()
    publish_then_pause(stack, MODEL)
    stack.start_bulk_worker()
    batch_id = submit(stack.url, batch_body)
    wait_until(lambda: field(redis_client, batch_id, "fed") > 0, "the ingest never fed a chunk")
    worker = stack.start_worker(MODEL)
    wait_until(lambda: field(redis_client, batch_id, "done") > 0, "no item finished")
    worker.send_signal(signal.SIGSTOP)  # whatever it holds stays held while we cancel
    response = httpx.delete(f"{stack.url}/v1/batches/{batch_id}", timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    worker.send_signal(signal.SIGCONT)

    status = settled(stack.url, batch_id)
    counts = status["counts"]
    assert status["status"] == "cancelled"
    assert counts["done"] > 0 and counts["cancelled"] > 0
    assert counts["done"] + counts["cancelled"] == 2000 and counts["queued"] == 0
    assert redis_client.xlen(keys.stream(MODEL, 3)) == 0, "cancelled entries left in the lane"
    wait_until(
        lambda: not any(pending_by_consumer(redis_client, MODEL).values()),
        "the thawed worker kept entries unacknowledged",
    )
    assert inferences(redis_client) == counts["done"], "a cancelled item reached the model"
    rows = results(stack.url, batch_id)
    assert [r["custom_id"] for r in rows] == [f"id-{i}" for i in range(2000)]
    done = [r for r in rows if r["status"] == "done"]
    cancelled = [r for r in rows if r["status"] == "cancelled"]
    assert len(done) == counts["done"] and len(cancelled) == counts["cancelled"]
    assert all(r["outputs"] and r["labels"] for r in done)
    assert all(r["outputs"] is None and r["error"]["code"] == "cancelled" for r in cancelled)
    again = httpx.delete(f"{stack.url}/v1/batches/{batch_id}", timeout=30)
    assert again.status_code == 409


def test_sigkill_of_a_model_worker_mid_batch_loses_no_item(
    stack_factory, redis_client, tmp_path, batch_body
) -> None:
    stack = bulk_stack(stack_factory, tmp_path, FUSIONSERVE_VISIBILITY_TIMEOUT_S="2")
    stack.start_api()
    victim = stack.start_worker(MODEL)
    stack.wait_ready(MODEL, 1)
    stack.start_bulk_worker()
    batch_id = submit(stack.url, batch_body)
    wait_until(lambda: field(redis_client, batch_id, "done") > 0, "no item finished")
    victim.kill()
    victim.wait()
    stack.start_worker(MODEL)
    status = settled(stack.url, batch_id)
    assert status["status"] == "completed"
    assert status["counts"]["done"] == 2000
    assert field(redis_client, batch_id, "settled") == 2000
    rows = results(stack.url, batch_id)
    assert [r["custom_id"] for r in rows] == [f"id-{i}" for i in range(2000)]
    assert {r["status"] for r in rows} == {"done"}


def test_an_ingest_that_keeps_failing_fails_the_batch_after_bounded_restarts(
    stack_factory, redis_client, tmp_path
) -> None:
    stack = bulk_stack(stack_factory, tmp_path, FUSIONSERVE_INGEST_MAX_RESTARTS="2")
    stack.start_api()
    publish_then_pause(stack, MODEL)
    batch_id = submit(stack.url, b'{"text": "x"}\n')
    bid = BatchId.parse(batch_id)
    assert bid is not None
    redis_client.hset(bid.key, "deadline_ms", "soon")  # every ingest raises ValueError
    stack.start_bulk_worker()
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        status = wait_settled(http, batch_id, timeout_s=90)
    assert status["status"] == "failed"
    assert "ingest failed 3 times" in status["error"] and "ValueError" in status["error"]
    assert field(redis_client, batch_id, "ingest_runs") == 3
    assert not redis_client.sismember(keys.batches_active(MODEL), batch_id)
