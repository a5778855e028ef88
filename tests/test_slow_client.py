"""Slow clients cannot hold a connection: a stalled body is answered 408 (and the connection
closed) after ``FUSIONSERVE_BODY_TIMEOUT_S``; stalled headers are closed after
``FUSIONSERVE_HEADER_TIMEOUT_S``. Both shortened here; the bounds allow slack for a busy box."""

from __future__ import annotations

import socket
import time

import orjson
import pytest
from helpers import publish_then_pause
from onnx_models import scale_model

BODY_TIMEOUT_S = 2.0
MIN_BODY_RATE = 1000
HEADER_TIMEOUT_S = 4
SLACK_S = 8.0


@pytest.fixture(scope="module")
def api_port(module_stack_factory, tmp_path_factory) -> int:
    repo = tmp_path_factory.mktemp("repo")
    scale_model(repo)
    stack = module_stack_factory(
        repo,
        FUSIONSERVE_DATA_DIR=str(tmp_path_factory.mktemp("data")),
        FUSIONSERVE_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        FUSIONSERVE_MIN_BODY_RATE=str(MIN_BODY_RATE),
        FUSIONSERVE_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
    )
    stack.start_api()
    publish_then_pause(stack, "scale")
    return int(stack.url.rsplit(":", 1)[1])


def _stall(port: int, head: bytes, body: bytes, bound_s: float) -> tuple[bytes, float]:
    """Send ``head`` and the first ``body`` bytes, then nothing: everything the server sends
    until it closes, and how long that took. Fails if it is still open after ``bound_s``."""
    with socket.create_connection(("127.0.0.1", port), timeout=bound_s) as sock:
        started = time.monotonic()
        sock.sendall(head + body)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            raise AssertionError(f"still open after {bound_s} s; got {received!r}") from None
        return received, time.monotonic() - started


def _post(path: str, length: int, content_type: str = "application/json") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    "path",
    ["/v1/models/scale/infer", "/v1/batches?model=scale"],
)
def test_a_stalled_body_is_answered_408_and_closed(api_port: int, path: str) -> None:
    received, took = _stall(
        api_port, _post(path, 1000), b'{"inputs":', bound_s=BODY_TIMEOUT_S + SLACK_S
    )
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), received
    error = orjson.loads(body)["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert "body" in message
    assert took >= BODY_TIMEOUT_S - 0.5  # not cut short either


def test_a_body_that_keeps_arriving_slowly_is_still_cut_off(api_port: int) -> None:
    """A trickle (a byte at a time, each well inside the timeout) gets no more than the bound."""
    bound = BODY_TIMEOUT_S + SLACK_S
    with socket.create_connection(("127.0.0.1", api_port), timeout=bound) as sock:
        started = time.monotonic()
        sock.sendall(_post("/v1/models/scale/infer", 1000))
        received = b""
        sock.settimeout(0.3)
        while time.monotonic() - started < bound:
            try:
                sock.sendall(b" ")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            received += chunk
        assert received.startswith(b"HTTP/1.1 408 "), received


def test_stalled_headers_are_closed(api_port: int) -> None:
    partial = b"POST /v1/models/scale/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    received, _ = _stall(api_port, partial, b"", bound_s=HEADER_TIMEOUT_S + SLACK_S)
    assert not received.startswith(b"HTTP/1.1 2")


def test_a_body_nobody_reads_does_not_hold_the_connection(api_port: int) -> None:
    """An unknown model is refused before its body is read; the rest never comes."""
    received, _ = _stall(
        api_port, _post("/v1/models/nope/infer", 1000), b"{", bound_s=HEADER_TIMEOUT_S + SLACK_S
    )
    assert received.startswith(b"HTTP/1.1 404 "), received


def test_a_whole_body_is_still_served(api_port: int) -> None:
    body = b'{"inputs": {"x": [1, 2, 3, 4]}}'
    with socket.create_connection(("127.0.0.1", api_port), timeout=10) as sock:
        sock.sendall(_post("/v1/models/scale/infer", len(body)) + body)
        assert sock.recv(65536).startswith(b"HTTP/1.1 202 ")


def test_a_body_that_keeps_arriving_steadily_is_served_past_the_timeout(api_port: int) -> None:
    """A slow link is no slowloris: a body arriving faster than the minimum rate earns more
    time as it comes, so it is served though it takes longer than the body timeout."""
    body = b'{"inputs": {"x": [1, 2, 3, 4]}}' + b" " * 5_970  # JSON may end in whitespace
    pieces = [body[i : i + 500] for i in range(0, len(body), 500)]  # 1,250 bytes/s, 4.8 s
    assert len(pieces) * 0.4 > BODY_TIMEOUT_S + 1
    with socket.create_connection(("127.0.0.1", api_port), timeout=30) as sock:
        sock.sendall(_post("/v1/models/scale/infer", len(body)))
        for piece in pieces:
            assert not _closed(sock, 0.4), "the server gave up on a steady body"
            sock.sendall(piece)
        sock.settimeout(30)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 202 "), answer


def _closed(sock: socket.socket, wait_s: float) -> bool:
    """Wait up to ``wait_s`` for the server to answer early (or close): True if it did."""
    sock.settimeout(wait_s)
    try:
        return sock.recv(65536, socket.MSG_PEEK) is not None
    except TimeoutError:
        return False
