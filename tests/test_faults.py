"""Faults a production deployment meets, each bounded in time, on loopback or in a network
namespace the test creates: Redis restarted mid-load, a worker cut off mid-batch, and
SIGTERM to the API with requests in flight."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
from conftest import DEMO
from helpers import (
    accepted_connections,
    b64,
    children,
    pending_by_consumer,
    refuses_connections,
    wait_all,
    wait_until,
)
from onnx_models import heavy_model
from stack import Stack

from batching import keys
from fusionserve.embedded import EmbeddedRedis, free_port
from fusionserve.zoo import data

MODEL = "demo"


def demo_items(n: int) -> list[dict]:
    return [
        {"text": s.question, "image": b64(data.png_bytes(s.image))}
        for s in data.generate(n, data.HELD_OUT_SEED)
    ]


def test_redis_restart_mid_load_loses_no_acknowledged_job(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "valkey", appendonly=True).start()
    stack = Stack(server.url, DEMO.parent, tmp_path / "logs", FUSIONSERVE_VISIBILITY_TIMEOUT_S="2")
    (tmp_path / "logs").mkdir()
    items = demo_items(32)
    acknowledged: list[str] = []
    refused: list[httpx.Response] = []
    hung: list[Exception] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=stack.url, timeout=10) as http:
            k = 0
            while not stop.is_set():
                try:
                    response = http.post(f"/v1/models/{MODEL}/infer", json=items[k % 32])
                except httpx.TimeoutException as exc:
                    hung.append(exc)
                    continue
                if response.status_code == 202:
                    acknowledged.append(response.json()["job_id"])
                elif response.status_code == 503:
                    refused.append(response)
                    time.sleep(0.05)
                k += 1

    try:
        stack.start_api()
        stack.start_worker(MODEL)
        stack.wait_ready(MODEL, 1)
        runner = threading.Thread(target=load)
        runner.start()
        try:
            wait_until(lambda: len(acknowledged) >= 100, "no load got through")
            server.stop()  # a restart: SIGTERM, the AOF is flushed
            wait_until(lambda: len(refused) >= 5, "no 503 while Redis was down")
            before_restart = len(acknowledged)
            server.start()
            wait_until(lambda: len(acknowledged) >= before_restart + 100, "no recovery")
        finally:
            stop.set()
            runner.join(30)
        assert not hung, f"requests hung instead of a fast 503: {hung[:3]}"
        assert all(r.headers.get("Retry-After") for r in refused)
        assert all(r.json()["error"]["code"] == "unavailable" for r in refused)
        with httpx.Client(base_url=stack.url, timeout=60) as http:
            results = wait_all(http, acknowledged, timeout_s=120)
        assert {r["status"] for r in results.values()} == {"done"}, "an acknowledged job was lost"
    finally:
        stack.stop()
        server.stop()


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def netns():
    """A network namespace joined to this one by a veth pair: (namespace, host IP, link)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 for a network namespace")
    tag = f"{os.getpid() % 100000}"
    ns, host, peer = f"fs{tag}", f"fsh{tag}", f"fsp{tag}"
    subnet = 10 + os.getpid() % 200
    host_ip, ns_ip = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
    _run("ip", "netns", "add", ns)
    try:
        _run("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", peer, "netns", ns)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", host)
        _run("ip", "link", "set", host, "up")
        _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", peer)
        _run("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host_ip, host
    finally:
        subprocess.run(["ip", "link", "del", host], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_worker_cut_off_mid_batch_is_replaced_and_its_late_result_changes_nothing(
    netns, tmp_path: Path
) -> None:
    ns, host_ip, link = netns
    heavy_model(tmp_path / "repo", "heavy", width=512, layers=32)
    port = free_port()
    password = "fault-test-secret-0451"  # Redis off loopback needs one (protected mode)
    server = EmbeddedRedis(
        tmp_path / "valkey", port=port, bind=f"127.0.0.1 {host_ip}", password=password
    ).start()
    client = redis.Redis.from_url(server.url)
    (tmp_path / "logs").mkdir()
    env = {"FUSIONSERVE_VISIBILITY_TIMEOUT_S": "2", "FUSIONSERVE_HEARTBEAT_S": "0.5"}
    stack = Stack(server.url, tmp_path / "repo", tmp_path / "logs", **env)
    try:
        stack.start_api()
        victim = stack.start_worker(
            "heavy",
            wrap=("ip", "netns", "exec", ns),
            REDIS_URL=f"redis://:{password}@{host_ip}:{port}/0",
        )
        stack.wait_ready("heavy", 1)
        rows = [{"inputs": {"x": [0.01 * i] * 512}} for i in range(8)]
        with httpx.Client(base_url=stack.url, timeout=30) as http:
            # The whole backlog queues first: a worker holds only its next batch and one
            # more, so on a quiet box it could keep pace with the submissions and hold
            # nothing when we look.
            victim.send_signal(signal.SIGSTOP)
            job_ids = [
                http.post("/v1/models/heavy/infer", json={"items": rows}).json()["job_ids"][0]
                for _ in range(60)
            ]
            victim.send_signal(signal.SIGCONT)

            def holds_while_stopped() -> bool:
                """Stopped while it holds entries, so it cannot finish them before the cut
                (on a loaded box it could between a check and the cut)."""
                victim.send_signal(signal.SIGSTOP)
                if held_by(client, f"-{victim.pid}-") > 0:
                    return True
                victim.send_signal(signal.SIGCONT)
                return False

            wait_until(holds_while_stopped, "victim holds nothing")
            stranded = held_by(client, f"-{victim.pid}-")
            _run("ip", "link", "set", link, "down")  # cut off, mid-batch
            victim.send_signal(signal.SIGCONT)
            stack.start_worker("heavy")  # a worker elsewhere
            first = wait_all(http, job_ids, timeout_s=120)
            assert {r["status"] for r in first.values()} == {"done"}
            done_count = int(client.hget(keys.outcomes("heavy"), "done") or 0)
            _run("ip", "link", "set", link, "up")  # it comes back, and finishes late
            wait_until(lambda: held_by(client, f"-{victim.pid}-") == 0, "victim never resumed")
            second = {j: http.get(f"/v1/jobs/{j}").json() for j in job_ids}
        assert stranded > 0
        for job_id in job_ids:
            assert second[job_id]["outputs"] == first[job_id]["outputs"]
            assert second[job_id]["timings"] == first[job_id]["timings"], "result overwritten"
        assert int(client.hget(keys.outcomes("heavy"), "done") or 0) == done_count == 60
        logs = "".join(f.read_text(errors="replace") for f in (tmp_path / "logs").iterdir())
        assert password not in logs, "the Redis password was logged"
    finally:
        stack.stop()
        client.close()
        server.stop()


def held_by(client: redis.Redis, marker: str) -> int:
    """Entries delivered to a consumer whose name contains ``marker`` and not yet acked."""
    return sum(n for name, n in pending_by_consumer(client, "heavy").items() if marker in name)


def test_sigterm_to_the_api_finishes_requests_in_flight(stack_factory) -> None:
    stack = stack_factory(DEMO.parent)
    stack.start_api()
    worker = stack.start_worker(MODEL)
    stack.wait_ready(MODEL, 1)
    worker.send_signal(signal.SIGSTOP)  # the job waits; its long poll is in flight
    [item] = demo_items(1)
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        job_id = http.post(f"/v1/models/{MODEL}/infer", json=item).json()["job_id"]
    answers: list[httpx.Response] = []
    poll = threading.Thread(
        target=lambda: answers.append(
            httpx.get(f"{stack.url}/v1/jobs/{job_id}", params={"wait": 20}, timeout=30)
        )
    )
    [api] = [p for p in stack.procs if "api" in p.args]
    port = int(stack.url.rsplit(":", 1)[1])
    before = accepted_connections(children(api.pid), port)
    poll.start()
    wait_until(
        lambda: accepted_connections(children(api.pid), port) > before,
        "the long poll never reached an API process",
    )
    api.send_signal(signal.SIGTERM)  # a rolling restart
    wait_until(lambda: refuses_connections("127.0.0.1", port), "the API kept listening")
    worker.send_signal(signal.SIGCONT)
    poll.join(40)
    assert answers and answers[0].status_code == 200
    assert answers[0].json()["status"] == "done"
    assert api.wait(40) == 0
