"""Start the API and workers as subprocesses against one Redis: for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from batching.processes import fusionserve_command
from fusionserve.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent


class LocalStack:
    """``fusionserve api`` and ``fusionserve worker`` processes on loopback; logs in ``logs``."""

    def __init__(
        self, redis_url: str, repository: Path, logs: Path | None = None, **env: str
    ) -> None:
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "FUSIONSERVE_MODEL_REPOSITORY": str(repository),
            "FUSIONSERVE_ORT_THREADS": "1",
            "FUSIONSERVE_HEARTBEAT_S": "0.5",
            "PYTHONPATH": str(ROOT),
            **env,
        }
        self.logs = logs or Path(tempfile.mkdtemp(prefix="fusionserve-logs-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.url = ""

    def _spawn(
        self,
        name: str,
        *args: str,
        new_session: bool = False,
        wrap: tuple[str, ...] = (),
        **env: str,
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [*wrap, *fusionserve_command(*args)],
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=new_session,
        )
        self.procs.append(proc)
        return proc

    def start_api(self, processes: int = 1, port: int | None = None, **env: str) -> str:
        port = port or free_port()
        self._spawn("api", "api", "--port", str(port), "--processes", str(processes), **env)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/healthz", timeout=1).raise_for_status()
                return self.url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"API did not come up; see {self.logs}")

    def start_worker(
        self, *models: str, wrap: tuple[str, ...] = (), **env: str
    ) -> subprocess.Popen[bytes]:
        """A model worker; ``wrap`` prefixes its command (e.g. ``ip netns exec NS``)."""
        proc = self._spawn("worker", "worker", *models, wrap=wrap, **env)
        self.workers.append(proc)
        return proc

    def stop_worker(self, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> int:
        """Drain ``proc`` (SIGTERM) and forget it, so ``wait_ready`` never blames its exit."""
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout_s)
        self.workers.remove(proc)
        return code

    def start_bulk_worker(self, *queues: str, **env: str) -> subprocess.Popen[bytes]:
        """An RQ bulk worker in its own process group: killing the group takes its job too."""
        args = [x for q in queues for x in ("--queue", q)]
        return self._spawn("bulk", "bulk-worker", *args, new_session=True, **env)

    def wait_ready(self, model: str, workers: int, timeout_s: float = 60) -> None:
        """Until ``workers`` workers heartbeat for ``model`` (as the API counts them)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready = httpx.get(f"{self.url}/readyz", timeout=5).json().get("workers", {})
            if ready.get(model, 0) >= workers:  # /readyz: open even with API keys on
                return
            if any(p.poll() is not None for p in self.workers):
                raise RuntimeError(f"a worker exited; see {self.logs}")
            time.sleep(0.2)
        raise RuntimeError(f"{model}: {workers} worker(s) not ready; see {self.logs}")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
