"""``rediss://`` with a password: API, worker and bulk worker all talk TLS to Redis, and the
password shows up in no log. Redis sits behind a TLS-terminating proxy on loopback (the
embedded server is built without TLS)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
from conftest import DEMO
from helpers import b64
from stack import Stack

from fusionserve.embedded import EmbeddedRedis, free_port
from fusionserve.zoo import data

PASSWORD = "tls-test-password-9124"


def self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class TlsProxy(threading.Thread):
    """TLS on ``port``, plain TCP to Redis behind it: what a managed Redis looks like."""

    def __init__(self, cert: Path, key: Path, upstream: int) -> None:
        super().__init__(daemon=True)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.upstream, self.port = upstream, free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _shutdown(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.loop.call_soon(self.loop.stop)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)

    def run(self) -> None:
        serve = asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.context)
        self.loop.run_until_complete(serve)
        self.ready.set()
        self.loop.run_forever()


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl for a certificate")
def test_rediss_with_a_password_serves_and_never_logs_the_password(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server = EmbeddedRedis(tmp_path / "valkey", appendonly=False, password=PASSWORD).start()
    proxy = TlsProxy(cert, key, server.port)
    proxy.start()
    proxy.ready.wait(10)
    url = f"rediss://:{PASSWORD}@127.0.0.1:{proxy.port}/0?ssl_ca_certs={cert}"
    plain = redis.Redis.from_url(url)
    assert plain.ping()  # TLS really is in the way: a plain connection must fail
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=proxy.port, password=PASSWORD, socket_timeout=2).ping()
    logs = tmp_path / "logs"
    logs.mkdir()
    stack = Stack(url, DEMO.parent, logs, FUSIONSERVE_DATA_DIR=str(tmp_path / "data"))
    try:
        stack.start_api()
        stack.start_worker("demo")
        stack.wait_ready("demo", 1)
        stack.start_bulk_worker()
        [sample] = data.generate(1, 8)
        item = {"text": sample.question, "image": b64(data.png_bytes(sample.image))}
        with httpx.Client(base_url=stack.url, timeout=30) as http:
            job_id = http.post("/v1/models/demo/infer", json=item).json()["job_id"]
            result = http.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()
            assert result["status"] == "done"
            assert result["labels"][0]["label"] == sample.answer
            batch = http.post("/v1/batches", params={"model": "demo"}, json=item).json()
            for _ in range(100):
                status = http.get(f"/v1/batches/{batch['batch_id']}").json()
                if status["finished_at"]:
                    break
                time.sleep(0.2)
            assert status["counts"]["done"] == 1
    finally:
        stack.stop()
        server.stop()
        proxy.close()
    written = "".join(f.read_text(errors="replace") for f in logs.iterdir())
    assert written and PASSWORD not in written
