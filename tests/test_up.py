"""``fusionserve up`` runs embedded Valkey, the API and workers, and leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
from helpers import children, wait_settled
from onnx_models import scale_model
from stack import ROOT

from fusionserve.embedded import free_port


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


@contextlib.contextmanager
def running_up(tmp_path: Path, *flags: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``fusionserve up`` on a free port over the scale model, no REDIS_URL; yields the
    process and its URL, and stops it the way users do if the test did not."""
    scale_model(tmp_path / "repo")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(PYTHONPATH=str(ROOT), FUSIONSERVE_DATA_DIR=str(tmp_path / "data"))
    cmd = [sys.executable, "-m", "fusionserve.cli", "up", "--port", str(port), *flags]
    cmd += ["--model-repository", str(tmp_path / "repo")]
    up = subprocess.Popen(cmd, env=env, cwd=ROOT)
    try:
        yield up, f"http://127.0.0.1:{port}"
    finally:
        if up.poll() is None:  # a failed assertion: stop it the way users do, children too
            up.terminate()
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                up.kill()


def wait_workers(up: subprocess.Popen[bytes], url: str, workers: int, timeout_s: float) -> None:
    """Until ``/readyz`` counts ``workers`` workers of the scale model."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert up.poll() is None, "fusionserve up exited"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).json().get("workers", {}).get("scale") == (
                workers
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("fusionserve up never became ready")


def serves_a_job(url: str) -> None:
    job = httpx.post(f"{url}/v1/models/scale/infer", json={"inputs": {"x": [1, 2, 3, 4]}})
    assert job.status_code == 202, job.text
    result = httpx.get(f"{url}{job.json()['status_url']}", params={"wait": 10}).json()
    assert result["outputs"]["y"] == [2.0, 4.0, 6.0, 8.0]


def sigterm_leaves_nothing(up: subprocess.Popen[bytes], spawned: set[int]) -> None:
    up.send_signal(signal.SIGTERM)
    assert up.wait(60) == 0
    deadline = time.monotonic() + 10
    while any(alive(p) for p in spawned) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in spawned if alive(p)]


def with_grandchildren(spawned: set[int]) -> set[int]:
    return spawned | {grandchild for child in spawned for grandchild in children(child)}


def test_up_serves_and_sigterm_stops_everything(tmp_path: Path) -> None:
    with running_up(tmp_path, "--workers", "2") as (up, url):
        wait_workers(up, url, 2, timeout_s=60)
        serves_a_job(url)
        lines = b"".join(b'{"inputs": {"x": [%d, 1, 1, 1]}}\n' % i for i in range(3))
        batch = httpx.post(f"{url}/v1/batches", params={"model": "scale"}, content=lines).json()
        with httpx.Client(base_url=url, timeout=10) as http:
            assert wait_settled(http, batch["batch_id"], timeout_s=60)["counts"]["done"] == 3
            rows = http.get(f"/v1/batches/{batch['batch_id']}/results").text.splitlines()
        assert [orjson.loads(r)["outputs"]["y"][0] for r in rows] == [0.0, 2.0, 4.0]
        spawned = set(children(up.pid))
        assert len(spawned) == 5  # valkey-server, the API (gunicorn master), 2 workers, bulk worker
        spawned = with_grandchildren(spawned)
        assert len(spawned) >= 5  # and the API's gunicorn worker processes
        assert (tmp_path / "data" / "redis").is_dir()  # the append-only file lives here
        sigterm_leaves_nothing(up, spawned)


def test_embedded_valkey_writes_its_output_to_a_log_in_its_data_dir(tmp_path: Path) -> None:
    """No pipe nobody reads (a full one blocks the server): output goes to <data dir>/valkey.log."""
    from fusionserve.embedded import EmbeddedRedis

    first = EmbeddedRedis(tmp_path / "a", appendonly=False).start()
    try:
        assert first.process is not None and first.process.stderr is None
        assert (tmp_path / "a" / "valkey.log").is_file()
        clash = EmbeddedRedis(tmp_path / "b", port=first.port, appendonly=False)
        try:
            clash.start(timeout_s=10)
            raise AssertionError("a second server bound the same port")
        except RuntimeError as exc:  # the reason comes from the log
            assert "in use" in str(exc).lower(), exc
        log_text = (tmp_path / "b" / "valkey.log").read_text().lower()
        assert "in use" in log_text
    finally:
        first.stop()


def test_up_with_redis_sentinel_serves_through_three_sentinels(tmp_path: Path) -> None:
    """``up --redis sentinel``: a master, a replica, three sentinels; clients find the master."""
    with running_up(tmp_path, "--redis", "sentinel", "--processes", "1") as (up, url):
        wait_workers(up, url, 1, timeout_s=90)
        serves_a_job(url)  # acknowledged: a replica has it (WAIT)
        spawned = set(children(up.pid))
        assert len(spawned) == 8  # master, replica, 3 sentinels, API, worker, bulk worker
        sigterm_leaves_nothing(up, with_grandchildren(spawned))
    refused = subprocess.run(
        [sys.executable, "-m", "fusionserve.cli", "up", "--redis", "sentinel"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": "redis://127.0.0.1:1/0"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "REDIS_URL is set" in refused.stderr
