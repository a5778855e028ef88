"""Behind Sentinel: a ``redis+sentinel://`` URL serves; a failover loses no acknowledged job.

A real deployment from the embedded Valkey binary (fusionserve/embedded_sentinel.py): a
master, a replica and three sentinels on loopback; real API and worker processes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from conftest import _stacks
from helpers import pending_by_consumer, wait_all
from onnx_models import heavy_model, scale_model

from batching.connection import client_from_url, parse_sentinel_url
from batching.settings import Settings
from fusionserve.client import Client, Unauthorized
from fusionserve.embedded_sentinel import EmbeddedSentinel

MODEL = "scale"
HEAVY = "heavy"
X = [1.0, 2.0, 3.0, 4.0]


def test_sentinel_urls_parse_and_bad_ones_say_what_is_expected() -> None:
    url = parse_sentinel_url("redis+sentinel://u:p%40ss@a:1,b:2/svc/3")
    assert url is not None
    assert (url.hosts, url.service, url.db) == ([("a", 1), ("b", 2)], "svc", 3)
    assert (url.username, url.password, url.ssl) == ("u", "p@ss", False)
    assert parse_sentinel_url("rediss+sentinel://a:1/svc").ssl  # type: ignore[union-attr]
    assert parse_sentinel_url("redis://a:1/0") is None
    for bad in ("redis+sentinel://a:1", "redis+sentinel://a/svc", "redis+sentinel://a:1/svc/x"):
        with pytest.raises(ValueError, match="host:port"):
            parse_sentinel_url(bad)


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory):
    deployment = EmbeddedSentinel(tmp_path_factory.mktemp("sentinel")).start()
    yield deployment
    deployment.stop()


@pytest.fixture
def sentinel_stack(sentinel: EmbeddedSentinel, tmp_path: Path) -> Iterator:
    """Stacks (API and worker processes) whose ``REDIS_URL`` is the sentinels'."""
    yield from _stacks(sentinel.url, tmp_path)


@pytest.fixture
def stack(sentinel_stack, tmp_path: Path):
    scale_model(tmp_path / "repo", MODEL)
    stack = sentinel_stack(tmp_path / "repo")
    stack.start_api()
    stack.start_worker(MODEL)
    stack.wait_ready(MODEL, 1)
    return stack


def test_served_through_the_sentinels_on_the_master(stack, sentinel: EmbeddedSentinel) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        job = http.post(f"/v1/models/{MODEL}/infer", json={"inputs": {"x": X}}).json()["job_id"]
        body = http.get(f"/v1/jobs/{job}", params={"wait": 20}).json()
        assert body["status"] == "done" and body["outputs"]["y"] == [2 * x for x in X]
        v2 = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X}]}
        answer = http.post(f"/v2/models/{MODEL}/infer", json=v2)
        assert answer.status_code == 200, answer.text
    with redis.Redis(port=sentinel.master_port()) as master:
        assert master.sismember("fs:models", MODEL)  # the data lives on the master


def test_a_failover_under_load_loses_no_acknowledged_job(stack, sentinel: EmbeddedSentinel) -> None:
    """Submissions run before, during and after ``SENTINEL FAILOVER``: each answer is a 202
    (the job then finishes) or a 503 with Retry-After, never a hang; after the switch the
    service resumes without a restart."""
    acknowledged: list[str] = []
    refused: list[tuple[int, str]] = []
    switched = threading.Event()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=stack.url, timeout=15) as http:
            after_switch = 0
            for _ in range(2000):  # bounded: stops by itself
                if stop.is_set() or after_switch >= 20:
                    return
                response = http.post(f"/v1/models/{MODEL}/infer", json={"inputs": {"x": X}})
                if response.status_code == 202:
                    acknowledged.append(response.json()["job_id"])
                    after_switch += switched.is_set()
                else:
                    assert response.status_code == 503, response.text
                    assert response.headers.get("Retry-After"), response.headers
                    refused.append((response.status_code, response.json()["error"]["code"]))
                    time.sleep(0.05)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        deadline = time.monotonic() + 60
        while len(acknowledged) < 20 and time.monotonic() < deadline and loader.is_alive():
            time.sleep(0.05)
        before = sentinel.master_port()
        assert sentinel.failover() != before
        switched.set()
        loader.join(120)
    finally:
        stop.set()
        loader.join(30)
    assert not loader.is_alive()
    assert len(acknowledged) >= 40, (len(acknowledged), refused)  # it resumed after the switch
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        for job in acknowledged:
            for _ in range(10):  # long polls; a 503 while the API finds the new master is retried
                response = http.get(f"/v1/jobs/{job}", params={"wait": 20})
                if response.status_code != 503:
                    break
            body = response.json()
            assert body.get("status") == "done", (job, body)


def test_keys_batches_and_cancels_through_the_sentinels(sentinel_stack, tmp_path: Path) -> None:
    """The keys CLI, a bulk batch (RQ ingest on the sentinels' master) and a cancelled job."""
    scale_model(tmp_path / "repo", MODEL)
    env = {"FUSIONSERVE_AUTH": "keys", "FUSIONSERVE_DATA_DIR": str(tmp_path / "data")}
    stack = sentinel_stack(tmp_path / "repo", **env)
    created = subprocess.run(
        [sys.executable, "-m", "fusionserve.cli", "keys", "create", "--name", "sentinel"],
        env=stack.env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    key = orjson.loads(created.stdout)["key"]
    stack.start_api()
    stack.start_bulk_worker()
    worker = stack.start_worker(MODEL)
    stack.wait_ready(MODEL, 1)
    assert stack.stop_worker(worker) == 0  # published; nothing runs what is queued now
    with Client(stack.url, api_key=key) as fs:
        with pytest.raises(Unauthorized), Client(stack.url) as nobody:
            nobody.models()  # keys are checked: the store is on the master too
        queued = fs.submit(MODEL, inputs={"x": X})
        assert fs.cancel(queued).status == "cancelled"
        source = tmp_path / "items.jsonl"
        rows = [{"custom_id": f"r{i}", "inputs": {"x": [i, 0, 0, 1]}} for i in range(30)]
        source.write_bytes(b"\n".join(orjson.dumps(r) for r in rows) + b"\n")
        batch = fs.submit_batch(MODEL, source)["batch_id"]
        stack.start_worker(MODEL)
        deadline = time.monotonic() + 60
        while fs.batch(batch)["finished_at"] is None and time.monotonic() < deadline:
            time.sleep(0.1)
        results = list(fs.batch_results(batch))
        assert fs.result(queued).status == "cancelled"  # it never ran
    assert [r["custom_id"] for r in results] == [f"r{i}" for i in range(30)]
    assert [r["outputs"]["y"] for r in results] == [[2 * i, 0, 0, 2] for i in range(30)]


def test_a_sigkilled_worker_loses_no_job_behind_the_sentinels(
    sentinel: EmbeddedSentinel, sentinel_stack, tmp_path: Path
) -> None:
    """A worker SIGKILLed while it holds entries: the other reclaims them from the master."""
    heavy_model(tmp_path / "repo", HEAVY, width=256, layers=16)
    env = {"FUSIONSERVE_VISIBILITY_TIMEOUT_S": "2"}
    master = redis.Redis(port=sentinel.master_port())
    stack = sentinel_stack(tmp_path / "repo", **env)
    with master:
        stack.start_api()
        victim = stack.start_worker(HEAVY)
        stack.start_worker(HEAVY)
        stack.wait_ready(HEAVY, 2)
        killed = threading.Event()

        def kill_when_holding() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                held = pending_by_consumer(master, HEAVY, (1, 2))
                if any(f"-{victim.pid}-" in name and n for name, n in held.items()):
                    victim.kill()
                    killed.set()
                    return
                time.sleep(0.002)

        watcher = threading.Thread(target=kill_when_holding)
        watcher.start()
        rows = [[float(i % 7)] * 256 for i in range(1000)]
        with httpx.Client(base_url=stack.url, timeout=60) as http:
            job_ids: list[str] = []
            for start in range(0, len(rows), 8):
                items = [{"inputs": {"x": row}} for row in rows[start : start + 8]]
                response = http.post(f"/v1/models/{HEAVY}/infer", json={"items": items})
                assert response.status_code == 202, response.text
                job_ids += response.json()["job_ids"]
            watcher.join()
            assert killed.is_set(), "the victim never held an entry"
            results = wait_all(http, job_ids, timeout_s=180)
    assert {r["status"] for r in results.values()} == {"done"}


class Interrupted(Exception):
    pass


def test_a_read_cut_short_drops_its_connection(sentinel: EmbeddedSentinel) -> None:
    """A blocking read interrupted (as RQ's warm shutdown interrupts its BLMOVE) must not
    leave its reply for the next command on that connection."""
    client = client_from_url(sentinel.url, Settings(), purpose="rq", block_s=10)
    connection = client.connection_pool.get_connection()
    connection.send_command("BLPOP", "fs:test:nothing", 3)

    def interrupt(_signum: int, _frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        with pytest.raises(Interrupted):
            connection.read_response()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    client.connection_pool.release(connection)
    assert client.set("fs:test:key", "1") is True  # not BLPOP's nil, 3 s late
    assert client.get("fs:test:key") == b"1"
    client.close()
