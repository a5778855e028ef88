"""A worker killed with SIGKILL mid-run loses no job: the other one reclaims its entries."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import redis
from helpers import pending_by_consumer, wait_all
from onnx_models import heavy_model

from batching import keys

MODEL = "heavy"


def stranded_refs(client: redis.Redis, consumer: str) -> set[str]:
    """References (``<entry id>-<level>``) of the entries ``consumer`` holds unacknowledged."""
    refs = set()
    for level in (1, 2):
        stream = keys.stream(MODEL, level)
        for p in client.xpending_range(stream, keys.GROUP, "-", "+", 1000, consumer):
            refs.add(f"{p['message_id'].decode()}-{level}")
    return refs


def test_sigkill_of_one_worker_loses_no_job(stack_factory, redis_client, tmp_path: Path) -> None:
    heavy_model(tmp_path / "repo", MODEL, width=512, layers=32)
    stack = stack_factory(tmp_path / "repo", FUSIONSERVE_VISIBILITY_TIMEOUT_S="2")
    stack.start_api()
    victim = stack.start_worker()
    survivor = stack.start_worker()
    stack.wait_ready(MODEL, 2)

    killed: dict[str, object] = {}

    def kill_when_holding() -> None:
        """SIGKILL the victim while it holds delivered, unacknowledged entries.

        It is frozen (SIGSTOP) before its pending list is read, so what is read is what
        it dies holding; a victim caught between batches is thawed and watched again.
        """
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for name, count in pending_by_consumer(redis_client, MODEL, (1, 2)).items():
                if f"-{victim.pid}-" in name and count > 0:
                    victim.send_signal(signal.SIGSTOP)
                    held = stranded_refs(redis_client, name)
                    if not held:
                        victim.send_signal(signal.SIGCONT)
                        continue
                    victim.send_signal(signal.SIGKILL)
                    victim.wait()
                    killed["name"], killed["stranded"] = name, held
                    return
            time.sleep(0.002)

    watcher = threading.Thread(target=kill_when_holding)
    watcher.start()
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((2000, 512)).astype(np.float32)
    job_ids: list[str] = []
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        for start in range(0, len(inputs), 8):
            items = [{"inputs": {"x": row.tolist()}} for row in inputs[start : start + 8]]
            response = http.post(f"/v1/models/{MODEL}/infer", json={"items": items})
            assert response.status_code == 202, response.text
            job_ids += response.json()["job_ids"]
        watcher.join()
        assert killed, "the victim never held an entry"
        victim_name = str(killed["name"])
        results = wait_all(http, job_ids, timeout_s=180)

    assert survivor.poll() is None
    assert {r["status"] for r in results.values()} == {"done"}
    for k, job_id in enumerate(job_ids):
        assert len(results[job_id]["outputs"]["y"]) == 512, k
    assert pending_by_consumer(redis_client, MODEL, (1, 2)).get(victim_name, 0) == 0
    stranded = killed["stranded"]
    assert stranded, "the victim held nothing when it died"
    for job_id, result in results.items():  # what the victim died holding, the survivor did
        if job_id.split(".")[1] in stranded:
            assert result["timings"]["worker"] != victim_name
