"""``fusionserve up``: embedded Redis (unless ``REDIS_URL`` is set), the API, N workers and a
bulk worker (batch ingest and webhooks), supervised.

Each child runs in its own session (process group), so Ctrl+C reaches ``up`` alone and
``up`` stops them in order: the API first (no new work), then the workers (each finishes
its batch in hand), then Redis, leaving no process behind.

A child that dies on its own (killed by the kernel for memory, by hand, or crashed) is
started again after a back-off that doubles with each recent death (0.5 s, 1 s, 2 s, …),
while the others keep serving: queued jobs wait in Redis, and a dead worker's unacked
entries are reclaimed after the visibility timeout. The embedded Redis is restarted on
the same port and data directory; its append-only file holds every acknowledged write
(Valkey writes it before it replies, so only a machine crash can lose the last second).
A child that dies :data:`CRASH_LIMIT` times within :data:`CRASH_WINDOW_S` seconds is a
crash loop: ``up`` stops everything and exits with status 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable

from batching.processes import die_with_parent, fusionserve_command
from batching.settings import Settings
from fusionserve.embedded import EmbeddedRedis
from fusionserve.embedded_sentinel import EmbeddedSentinel

log = logging.getLogger("fusionserve.up")

CRASH_LIMIT = 5
CRASH_WINDOW_S = 60.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 16.0


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A ``fusionserve`` subcommand in a session of its own (Ctrl+C goes to ``up`` only)."""
    return subprocess.Popen(
        fusionserve_command(*args),
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


def _exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class Child:
    """One supervised process: how to start it, when it died, when to start it again."""

    def __init__(self, name: str, spawn: Callable[[], subprocess.Popen[bytes]]) -> None:
        self.name = name
        self._spawn = spawn
        self.proc: subprocess.Popen[bytes] | None = None
        self.deaths: deque[float] = deque()
        self.restart_at: float | None = None

    def start(self) -> None:
        self.proc = self._spawn()
        log.info("started %s (pid %d)", self.name, self.proc.pid)

    def check(self, now: float) -> str | None:
        """Restart when due; notice a death. Returns why to give up (a crash loop), or None."""
        if self.restart_at is not None:
            if now < self.restart_at:
                return None
            self.restart_at = None
            try:
                self.start()
            except Exception as exc:  # e.g. Redis could not start: a death like any other
                log.error("%s did not start: %s", self.name, exc)
                return self._died(now)
            return None
        if self.proc is None or self.proc.poll() is None:
            return None
        log.warning("%s (pid %d) %s", self.name, self.proc.pid, _exit_reason(self.proc.returncode))
        self._reap_group()
        return self._died(now)

    def _died(self, now: float) -> str | None:
        self.deaths.append(now)
        while self.deaths and self.deaths[0] < now - CRASH_WINDOW_S:
            self.deaths.popleft()
        if len(self.deaths) >= CRASH_LIMIT:
            return (
                f"{self.name} died {len(self.deaths)} times within {CRASH_WINDOW_S:.0f} s: "
                "a crash loop; giving up (see its output above)"
            )
        delay = min(FIRST_BACKOFF_S * 2 ** (len(self.deaths) - 1), MAX_BACKOFF_S)
        log.warning("restarting %s in %.1f s", self.name, delay)
        self.restart_at = now + delay
        return None

    def _reap_group(self) -> None:
        """What the dead child left in its process group (a gunicorn master's workers, an RQ
        work horse) is told to stop: they would hold the port, or work for no one."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _stop(children: list[Child], timeout_s: float = 30.0) -> None:
    """SIGTERM, then wait; SIGKILL (the whole process group) past ``timeout_s``."""
    running = [c for c in children if c.alive()]
    for c in running:
        c.proc.terminate()  # type: ignore[union-attr]
    for c in running:
        try:
            c.proc.wait(timeout_s)  # type: ignore[union-attr]
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
            c.proc.wait()  # type: ignore[union-attr]


def run_up(settings: Settings, workers: int, redis_mode: str = "single") -> int:
    """``redis_mode``: without ``REDIS_URL``, one embedded Valkey (``single``), or a master, a
    replica and three sentinels (``sentinel``: try failover on one machine)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    env = dict(os.environ)
    cores = os.cpu_count() or 1
    env.setdefault("FUSIONSERVE_ORT_THREADS", str(max(1, cores // max(1, workers))))
    env["FUSIONSERVE_MODEL_REPOSITORY"] = str(settings.model_repository)
    api_args = ["api", "--host", settings.host, "--port", str(settings.port)]
    api_args += ["--processes", str(settings.api_processes)]
    embedded: EmbeddedRedis | EmbeddedSentinel | None = None
    redis_child: list[Child] = []
    model_workers: list[Child] = []
    api: list[Child] = []
    code = 0
    try:
        if not settings.redis_url and redis_mode == "sentinel":
            deployment = embedded = EmbeddedSentinel(settings.data_dir / "sentinel").start()
            for name, process, restart in deployment.nodes():
                redis_child.append(Child(name, restart))
                redis_child[-1].proc = process
            env["REDIS_URL"] = deployment.url
        elif not settings.redis_url:
            server = embedded = EmbeddedRedis(settings.data_dir / "redis")
            redis_child.append(Child("redis", lambda: server.start().process))  # type: ignore[arg-type, return-value]
            redis_child[0].start()
            env["REDIS_URL"] = embedded.url
        for i in range(workers):
            name = "worker" if workers == 1 else f"worker-{i + 1}"
            model_workers.append(Child(name, lambda: _spawn(["worker"], env)))
        model_workers.append(Child("bulk-worker", lambda: _spawn(["bulk-worker"], env)))
        api.append(Child("api", lambda: _spawn(api_args, env)))
        for child in [*model_workers, *api]:
            child.start()
        log.info(
            "fusionserve up: API on http://%s:%d, %d worker(s), Redis %s, models from %s",
            settings.host,
            settings.port,
            workers,
            env["REDIS_URL"].split("@")[-1],
            settings.model_repository,
        )
        while not stop.wait(0.2):
            reasons = [
                r for c in [*redis_child, *api, *model_workers] if (r := c.check(time.monotonic()))
            ]
            if reasons:
                log.error("%s", "; ".join(reasons))
                code = 1
                break
    finally:
        _stop(api)
        _stop(model_workers)
        if embedded:
            embedded.stop()
    log.info("fusionserve stopped")
    return code
