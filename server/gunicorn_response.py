"""One write per small response under gunicorn: the headers ride with the first body chunk.

gunicorn writes a response's headers and its body in two socket sends; for the small
JSON answers of an inference API the second system call costs about as much as the
first. This subclass keeps the header bytes until the first body chunk (or the end
of the response) and sends both at once; everything else is gunicorn's own code.

It relies on ``Response._emit_body``, a hook gunicorn added in 26.2.0 (``write()`` calls it
for every body block). Older releases write the body straight to the socket, which would
put the body before the held headers: :func:`install` checks for the hook and keeps
gunicorn's own response where it is missing, and ``pyproject.toml`` pins the versions.
"""

from __future__ import annotations

import logging

import gunicorn
from gunicorn import util
from gunicorn.http import wsgi

log = logging.getLogger(__name__)


class OneWriteResponse(wsgi.Response):
    _pending: bytes = b""

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        tosend = self.default_headers()
        tosend.extend([f"{k}: {v}\r\n" for k, v in self.headers])
        self._pending = util.to_bytestring("{}\r\n".format("".join(tosend)), "latin-1")
        self.headers_sent = True

    def _emit_body(self, data: bytes) -> None:
        if self._pending and not self.chunked:
            data, self._pending = self._pending + data, b""
        elif self._pending:
            util.write(self.sock, self._pending)
            self._pending = b""
        util.write(self.sock, data, self.chunked)

    def sendfile(self, respiter) -> bool:
        """No sendfile: it would write the file before the held header bytes. The plain
        write path (which sends them with the first block) serves files instead."""
        return False

    def close(self) -> None:
        self.send_headers()
        if self._pending:  # a response without a body still owes its headers
            util.write(self.sock, self._pending)
            self._pending = b""
        if self.chunked:
            util.write_chunk(self.sock, b"")


def has_body_hook(response: type) -> bool:
    """Whether ``response.write`` sends every body block through ``_emit_body``."""
    write = getattr(response, "write", None)
    return callable(getattr(response, "_emit_body", None)) and "_emit_body" in getattr(
        getattr(write, "__code__", None), "co_names", ()
    )


def install() -> bool:
    """Make gunicorn build :class:`OneWriteResponse` objects (call in each worker process).

    Refuses, logging why, when the running gunicorn lacks the body hook: its own
    response (two sends) is then used, never a malformed one. Returns whether installed.
    """
    if wsgi.Response is OneWriteResponse:
        return True
    if not has_body_hook(wsgi.Response):
        log.warning(
            "gunicorn %s has no Response._emit_body hook (added in 26.2): "
            "using gunicorn's own response (headers and body in two sends)",
            gunicorn.__version__,
        )
        return False
    wsgi.Response = OneWriteResponse  # type: ignore[misc]
    return True
