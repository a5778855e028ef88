"""The suite never touches the Redis a user points ``REDIS_URL`` at (it flushes its own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis
from conftest import ROOT

from fusionserve.embedded import EmbeddedRedis


def test_tests_leave_the_users_redis_alone(tmp_path: Path) -> None:
    users = EmbeddedRedis(tmp_path / "users", appendonly=False).start()
    try:
        client = redis.Redis.from_url(users.url)
        client.set("precious", "data")
        env = {**os.environ, "REDIS_URL": users.url, "RQ_REDIS_URL": users.url}
        env.pop("FUSIONSERVE_TEST_REDIS_URL", None)
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/test_broker.py", "-k", "full_queue"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        assert "1 passed" in run.stdout
        assert client.get("precious") == b"data", "the suite flushed the user's Redis"
        assert client.dbsize() == 1, "the suite wrote into the user's Redis"
        client.close()
    finally:
        users.stop()
