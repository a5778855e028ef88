"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Iterable

import httpx
import numpy as np
import onnxruntime as ort
import redis
from conftest import DEMO
from tokenizers import Tokenizer

from batching import keys
from fusionserve.zoo import data
from fusionserve.zoo.tokenizer import encode_batch


def entries_added(client: redis.Redis, model: str, levels: int = 2) -> int:
    """Entries ever added to a model's streams: unchanged means nothing was enqueued."""
    total = 0
    for level in range(1, levels + 1):
        key = keys.stream(model, level)
        if client.exists(key):
            total += int(client.xinfo_stream(key)["entries-added"])
    return total


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wait_all(http: httpx.Client, job_ids: Iterable[str], timeout_s: float = 120) -> dict[str, dict]:
    """Long-poll every job until it is final; returns the bodies by job id."""
    results: dict[str, dict] = {}
    deadline = time.monotonic() + timeout_s
    for job_id in job_ids:
        while True:
            body = http.get(f"/v1/jobs/{job_id}", params={"wait": 5}).json()
            if body["status"] not in ("queued", "running"):
                results[job_id] = body
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {body['status']}")
    return results


def publish_then_pause(stack, model: str) -> None:
    """Start a worker so the model is published, then stop it: work queues until one returns."""
    worker = stack.start_worker(model)
    stack.wait_ready(model, 1)
    stack.stop_worker(worker)


def reference_session() -> ort.InferenceSession:
    """The demo model in-process, to check what the server returns."""
    [version] = [p for p in DEMO.iterdir() if p.name.isdigit()]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(version / "model.onnx"), options)


def reference_logits(
    session: ort.InferenceSession, tokenizer: Tokenizer, sample: data.Sample
) -> np.ndarray:
    """The demo model's logits for one sample at batch size 1 (no padding)."""
    ids, mask = encode_batch(tokenizer, [sample.question])
    image = data.normalize(sample.image)[None]
    feeds = {"input_ids": ids, "attention_mask": mask, "image": image}
    return session.run(["logits"], feeds)[0][0]


def demo_item(sample: data.Sample, as_tensors: bool, tokenizer: Tokenizer) -> dict:
    """A request item for the demo model: raw text + PNG, or the named tensors."""
    if not as_tensors:
        return {"text": sample.question, "image": b64(data.png_bytes(sample.image))}
    ids, mask = encode_batch(tokenizer, [sample.question])
    return {
        "inputs": {
            "input_ids": ids[0].tolist(),
            "attention_mask": mask[0].tolist(),
            "image": data.normalize(sample.image).tolist(),
        }
    }


def wait_settled(http: httpx.Client, batch_id: str, timeout_s: float = 300) -> dict:
    """Poll a bulk batch until every item is final; returns its status."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = http.get(f"/v1/batches/{batch_id}").json()
        if status["finished_at"] is not None:
            return status
        time.sleep(0.2)
    raise TimeoutError(f"batch {batch_id} did not settle: {status}")


def wait_until(condition, what: str, timeout_s: float = 60) -> None:
    """Poll ``condition`` until it holds; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def accepted_connections(pids: Iterable[int], port: int) -> int:
    """Open TCP connections on ``port`` that one of ``pids`` has accepted (from /proc).

    A request counts as in the server's hands once its connection is accepted: a
    graceful stop then finishes it, where one still in the listen backlog is reset.
    """
    inodes: set[str] = set()
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except FileNotFoundError:
            continue
        for name in names:
            try:
                target = os.readlink(f"{fd_dir}/{name}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                established = fields[3] == "01"
                if local_port == port and established and fields[9] in inodes:
                    count += 1
    return count


def refuses_connections(host: str, port: int) -> bool:
    """True once nothing listens on ``host:port`` any more."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def children(pid: int) -> list[int]:
    """The direct children of ``pid``, over all its threads (from /proc)."""
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except FileNotFoundError:
        pass
    return found


def pending_by_consumer(
    client: redis.Redis, model: str, levels: Iterable[int] = (1, 2, 3)
) -> dict[str, int]:
    """Entries delivered and not yet acknowledged, per consumer, over ``levels``."""
    counts: dict[str, int] = {}
    for level in levels:
        stream = keys.stream(model, level)
        if not client.exists(stream):
            continue
        for consumer in client.xpending(stream, keys.GROUP)["consumers"]:
            name = consumer["name"].decode()
            counts[name] = counts.get(name, 0) + int(consumer["pending"])
    return counts


def rq_idle(client: redis.Redis) -> bool:
    """No RQ job of any queue is waiting, running, scheduled for a retry or deferred."""
    from rq import Queue
    from rq.registry import DeferredJobRegistry, ScheduledJobRegistry, StartedJobRegistry

    for queue in Queue.all(connection=client):
        registries = (StartedJobRegistry, ScheduledJobRegistry, DeferredJobRegistry)
        if queue.count or any(r(queue=queue).count for r in registries):
            return False
    return True
