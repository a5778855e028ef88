"""``fusionserve up``: embedded Redis (unless ``REDIS_URL`` is set), the API, N workers and a
bulk worker (batch ingest and webhooks).

Children are our own subprocesses; Ctrl+C or SIGTERM stops the API first (no new
work), then the workers (each finishes its batch in hand), then Redis, leaving no
process behind. If a child dies on its own, everything is stopped and the exit
code says so.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

from batching.settings import Settings
from fusionserve.embedded import EmbeddedRedis

log = logging.getLogger("fusionserve.up")


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "fusionserve.cli", *args], env=env)


def _stop(procs: list[subprocess.Popen[bytes]], timeout_s: float = 30.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_up(settings: Settings, workers: int) -> int:
    embedded: EmbeddedRedis | None = None
    env = dict(os.environ)
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.data_dir / "redis").start()
        env["REDIS_URL"] = embedded.url
    cores = os.cpu_count() or 1
    env.setdefault("FUSIONSERVE_ORT_THREADS", str(max(1, cores // max(1, workers))))
    env["FUSIONSERVE_MODEL_REPOSITORY"] = str(settings.model_repository)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    api_args = ["api", "--host", settings.host, "--port", str(settings.port)]
    api_args += ["--processes", str(settings.api_processes)]
    worker_procs = [_spawn(["worker"], env) for _ in range(workers)]
    worker_procs.append(_spawn(["bulk-worker"], env))
    api = _spawn(api_args, env)
    log.info(
        "fusionserve up: API on http://%s:%d, %d worker(s), Redis %s",
        settings.host,
        settings.port,
        workers,
        env["REDIS_URL"].split("@")[-1],
    )
    code = 0
    try:
        while not stop.wait(0.5):
            dead = [p for p in [api, *worker_procs] if p.poll() is not None]
            if dead:
                log.error("a child process exited (%s); stopping", [p.args[3] for p in dead])
                code = 1
                break
    finally:
        _stop([api])
        _stop(worker_procs)
        if embedded:
            embedded.stop()
    log.info("fusionserve stopped")
    return code
