"""Batch webhooks reach only public addresses (or what the operator allows), are checked
again at delivery, end within a total deadline, and never hold up an ingest."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from conftest import DEMO
from helpers import demo_item, wait_settled, wait_until
from tokenizers import Tokenizer

from batching import keys
from fusionserve.zoo import data

MODEL = "demo"
DEADLINE_S = 12
"""The bulk worker's total deadline per delivery attempt (FUSIONSERVE_WEBHOOK_TIMEOUT_S)."""


class Receiver(BaseHTTPRequestHandler):
    """Records each POST; answers 200 at once, or, when ``slow``, one byte every 0.2 s
    until the test releases it or the caller hangs up."""

    slow = False

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        server: Server = self.server  # type: ignore[assignment]
        server.received.append(self.path)
        server.connected.set()
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        if not server.slow:
            self.wfile.write(b"x" * 100_000)
            return
        try:
            while not server.release.wait(0.2):
                self.wfile.write(b"x")
                self.wfile.flush()
        except OSError:
            server.hung_up.set()

    def log_message(self, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, slow: bool) -> None:
        super().__init__(("127.0.0.1", 0), Receiver)
        self.slow = slow
        self.received: list[str] = []
        self.connected = threading.Event()
        self.release = threading.Event()
        self.hung_up = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def plain() -> Iterator[Server]:
    """A receiver the API may be told about but the bulk worker may not call."""
    server = Server(slow=False)
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def slow() -> Iterator[Server]:
    """A receiver that never finishes its answer; allowed to the API and the bulk worker."""
    server = Server(slow=True)
    yield server
    server.release.set()
    server.shutdown()


@pytest.fixture(scope="module")
def stack(module_stack_factory, tmp_path_factory, plain, slow):
    """A strict API (webhooks to public addresses only), an API allowing both receivers,
    and a bulk worker allowing only the slow one."""
    stack = module_stack_factory(
        DEMO.parent,
        FUSIONSERVE_DATA_DIR=str(tmp_path_factory.mktemp("data")),
        FUSIONSERVE_WEBHOOK_SECRET="guard-secret",
        FUSIONSERVE_WEBHOOK_MAX_RETRIES="0",
        FUSIONSERVE_SWEEP_INTERVAL_S="0.2",
    )
    stack.allowing = stack.start_api(
        FUSIONSERVE_WEBHOOK_ALLOW=f"{plain.authority},{slow.authority}"
    )
    stack.start_api()
    stack.start_worker(MODEL)
    stack.wait_ready(MODEL, 1)
    stack.start_bulk_worker(
        FUSIONSERVE_WEBHOOK_ALLOW=slow.authority, FUSIONSERVE_WEBHOOK_TIMEOUT_S=str(DEADLINE_S)
    )
    return stack


@pytest.fixture(scope="module")
def lines() -> bytes:
    tokenizer = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    items = [demo_item(s, False, tokenizer) for s in data.generate(2, data.HELD_OUT_SEED)]
    return b"".join(orjson.dumps(i) + b"\n" for i in items)


def submit(url: str, body: bytes, **params: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/batches", params={"model": MODEL, **params}, content=body, timeout=60
    )


def webhook(url: str, batch_id: str) -> dict:
    return httpx.get(f"{url}/v1/batches/{batch_id}", timeout=30).json()["webhook"]


def refused_urls(redis_url: str) -> list[str]:
    valkey = urlsplit(redis_url).port
    return [
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[::1]:8080/hook",
        "http://0.0.0.0:8080/hook",
        "http://2130706433/hook",
        f"http://127.0.0.1:{valkey}/",
        "http://localhost:8080/hook",
        "http://10.0.0.5/hook",
        "http://192.168.1.1/hook",
        "http://100.64.0.1/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://93.184.216.34/a\r\nX-Injected: 1",
        "http://93.184.216.34:99999/hook",
        "http://93.184.216.34:0/hook",
        "http://user:secret@93.184.216.34/hook",
        "gopher://93.184.216.34/hook",
        "file:///etc/passwd",
        "http:///hook",
        "http://93.184.216.34/" + "a" * 2100,
    ]


def test_internal_and_malformed_webhook_urls_are_refused_at_submit(
    stack, module_redis, redis_url, lines
) -> None:
    before = module_redis.zcard(keys.batches(MODEL))
    for target in refused_urls(redis_url):
        response = submit(stack.url, lines, webhook_url=target)
        assert response.status_code == 422, (target, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_input" and "webhook_url" in error["message"], target
    assert module_redis.zcard(keys.batches(MODEL)) == before


def test_the_allow_list_admits_only_the_named_receivers(stack, plain, lines) -> None:
    other = f"http://127.0.0.1:{plain.server_address[1] ^ 1}/hook"
    assert submit(stack.allowing, lines, webhook_url=other).status_code == 422
    assert submit(stack.url, lines, webhook_url=plain.url).status_code == 422
    assert submit(stack.allowing, lines, webhook_url=plain.url).status_code == 202


def test_delivery_checks_the_address_again_and_fails_for_good(stack, plain, lines) -> None:
    """Accepted by an API that allows the receiver, refused by the bulk worker that does not."""
    batch_id = submit(stack.allowing, lines, webhook_url=plain.url).json()["batch_id"]
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        wait_settled(http, batch_id, timeout_s=120)
    wait_until(lambda: webhook(stack.url, batch_id)["state"] != "pending", "webhook stayed pending")
    hook = webhook(stack.url, batch_id)
    assert hook["state"] == "failed"
    [attempt] = hook["attempts"]
    assert "not a public address" in attempt["error"]
    assert plain.received == []


def test_a_slow_receiver_neither_delays_ingest_nor_outlives_its_deadline(
    stack, slow, lines
) -> None:
    hooked = submit(stack.allowing, lines, webhook_url=slow.url).json()["batch_id"]
    assert slow.connected.wait(120), "the webhook was never sent"
    other = submit(stack.url, lines).json()["batch_id"]
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        assert wait_settled(http, other, timeout_s=120)["status"] == "completed"
    assert not slow.hung_up.is_set(), "the slow delivery ended before the other batch settled"
    assert webhook(stack.url, hooked)["state"] == "pending"
    wait_until(
        lambda: webhook(stack.url, hooked)["state"] != "pending", "no deadline", timeout_s=120
    )
    hook = webhook(stack.url, hooked)
    assert hook["state"] == "failed"
    assert f"within {float(DEADLINE_S)} s" in hook["attempts"][-1]["error"]
    assert slow.received == ["/hook"]
