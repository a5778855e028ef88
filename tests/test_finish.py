"""Finishing a record is one step for every path, and it settles a bulk batch it belongs to.

Dead-lettered, cancelled (as a job or with its batch) or completed: a bulk chunk's rows
are counted in its batch exactly once, the batch settles when the last one is final, and
the record keeps its batch's retention, not the online result TTL.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from helpers import publish_then_pause, wait_until
from onnx_models import heavy_model

from batching import keys
from batching.broker import Broker, Finished
from batching.bulk import BatchId, BatchStore, Chunk, NewBatch

MODEL = "heavy"
BULK = 3  # heavy_model's bulk level: two online levels, then bulk
RETENTION_S = 7200
RESULT_TTL_S = 60


@pytest.fixture
def store(redis_client: redis.Redis) -> BatchStore:
    return BatchStore(redis_client)


@pytest.fixture
def broker(redis_client: redis.Redis) -> Broker:
    b = Broker(redis_client)
    b.ensure_groups(MODEL, [BULK])
    return b


def new_batch(store: BatchStore, total: int) -> BatchId:
    bid = BatchId.new(MODEL)
    new = NewBatch(
        id=bid,
        total=total,
        path="unused.jsonl",
        fingerprint="f",
        priority=BULK,
        webhook_url=None,
        retention_s=RETENTION_S,
        window_s=3600,
    )
    assert store.create(new, None, 60) is None
    assert store.lease(bid, "feeder", 60_000) == "held"
    return bid


def feed(store: BatchStore, bid: BatchId, first_line: int, rows: int) -> str:
    """Feed ``rows`` lines as one chunk; returns the reference of its entry."""
    chunk = Chunk(rows=[(first_line + i, None) for i in range(rows)])
    outcome = store.feed(
        bid,
        owner="feeder",
        from_line=first_line,
        to_line=first_line + rows,
        to_byte=0,
        chunk=chunk,
        tensors={"x": np.ones((rows, 512), np.float32)},
        level=BULK,
        deadline_ms=0,
        window=100,
        retention_s=RETENTION_S,
        lease_ms=60_000,
    )
    assert outcome == "fed"
    seq = int(store.fields(bid)["chunks"]) - 1
    [(fed, _)] = store.chunks(bid, seq, 1)
    assert fed.ref is not None
    return fed.ref


def counts(client: redis.Redis, bid: BatchId) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in client.hgetall(bid.key).items()}


def assert_settled(client: redis.Redis, bid: BatchId) -> None:
    fields = counts(client, bid)
    assert fields["settled"] == fields["total"], fields
    assert "finished_at" in fields, fields
    assert client.hlen(keys.batch_inflight(bid.model, bid.local)) == 0
    assert not client.sismember(keys.batches_active(MODEL), str(bid))
    assert client.sismember(keys.batches_settled(MODEL), str(bid))


def keeps_retention(client: redis.Redis, ref: str) -> bool:
    return client.ttl(keys.job(MODEL, ref)) > RESULT_TTL_S


def test_a_dead_lettered_chunk_settles_its_batch_once(
    broker: Broker, store: BatchStore, redis_client
) -> None:
    bid = new_batch(store, total=4)
    ref = feed(store, bid, 0, 4)
    [entry] = broker.pull(MODEL, "w1", [BULK], 10, None)
    assert broker.start([entry], "w1") == ["running"]
    # w1 hangs; w2 claims the entry past its deliveries: it is dead-lettered
    claimed, dead = broker.reclaim(
        MODEL, BULK, "w2", min_idle_ms=0, max_deliveries=1, ttl_s=RESULT_TTL_S
    )
    assert (claimed, dead) == ([], [ref])
    assert broker.read(MODEL, ref).state == "failed"
    fields = counts(redis_client, bid)
    assert (fields["failed"], fields["status"]) == ("4", "completed")
    assert_settled(redis_client, bid)
    assert keeps_retention(redis_client, ref)

    # w1 wakes and finishes the same entry: a second finish is a no-op
    late = Finished(entry, "done", {"outputs": {}})
    assert broker.complete([late], RESULT_TTL_S) == 0
    assert counts(redis_client, bid) == fields
    assert broker.read(MODEL, ref).state == "failed"


def test_cancelling_the_batch_finishes_it_when_its_running_chunk_is_dead_lettered(
    broker: Broker, store: BatchStore, redis_client
) -> None:
    bid = new_batch(store, total=8)
    running = feed(store, bid, 0, 4)
    queued = feed(store, bid, 4, 4)
    [entry] = broker.pull(MODEL, "w1", [BULK], 1, None)
    assert entry.ref == running and broker.start([entry], "w1") == ["running"]

    assert store.stop(bid, "cancelled") == "cancelled"
    fields = counts(redis_client, bid)
    assert (fields["cancelled"], fields["settled"]) == ("4", "4")
    assert "finished_at" not in fields  # the running chunk is not final yet
    assert broker.read(MODEL, queued).state == "cancelled"
    assert keeps_retention(redis_client, queued)

    _, dead = broker.reclaim(MODEL, BULK, "w2", min_idle_ms=0, max_deliveries=1, ttl_s=60)
    assert dead == [running]
    fields = counts(redis_client, bid)
    assert (fields["status"], fields["failed"], fields["cancelled"]) == ("cancelled", "4", "4")
    assert_settled(redis_client, bid)
    assert redis_client.xlen(keys.stream(MODEL, BULK)) == 0


def test_cancelling_a_chunk_job_through_the_api_counts_it_in_its_batch(
    stack_factory, store: BatchStore, redis_client, tmp_path: Path
) -> None:
    heavy_model(tmp_path / "repo", MODEL, width=512, layers=2)
    stack = stack_factory(tmp_path / "repo", FUSIONSERVE_RESULT_TTL_S=str(RESULT_TTL_S))
    stack.start_api()
    publish_then_pause(stack, MODEL)  # published, but no worker runs the chunk
    bid = new_batch(store, total=4)
    ref = feed(store, bid, 0, 4)

    response = httpx.delete(f"{stack.url}/v1/jobs/{MODEL}.{ref}.0", timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    fields = counts(redis_client, bid)
    assert (fields["cancelled"], fields["status"]) == ("4", "completed")
    assert_settled(redis_client, bid)
    assert keeps_retention(redis_client, ref)
    assert redis_client.xlen(keys.stream(MODEL, BULK)) == 0


def test_work_that_never_ran_counts_in_a_version_that_is_read(
    stack_factory, redis_client, tmp_path: Path
) -> None:
    heavy_model(tmp_path / "repo", MODEL, width=512, layers=2)
    stack = stack_factory(tmp_path / "repo")
    stack.start_api()
    publish_then_pause(stack, MODEL)
    item = {"inputs": {"x": [0.0] * 512}}
    response = httpx.post(
        f"{stack.url}/v1/models/{MODEL}/infer", json={"items": [item], "timeout_ms": 1}, timeout=30
    )
    assert response.status_code == 202, response.text
    [job_id] = response.json()["job_ids"]
    worker = stack.start_worker()  # the deadline has passed: it expires the job, never runs it

    def counted() -> bool:
        return int(redis_client.hget(keys.stats(MODEL, 1), "fail_count") or 0) == 1

    wait_until(counted, "the expired job was not counted in the version served")
    assert stack.stop_worker(worker) == 0
    assert httpx.get(f"{stack.url}/v1/jobs/{job_id}", timeout=30).json()["status"] == "expired"
    assert not redis_client.exists(keys.stats(MODEL, 0)), "statistics written to stats:0"
