"""What the API puts on the wire is well-formed HTTP/1.1, read raw off a socket.

Status line first, then headers, a blank line, then exactly Content-Length body bytes
(or well-formed chunks), and the next response on the same connection starts clean.
Run against the installed gunicorn and against gunicorn 26.1 (before the body hook the
one-write response relies on): there it must fall back to gunicorn's own response.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import orjson
import pytest
from helpers import publish_then_pause
from onnx_models import scale_model
from stack import ROOT

STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*")


class Wire:
    """A raw HTTP/1.1 connection that parses responses strictly."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed mid-response; had {self.buf!r}")
        self.buf += data

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._more()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + (body or b""))
        return self.response(head_only=method == "HEAD")

    def response(self, head_only: bool = False) -> tuple[int, dict, bytes]:
        status = self._line()
        match = STATUS_LINE.fullmatch(status)
        assert match, f"the response does not start with a status line: {status!r}"
        headers: dict[str, str] = {}
        while line := self._line():
            name, sep, value = line.partition(b":")
            assert sep and name and not name[-1:].isspace(), f"malformed header {line!r}"
            headers[name.decode().lower()] = value.decode().strip()
        if head_only:
            body = b""
        elif "content-length" in headers:
            assert "transfer-encoding" not in headers
            body = self._take(int(headers["content-length"]))
        else:
            assert headers.get("transfer-encoding") == "chunked", headers
            body = b""
            while True:
                size = int(self._line().split(b";")[0], 16)
                chunk = self._take(size)
                assert self._take(2) == b"\r\n", "a chunk not followed by CRLF"
                if size == 0:
                    break
                body += chunk
        return int(match.group(1)), headers, body

    def close(self) -> None:
        self.sock.close()


def _old_gunicorn(into: Path) -> Path:
    """gunicorn 26.1.0 (no ``_emit_body``), unpacked for PYTHONPATH; skip if pip cannot get it."""
    wheels = into / "wheels"
    pip = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    got = subprocess.run(
        [*pip, "gunicorn==26.1.0", "-d", str(wheels)],
        capture_output=True,
        timeout=180,
    )
    found = list(wheels.glob("gunicorn-26.1.0-*.whl"))
    if got.returncode or not found:
        pytest.skip(f"gunicorn 26.1.0 not available from pip: {got.stderr.decode()[-300:]}")
    site = into / "site"
    with zipfile.ZipFile(found[0]) as wheel:
        wheel.extractall(site)
    return site


@pytest.mark.parametrize("gunicorn", ["installed", "26.1.0"])
def test_responses_are_well_formed_http(
    stack_factory, tmp_path: Path, redis_client, gunicorn: str
) -> None:
    env: dict[str, str] = {}
    if gunicorn != "installed":
        env["PYTHONPATH"] = os.pathsep.join([str(_old_gunicorn(tmp_path)), str(ROOT)])
    scale_model(tmp_path / "repo")
    stack = stack_factory(tmp_path / "repo", FUSIONSERVE_DATA_DIR=str(tmp_path / "data"))
    stack.start_api(**env)
    publish_then_pause(stack, "scale")  # the model is known, so a batch can be created
    port = int(stack.url.rsplit(":", 1)[1])
    wire = Wire(port)
    try:
        status, headers, body = wire.request("GET", "/healthz")
        assert (status, orjson.loads(body)) == (200, {"status": "ok"})
        assert headers["content-type"] == "application/json"

        item = b'{"inputs": {"x": [1, 2, 3, 4]}}'
        status, _, body = wire.request("POST", "/v1/models/scale/infer", item)
        assert status == 202 and orjson.loads(body)["job_id"]

        status, _, body = wire.request("POST", "/v1/models/nope/infer", b'{"inputs": {}}')
        assert status == 404 and orjson.loads(body)["error"]["code"]

        status, _, body = wire.request("POST", "/v1/batches?model=scale", item + b"\n")
        assert status == 202, body
        batch = orjson.loads(body)["batch_id"]

        # a streamed (chunked) response: the results of a batch nothing has run yet
        status, headers, body = wire.request("GET", f"/v1/batches/{batch}/results")
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert body == b""

        status, headers, body = wire.request("HEAD", "/healthz")  # headers only, no body
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0

        status, _, body = wire.request("GET", "/healthz")  # the connection is still in step
        assert status == 200 and orjson.loads(body) == {"status": "ok"}
        assert wire.buf == b""
    finally:
        wire.close()
    if gunicorn != "installed":
        logs = "".join(p.read_text() for p in stack.logs.glob("api-*.log"))
        assert "gunicorn's own response" in logs, logs
