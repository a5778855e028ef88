"""A deadline on request bodies: a client that stalls mid-body is answered 408, not waited for.

WSGI middleware, so it covers every route and every way of reading (``get_data``,
``get_json``, ``request.stream`` for batch uploads, multipart): the body must be in within
``body_timeout_s`` of the app being called. Under gevent (the default gunicorn worker) a
read past the deadline is interrupted with a ``gevent.Timeout``; under other gunicorn
workers each socket read is given the time left. On expiry the connection's read side is
shut down, so once the 408 is sent the connection closes instead of gunicorn draining a
body that will never come. (granian reads bodies itself: only the deadline between reads
applies there.)
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from werkzeug.exceptions import RequestTimeout


class BodyTimeout(RequestTimeout):
    """408: the body did not arrive in time (an HTTPException: the error handlers shape it)."""


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("socket")


class _DeadlineInput:
    """``wsgi.input`` whose reads fail with :class:`BodyTimeout` past the deadline."""

    def __init__(self, stream: Any, deadline: float, timeout_s: float, sock: Any) -> None:
        self._stream, self._deadline, self._timeout_s, self._sock = (
            stream,
            deadline,
            timeout_s,
            sock,
        )
        self._gevent = _gevent_patched()

    def _expire(self) -> BodyTimeout:
        if self._sock is not None:  # nothing more is read from this connection
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RD)
        return BodyTimeout(f"the request body did not arrive within {self._timeout_s:g} s")

    def _call(self, read: Callable[..., Any], *args: Any) -> Any:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._expire()
        if self._gevent:
            import gevent

            timer = gevent.Timeout(left)
            timer.start()
            try:
                return read(*args)
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                raise self._expire() from None
            finally:
                timer.close()
        if self._sock is None:
            return read(*args)
        before = self._sock.gettimeout()
        self._sock.settimeout(left)
        try:
            return read(*args)
        except TimeoutError:
            raise self._expire() from None
        finally:
            with contextlib.suppress(OSError):
                self._sock.settimeout(before)

    def read(self, size: int = -1) -> bytes:
        return self._call(self._stream.read, size)

    def readline(self, size: int = -1) -> bytes:
        return self._call(self._stream.readline, size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return self._call(self._stream.readlines, hint)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class BodyDeadline:
    """Wrap a WSGI app so a request's body must arrive within ``timeout_s``."""

    def __init__(self, app: Callable[..., Iterable[bytes]], timeout_s: float) -> None:
        self.app, self.timeout_s = app, timeout_s

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH") or "0"
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked or (length.isdigit() and int(length) > 0):
            environ["wsgi.input"] = _DeadlineInput(
                environ["wsgi.input"],
                time.monotonic() + self.timeout_s,
                self.timeout_s,
                environ.get("gunicorn.socket"),
            )
        return self.app(environ, start_response)
