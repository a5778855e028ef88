"""The bulk worker process: an RQ worker on the bulk queues, plus the sweeper.

The sweeper is what makes bulk batches durable rather than best-effort:

- an ingest whose RQ worker died (its lease ran out and its RQ job is not waiting)
  is enqueued again and resumes at the batch's recorded offsets;
- a batch that settled gets its webhook job (from the outbox ``complete.lua`` fills)
  and its keys an expiry of ``batch_retention_s``;
- input files of batches whose records expired are deleted, and so are uploads an API
  process abandoned (it died mid-request: nothing was acknowledged).

RQ's own recovery of abandoned jobs waits for its maintenance interval (minutes) and
then only retries or fails the job; the lease lets a new ingest take over within
``ingest_lease_s``. Several bulk workers may run: one sweeps at a time (a lock).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import redis
from rq import Queue, Worker

from batching import keys
from batching.bulk import ACTIVE_STATES, BatchId, BatchStore
from batching.bulk_jobs import enqueue_ingest, enqueue_webhook, ingest_waiting_or_fresh
from batching.connection import client_from_url
from batching.processes import die_with_parent, fusionserve_command
from batching.settings import Settings
from worker.webhooks import retry_policy

log = logging.getLogger("fusionserve.bulk")

FILE_SWEEP_S = 60.0
STALE_UPLOAD_S = 3600.0
"""A partial upload this old was abandoned (its API process died mid-request)."""
UNQUEUED_S = 60.0
"""A batch recorded this long ago whose ingest was never queued is failed, never started."""


class Sweeper:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.store = BatchStore(client)
        self.settings = settings
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._next_file_sweep = 0.0

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.sweep_interval_s):
            try:
                self.sweep()
            except redis.RedisError as exc:
                log.warning("sweep failed (%s); retrying", exc)

    def sweep(self) -> bool:
        """One pass over every model's batches; False when another process holds the lock."""
        if not self._lock():
            return False
        for raw in self.redis.smembers(keys.MODELS):
            model = raw.decode()
            for bid in self._ids(keys.batches_settled(model)):
                self.settled(bid)
            for bid in self._ids(keys.batches_active(model)):
                self.revive(bid)
        if time.monotonic() >= self._next_file_sweep:
            self._next_file_sweep = time.monotonic() + FILE_SWEEP_S
            self.remove_expired_files()
        return True

    def settled(self, bid: BatchId) -> None:
        fields = self.store.fields(bid)
        if fields.get("webhook_state") == "pending":
            enqueue_webhook(self.redis, bid, retry_policy(self.settings))
        self.store.retain(bid, int(fields.get("retention_s", self.settings.batch_retention_s)))
        self.redis.srem(keys.batches_settled(bid.model), str(bid))

    def revive(self, bid: BatchId) -> None:
        """Enqueue the ingest again when the batch has unfed lines and nobody feeds them."""
        fields = self.store.fields(bid)
        if fields.get("status") not in ACTIVE_STATES:
            self.redis.srem(keys.batches_active(bid.model), str(bid))
            return
        if int(fields.get("fed", 0)) >= int(fields["total"]):
            return  # all fed: the model workers (and their reclaim) finish the rest
        seconds, micros = self.redis.time()
        now_ms = seconds * 1000 + micros // 1000
        if not fields.get("ingest_job"):
            # Never queued: its API answered 503 and could not discard it. Never start it.
            if now_ms - int(fields.get("created_at", now_ms)) > UNQUEUED_S * 1000:
                self.store.stop(bid, "failed", "its creation failed (the API answered 503)")
            return
        if int(fields.get("lease_until", 0)) > now_ms:
            return
        grace_s = self.settings.ingest_lease_s
        if ingest_waiting_or_fresh(self.redis, fields.get("ingest_job"), grace_s):
            return
        runs = int(fields.get("ingest_runs", 1))
        if runs > self.settings.ingest_max_restarts:
            reason = fields.get("ingest_error") or "its ingest stopped without an error"
            log.error("batch %s: ingest failed %d times (%s); failing the batch", bid, runs, reason)
            self.store.stop(bid, "failed", f"ingest failed {runs} times; last: {reason}")
            return
        log.warning("batch %s: its ingest stopped renewing its lease; restarting it", bid)
        enqueue_ingest(self.redis, bid)

    def remove_expired_files(self) -> None:
        folder = self.settings.batch_path()
        if not folder.is_dir():
            return
        for path in folder.glob("*.jsonl"):
            bid = BatchId.parse(path.stem)
            if bid is None or not _older_than(path, STALE_UPLOAD_S):
                continue  # a file is stored just before its batch is recorded
            if not self.redis.exists(bid.key):
                path.unlink(missing_ok=True)
                self.redis.zrem(keys.batches(bid.model), str(bid))
        for path in folder.glob("*.part"):
            if _older_than(path, STALE_UPLOAD_S):
                path.unlink(missing_ok=True)

    def _lock(self) -> bool:
        ttl_ms = int(self.settings.sweep_interval_s * 3000)
        if self.redis.set(keys.SWEEP_LOCK, self.id, nx=True, px=ttl_ms):
            return True
        if self.redis.get(keys.SWEEP_LOCK) == self.id.encode():
            self.redis.pexpire(keys.SWEEP_LOCK, ttl_ms)
            return True
        return False

    def _ids(self, key: str) -> list[BatchId]:
        return [b for raw in self.redis.smembers(key) if (b := BatchId.parse(raw.decode()))]


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def run_bulk_worker(settings: Settings, queues: list[str] | None = None) -> int:
    """An RQ worker on ``queues``. By default this process ingests, and a second one of its
    own (stopped with it) delivers webhooks: a slow receiver never delays an ingest."""
    if not settings.redis_url:
        log.error("REDIS_URL is not set (fusionserve up starts an embedded server for you)")
        return 2
    # The sweeper's calls are bounded by the Redis timeout. RQ gets a client of its own:
    # it raises that client's read timeout above its BLPOP's (minutes), which must not
    # leak into the sweeper's.
    client = client_from_url(settings.redis_url, settings, purpose="bulk")
    rq_client = client_from_url(settings.redis_url, settings, purpose="rq")
    Path(settings.batch_path()).mkdir(parents=True, exist_ok=True)
    os.nice(settings.bulk_nice)  # ingest is background work: the API and model workers go first
    names = queues or [keys.BULK_QUEUE]
    hooks = None if queues else _spawn_webhook_worker()  # before any thread starts
    stop = threading.Event()
    sweeper = Sweeper(client, settings)
    threading.Thread(target=sweeper.run, args=(stop,), name="sweeper", daemon=True).start()
    worker = Worker([Queue(n, connection=rq_client) for n in names], connection=rq_client)
    log.info("bulk worker %s on %s", worker.name, ", ".join(names))
    try:
        worker.work(with_scheduler=True, logging_level="WARNING")
    finally:
        stop.set()
        if hooks is not None:
            hooks.terminate()
            hooks.wait(30)
    return 0


def _spawn_webhook_worker() -> subprocess.Popen[bytes]:
    """``fusionserve bulk-worker --queue fusionserve-webhooks``, ended if this process dies."""
    command = fusionserve_command("bulk-worker", "--queue", keys.WEBHOOK_QUEUE)
    return subprocess.Popen(command, preexec_fn=die_with_parent)
