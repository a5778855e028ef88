"""The worker process: load and publish models, heartbeat, one loop per model, drain on stop."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from pathlib import Path

from batching.broker import Broker
from batching.connection import client_from_url
from batching.settings import Settings
from worker.control import Control
from worker.generation.serve import GenerationLoop
from worker.loop import IDLE_BLOCK_MS, ModelLoop
from worker.repository import scan
from worker.versions import ModelVersions

log = logging.getLogger("fusionserve.worker")


def run_worker(settings: Settings, models: list[str] | None = None) -> int:
    if not settings.redis_url:
        log.error("REDIS_URL is not set (fusionserve up starts an embedded server for you)")
        return 2
    # Bounded by the Redis timeout; the idle XREADGROUP BLOCK gets its block time on top.
    client = client_from_url(
        settings.redis_url, settings, purpose="worker", block_s=IDLE_BLOCK_MS / 1000
    )
    broker = Broker(client)
    worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    served = [ModelVersions(files) for files in scan(Path(settings.model_repository), models)]
    stop = threading.Event()
    loops = [
        (GenerationLoop if versions.files.config.generation else ModelLoop)(
            broker, versions, worker_id, settings, stop
        )
        for versions in served
    ]
    for versions in served:
        broker.ensure_groups(versions.name, versions.files.config.batching.all_levels)
    counters = {lp.model: (lambda lp=lp: lp.entries_done) for lp in loops}
    control = Control(client, broker, worker_id, served, settings.heartbeat_s, counters)
    control.sync()  # load what the policy (or the latest repository order) says, and publish
    control.beat()
    control.start()

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
    control.leave()
    log.info("worker %s stopped after %d batches", worker_id, sum(lp.batches for lp in loops))
    return 0
