"""``fusionserve up`` supervises its children: a killed worker, bulk worker, API or embedded
Redis is restarted while the rest keep serving, and no acknowledged job is lost; a child
that keeps dying makes ``up`` give up with a clear message and a non-zero exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import children, wait_all, wait_until
from onnx_models import scale_model
from stack import ROOT, kill_tree

from fusionserve.embedded import free_port


def _role(pid: int) -> str | None:
    """What a child of ``up`` is, from its command line."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if b"valkey-server" in raw:  # it retitles itself "valkey-server 127.0.0.1:<port>"
        return "redis"
    argv = raw.split(b"\0")
    if b"fusionserve.cli" in argv:
        return argv[argv.index(b"fusionserve.cli") + 1].decode()
    return None


def roles(up_pid: int) -> dict[str, int]:
    """``{"api": pid, "worker": pid, "bulk-worker": pid, "redis": pid}`` of live children."""
    found = {}
    for pid in children(up_pid):
        stat = Path(f"/proc/{pid}/stat")
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except OSError:
            continue
        if role := _role(pid):
            found[role] = pid
    return found


@pytest.fixture
def up_factory(tmp_path: Path) -> Iterator:
    """Start ``fusionserve up`` (output in ``up.log``); SIGKILLed afterwards, with its children.

    Its graceful stop is test_up's; here the teardown only has to leave nothing running.
    """
    procs: list[subprocess.Popen[bytes]] = []

    def start(repo: Path, *args: str, **extra: str) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env.update(PYTHONPATH=str(ROOT), FUSIONSERVE_DATA_DIR=str(tmp_path / "data"), **extra)
        cmd = [sys.executable, "-m", "fusionserve.cli", "up", "--port", str(port)]
        cmd += ["--model-repository", str(repo), "--processes", "1", *args]
        with (tmp_path / "up.log").open("ab") as out:
            up = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        procs.append(up)
        return up, f"http://127.0.0.1:{port}"

    yield start
    for up in procs:
        kill_tree(up)


def ready(url: str) -> bool:
    try:
        body = httpx.get(f"{url}/readyz", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return body.get("status") == "ready" and body["workers"].get("scale", 0) >= 1


class Submitter(threading.Thread):
    """Submits jobs in a bounded loop, retrying on connection errors, 429 and 503."""

    def __init__(self, url: str, limit: int) -> None:
        super().__init__(daemon=True)
        self.url, self.limit = url, limit
        self.acked: list[str] = []
        self.unexpected: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while len(self.acked) < self.limit and not self.done.is_set():
                n = len(self.acked)
                try:
                    r = http.post("/v1/models/scale/infer", json={"inputs": {"x": [n, 1, 2, 3]}})
                except httpx.TransportError:
                    self.done.wait(0.05)  # the client's retry back-off
                    continue
                if r.status_code == 202:
                    self.acked.append(r.json()["job_id"])
                elif r.status_code in (429, 503):
                    self.done.wait(0.05)
                else:
                    self.unexpected.append(f"{r.status_code} {r.text[:200]}")

    def stop(self) -> None:
        self.done.set()
        self.join(30)


@pytest.mark.parametrize("victim", ["worker", "bulk-worker", "api", "redis"])
def test_up_survives_a_killed_child_and_loses_no_acknowledged_job(
    up_factory, tmp_path: Path, victim: str
) -> None:
    scale_model(tmp_path / "repo")
    up, url = up_factory(
        tmp_path / "repo",
        FUSIONSERVE_VISIBILITY_TIMEOUT_S="2",  # a killed worker's entries come back soon
        FUSIONSERVE_HEARTBEAT_S="0.5",
    )
    wait_until(lambda: ready(url), "fusionserve up never became ready", timeout_s=90)
    before = roles(up.pid)
    assert set(before) == {"api", "worker", "bulk-worker", "redis"}, before
    client = Submitter(url, limit=2000)
    client.start()
    try:
        wait_until(lambda: len(client.acked) >= 20, "no jobs acknowledged before the kill")
        os.kill(before[victim], signal.SIGKILL)
        acked_at_kill = len(client.acked)

        def restarted() -> bool:
            now = roles(up.pid).get(victim)
            return now is not None and now != before[victim]

        wait_until(restarted, f"{victim} was not restarted", timeout_s=30)
        wait_until(lambda: ready(url), "not ready again after the restart", timeout_s=30)
        assert up.poll() is None, "fusionserve up exited"
        wait_until(
            lambda: len(client.acked) >= acked_at_kill + 20, "no jobs acknowledged after restart"
        )
    finally:
        client.stop()
    assert not client.unexpected, client.unexpected[:5]
    with httpx.Client(base_url=url, timeout=30) as http:
        results = wait_all(http, client.acked, timeout_s=120)
    statuses = [body["status"] for body in results.values()]
    assert statuses.count("done") == len(client.acked), {s: statuses.count(s) for s in statuses}
    log_text = (tmp_path / "up.log").read_text()
    assert f"(pid {before[victim]})" in log_text  # the death is logged, with its pid


def test_up_gives_up_on_a_crash_loop(up_factory, tmp_path: Path) -> None:
    """A worker with nothing to serve exits at once, every time: a crash loop."""
    (tmp_path / "empty").mkdir()
    up, _ = up_factory(tmp_path / "empty")
    assert up.wait(120) != 0
    log_text = (tmp_path / "up.log").read_text()
    assert "crash loop" in log_text, log_text[-3000:]
    assert "restarting worker in" in log_text  # it did try, with back-off, before giving up
