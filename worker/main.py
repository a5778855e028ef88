"""The worker process: load and publish models, heartbeat, one loop per model, drain on stop."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import redis

from batching import keys
from batching.broker import Broker
from batching.model_config import ModelMeta
from batching.settings import Settings
from worker.loop import ModelLoop
from worker.repository import scan
from worker.runtime import ModelRuntime

log = logging.getLogger("fusionserve.worker")


def publish(client: redis.Redis, runtime: ModelRuntime) -> None:
    """Make a loaded model visible to API processes (which hold no model files)."""
    files = runtime.files
    meta = ModelMeta(
        name=files.name,
        versions=[str(v) for v in files.versions],
        inputs=runtime.inputs,
        outputs=runtime.outputs,
        config=files.config,
        tokenizer_json=files.tokenizer_json(),
    )
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(keys.meta(files.name), mapping={"json": meta.model_dump_json()})
        pipe.sadd(keys.MODELS, files.name)
        pipe.execute()


class Heartbeat(threading.Thread):
    """Keeps this worker in each model's ready set; API readiness counts fresh beats."""

    def __init__(self, client: redis.Redis, worker_id: str, models: list[str], every_s: float):
        super().__init__(name="heartbeat", daemon=True)
        self.client, self.worker_id, self.models, self.every_s = client, worker_id, models, every_s
        self.stopped = threading.Event()

    def beat(self) -> None:
        now = time.time()
        with self.client.pipeline(transaction=False) as pipe:
            for model in self.models:
                pipe.zadd(keys.workers(model), {self.worker_id: now})
                pipe.zremrangebyscore(keys.workers(model), 0, now - 10 * self.every_s)
            pipe.execute()

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            try:
                self.beat()
            except redis.RedisError as exc:
                log.warning("heartbeat failed: %s", exc)

    def leave(self) -> None:
        self.stopped.set()
        with self.client.pipeline(transaction=False) as pipe:
            for model in self.models:
                pipe.zrem(keys.workers(model), self.worker_id)
            pipe.execute()


def run_worker(settings: Settings, models: list[str] | None = None) -> int:
    if not settings.redis_url:
        log.error("REDIS_URL is not set (fusionserve up starts an embedded server for you)")
        return 2
    client = redis.Redis.from_url(settings.redis_url)
    broker = Broker(client)
    worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    runtimes = [ModelRuntime(files) for files in scan(Path(settings.model_repository), models)]
    stop = threading.Event()
    loops = [ModelLoop(broker, rt, worker_id, settings, stop) for rt in runtimes]
    for rt in runtimes:
        broker.ensure_groups(rt.files.name, rt.files.config.batching.priority_levels)
        publish(client, rt)
    heartbeat = Heartbeat(
        client, worker_id, [rt.files.name for rt in runtimes], settings.heartbeat_s
    )
    heartbeat.beat()
    heartbeat.start()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("worker %s: %s, draining", worker_id, signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=lp.run, name=f"loop-{lp.model}") for lp in loops]
    for t in threads:
        t.start()
    log.info("worker %s ready: %s", worker_id, ", ".join(lp.model for lp in loops))
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(timeout=0.5)
    heartbeat.leave()
    log.info("worker %s stopped after %d batches", worker_id, sum(lp.batches for lp in loops))
    return 0
