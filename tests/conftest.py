"""Shared fixtures: a real Redis-protocol server, the suite's own embedded Valkey.

The tests FLUSH the database they use, so they never use ``REDIS_URL`` (the variable
users point workers at): only ``FUSIONSERVE_TEST_REDIS_URL``, a name meant for tests,
selects another server. ``REDIS_URL`` and ``RQ_REDIS_URL`` are removed from the
environment for the session, so no process a test starts can reach the user's server.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

sys.path.insert(0, str(Path(__file__).parent))

from stack import Stack

from fusionserve.embedded import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "model_repository" / "demo"


TEST_REDIS_URL = os.environ.get("FUSIONSERVE_TEST_REDIS_URL", "")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # torch's OpenMP threads spin while they wait for work: beside another worker's tests
    # on two cores that spinning took the CPU (a pre-training test ran 73 s, not 44 s).
    # Set before anything imports torch; processes the tests start inherit it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
for _name in ("REDIS_URL", "RQ_REDIS_URL"):
    os.environ.pop(_name, None)


def _database_of_this_worker(url: str) -> str:
    """Under pytest-xdist, worker N (``gwN``) uses database N of the server, so the
    workers never flush each other's; otherwise ``url`` as it is."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return url
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{int(worker[2:])}"))


TORCH_MODULES = {
    "test_captioner_export",
    "test_compression",
    "test_fusion_cli",
    "test_fusion_demo",
    "test_fusion_export",
    "test_pretrain",
    "test_versions",
}
"""Modules that train or export with torch (two threads each): under pytest-xdist they share
one worker, so two of them never run at once on a two-core machine. (The generation
modules' tiny model is exported once per process in seconds: they are not among them.)"""


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for ``pytest -n N --dist loadgroup`` (scripts/test): a module's tests run on
    one worker (its module-scoped stacks are built once), the torch modules all on one."""
    for item in items:
        module = item.module.__name__ if item.module else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group("torch" if module in TORCH_MODULES else module))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The suite's Redis: an embedded Valkey of this session's own (under pytest-xdist,
    each worker is a session: one each), or ``FUSIONSERVE_TEST_REDIS_URL``."""
    if TEST_REDIS_URL:
        yield _database_of_this_worker(TEST_REDIS_URL)
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("valkey"), appendonly=False).start()
    yield server.url
    server.stop()


@pytest.fixture
def frozen_able(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Valkey of the test's own, so SIGSTOP freezes no one else's."""
    server = EmbeddedRedis(tmp_path / "valkey", appendonly=False).start()
    assert server.process is not None
    try:
        yield server
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


def _stacks(redis_url: str, tmp: Path) -> Iterator:
    stacks: list[Stack] = []

    def make(repository: Path, **env: str) -> Stack:
        logs = tmp / f"logs{len(stacks)}"
        logs.mkdir()
        stack = Stack(redis_url, repository, logs, **env)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture
def stack_factory(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Iterator:
    """Build a :class:`Stack` over a model repository; every process is stopped afterwards."""
    yield from _stacks(redis_url, tmp_path)


@pytest.fixture(scope="module")
def module_stack_factory(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Like ``stack_factory``, shared by a module's tests (Redis is flushed once, at the start)."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    yield from _stacks(redis_url, tmp_path_factory.mktemp("stack"))


@pytest.fixture(scope="module")
def module_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def served_demo(module_stack_factory, tmp_path_factory):
    """The demo model served (API and one worker, a data directory of its own), per module."""
    stack = module_stack_factory(
        DEMO.parent, FUSIONSERVE_DATA_DIR=str(tmp_path_factory.mktemp("data"))
    )
    stack.start_api()
    stack.start_worker("demo")
    stack.wait_ready("demo", 1)
    return stack


METRICS_TOKEN = "metrics-token-for-tests-7731"


@pytest.fixture(scope="module")
def keyed_demo(module_stack_factory, tmp_path_factory):
    """The demo served with API keys on (and a /metrics token), per module."""
    stack = module_stack_factory(
        DEMO.parent,
        FUSIONSERVE_AUTH="keys",
        FUSIONSERVE_METRICS_TOKEN=METRICS_TOKEN,
        FUSIONSERVE_DATA_DIR=str(tmp_path_factory.mktemp("data")),
    )
    stack.start_api()
    stack.start_worker("demo")
    stack.wait_ready("demo", 1)
    return stack
