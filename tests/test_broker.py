"""The Streams broker against a real Redis-protocol server."""

import time

import numpy as np
import pytest
import redis
from helpers import wait_until

from batching import codec, keys
from batching.broker import Broker, Finished, NewEntry, QueueFull

MODEL = "m"


def submit(broker: Broker, rows: int = 1, priority: int = 2, max_queue: int = 100) -> str:
    x = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    entry = NewEntry(
        model=MODEL,
        tensors={"x": x},
        rows=rows,
        priority=priority,
        levels=2,
        reply_channel="fs:reply:test",
        max_queue_size=max_queue,
        deadline_ms=0,
    )
    return broker.submit(entry)


@pytest.fixture
def broker(redis_client: redis.Redis) -> Broker:
    b = Broker(redis_client)
    b.ensure_groups(MODEL, range(1, 3))
    return b


def test_one_entry_holds_all_rows_and_a_queued_record(broker: Broker) -> None:
    eid = submit(broker, rows=3)
    view = broker.read(MODEL, eid)
    assert (view.state, view.rows, view.result) == ("queued", 3, None)
    [entry] = broker.pull(MODEL, "w1", range(1, 3), 10, None)
    assert entry.ref == eid and entry.rows == 3 and entry.inputs["x"].shape == (3, 2)


def test_higher_priority_entries_come_first(broker: Broker) -> None:
    low = submit(broker, priority=2)
    high = submit(broker, priority=1)
    assert [e.ref for e in broker.pull(MODEL, "w1", range(1, 3), 10, None)] == [high, low]


def test_complete_writes_publishes_to_watchers_acks_and_deletes(
    broker: Broker, redis_client
) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("fs:reply:test")
    eid = submit(broker)
    assert broker.watch(MODEL, eid, "fs:reply:test", 60).state == "queued"  # a long-poll
    [entry] = broker.pull(MODEL, "w1", range(1, 3), 10, None)
    assert broker.start([entry], "w1") == ["running"]
    result = {"outputs": {"y": codec.tensor_to_wire(np.ones((1, 2), np.float32))}}
    assert broker.complete([Finished(entry, "done", result)], ttl_s=60) == 1
    view = broker.read(MODEL, eid)
    assert view.state == "done" and view.result["outputs"]["y"]["shape"] == [1, 2]
    assert redis_client.xlen(keys.stream(MODEL, 2)) == 0
    assert redis_client.xpending(keys.stream(MODEL, 2), keys.GROUP)["pending"] == 0
    assert 0 < redis_client.ttl(keys.job(MODEL, eid)) <= 60
    message = None
    deadline = time.monotonic() + 5
    while message is None and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)
    record, state, blob = message["data"].split(b"\n", 2)
    assert record.decode() == keys.job(MODEL, eid) and state == b"done"
    assert codec.unpack(blob) == view.result


def test_a_late_duplicate_never_overwrites_a_final_result(broker: Broker) -> None:
    eid = submit(broker)
    [entry] = broker.pull(MODEL, "w1", range(1, 3), 10, None)
    broker.complete([Finished(entry, "done", {"n": 1})], ttl_s=60)
    assert broker.start([entry], "w2") == ["done"]
    assert broker.complete([Finished(entry, "failed", {"n": 2})], ttl_s=60) == 0
    assert broker.read(MODEL, eid).result == {"n": 1}


def test_watch_registers_a_poller_that_is_not_the_submitter(broker: Broker, redis_client) -> None:
    eid = submit(broker)
    assert broker.watch(MODEL, eid, "fs:reply:other", 30).result is None
    assert redis_client.smembers(keys.watchers(MODEL, eid)) == {b"fs:reply:other"}
    assert broker.watch(MODEL, "1-1-2", "fs:reply:other", 30) is None


def test_a_full_queue_refuses_and_enqueues_nothing(broker: Broker, redis_client) -> None:
    submit(broker, max_queue=2)
    submit(broker, priority=1, max_queue=2)
    with pytest.raises(QueueFull):
        submit(broker, max_queue=2)
    assert broker.queue_length(MODEL, 2) == 2
    assert len(redis_client.keys(keys.job(MODEL, "*"))) == 2


def idle_past(client: redis.Redis, ms: int) -> bool:
    """Every pending entry of the model's level-2 stream has been idle for ``ms`` or more."""
    pending = client.xpending_range(keys.stream(MODEL, 2), keys.GROUP, "-", "+", 100)
    return bool(pending) and all(p["time_since_delivered"] >= ms for p in pending)


def test_idle_entries_are_reclaimed_then_dead_lettered(broker: Broker, redis_client) -> None:
    eid = submit(broker)
    broker.pull(MODEL, "crashed", range(1, 3), 10, None)
    wait_until(lambda: idle_past(redis_client, 10), "the entry never went idle")
    claimed, dead = broker.reclaim(MODEL, 2, "w2", min_idle_ms=10, max_deliveries=2, ttl_s=60)
    assert [e.ref for e in claimed] == [eid] and dead == []
    wait_until(lambda: idle_past(redis_client, 10), "the claimed entry never went idle")
    claimed, dead = broker.reclaim(MODEL, 2, "w3", min_idle_ms=10, max_deliveries=2, ttl_s=60)
    assert claimed == [] and dead == [eid]
    view = broker.read(MODEL, eid)
    assert view.state == "failed" and view.result["error"]["code"] == "dead_letter"


def test_submit_many_is_one_round_trip_with_independent_outcomes(
    broker: Broker, redis_client
) -> None:
    x = np.zeros((1, 2), np.float32)
    entries = [
        NewEntry(MODEL, {"x": x}, 1, 2, 2, "fs:reply:test", max_queue_size=2, deadline_ms=0)
        for _ in range(3)
    ]
    redis_client.script_flush()  # the server forgot the script: it is loaded again
    first, second, third = broker.submit_many(entries)
    assert isinstance(first, str) and isinstance(second, str) and first != second
    assert isinstance(third, QueueFull)
    assert broker.queue_length(MODEL, 2) == 2


def test_retry_after_is_the_depth_over_the_fresh_drain_rates(broker: Broker, redis_client) -> None:
    for _ in range(10):
        submit(broker)
    now = time.time()
    redis_client.hset(keys.drain_rates(MODEL), mapping={"w1": f"1.5,{now}", "w2": f"2.5,{now}"})
    assert broker.retry_after(MODEL, 2, stale_s=5) == 3  # ceil(10 / 4.0)
    redis_client.hset(keys.drain_rates(MODEL), mapping={"w1": "9.0,1", "w2": "0.1,1"})  # stale
    assert broker.retry_after(MODEL, 2, stale_s=5) == 1  # nothing measured: probe again soon
    redis_client.hset(keys.drain_rates(MODEL), "w3", f"0.05,{now}")
    assert broker.retry_after(MODEL, 2, stale_s=5) == 60  # capped


def test_a_reclaimed_synchronous_entry_answers_once(broker: Broker, redis_client) -> None:
    """A /v2 entry (no record) taken over from a hung worker runs twice, yet only the first
    completion publishes, releases its version pin and counts; the late one is a no-op."""
    redis_client.sadd(keys.accepting(MODEL), "1")
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("fs:reply:sync")
    x = np.zeros((1, 2), np.float32)
    ref = broker.submit(
        NewEntry(MODEL, {"x": x}, 1, 2, 2, "fs:reply:sync", 100, 0, version=1, sync=True)
    )
    assert not redis_client.exists(keys.job(MODEL, ref))
    assert redis_client.get(keys.pinned(MODEL, 1)) == b"1"
    [hung] = broker.pull(MODEL, "hung", range(1, 3), 10, None)
    wait_until(lambda: idle_past(redis_client, 10), "the entry never went idle")
    [taken], dead = broker.reclaim(MODEL, 2, "w2", min_idle_ms=10, max_deliveries=2, ttl_s=60)
    assert taken.ref == hung.ref == ref and taken.reply == "fs:reply:sync" and dead == []
    assert broker.start([hung], "hung") == ["queued"]  # runnable: there is no record to mark
    result = {"outputs": {"y": codec.tensor_to_wire(np.ones((1, 2), np.float32))}}
    assert broker.complete([Finished(taken, "done", result)], 60, version=1) == 1
    assert broker.complete([Finished(hung, "done", result)], 60, version=1) == 0
    redis_client.publish("fs:reply:sync", b"marker")  # after anything the completions sent
    messages: list[bytes] = []
    for _ in range(100):  # None: the subscribe confirmation, or nothing within the timeout
        m = pubsub.get_message(timeout=1)
        if m is not None and m["data"] == b"marker":
            break
        messages += [m["data"]] if m is not None else []
    assert [m.split(b"\n", 2)[:2] for m in messages] == [[keys.job(MODEL, ref).encode(), b"done"]]
    assert redis_client.get(keys.pinned(MODEL, 1)) == b"0"
    assert redis_client.hget(keys.outcomes(MODEL), "done") == b"1"
    assert broker.stats(MODEL, 1)["success_count"] == 1
    assert broker.queue_length(MODEL, 2) == 0 and not redis_client.exists(keys.job(MODEL, ref))
