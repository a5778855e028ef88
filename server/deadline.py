"""A deadline on request bodies: a client that stalls mid-body is answered 408, not waited for.

WSGI middleware, so it covers every route and every way of reading (``get_data``,
``get_json``, ``request.stream`` for batch uploads, multipart). The deadline grows with
what has arrived: ``body_timeout_s`` from the app being called, plus one second for each
``min_body_rate`` bytes received. A client that keeps sending at least that fast (a 4 GB
batch upload on a slow link) is never cut off; one that stalls, or trickles a byte at a
time, is answered within about ``body_timeout_s``. Under gevent (the default gunicorn worker) a
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

    def __init__(self, stream: Any, timeout_s: float, min_rate: float, sock: Any) -> None:
        self._stream, self._timeout_s, self._min_rate, self._sock = (
            stream,
            timeout_s,
            min_rate,
            sock,
        )
        self._started = time.monotonic()
        self._received = 0
        self._gevent = _gevent_patched()

    @property
    def _deadline(self) -> float:
        return self._started + self._timeout_s + self._received / self._min_rate

    def _expire(self) -> BodyTimeout:
        if self._sock is not None:  # nothing more is read from this connection
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RD)
        return BodyTimeout(
            f"the request body stalled: it must arrive within {self._timeout_s:g} s, plus a "
            f"second for every {self._min_rate:g} bytes received"
        )

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

    # Reads go in pieces of about a second's worth at the minimum rate, so the deadline
    # (which grows with each piece) is looked at again while a big body arrives.

    def read(self, size: int = -1) -> bytes:
        return self._pieces(self._stream.read, size, until_newline=False)

    def readline(self, size: int = -1) -> bytes:
        return self._pieces(self._stream.readline, size, until_newline=True)

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def _pieces(self, read: Callable[[int], bytes], size: int, *, until_newline: bool) -> bytes:
        piece = max(1, int(self._min_rate))
        parts: list[bytes] = []
        wanted = size if size is not None and size >= 0 else None
        while wanted is None or wanted > 0:
            ask = piece if wanted is None else min(piece, wanted)
            data = self._call(read, ask)
            if not data:
                break
            self._received += len(data)
            parts.append(data)
            if wanted is not None:
                wanted -= len(data)
            if until_newline and data.endswith(b"\n"):
                break
        return b"".join(parts)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class BodyDeadline:
    """Wrap a WSGI app so a request's body must arrive within ``timeout_s``, plus a second for
    every ``min_rate`` bytes that did arrive."""

    def __init__(
        self, app: Callable[..., Iterable[bytes]], timeout_s: float, min_rate: float
    ) -> None:
        self.app, self.timeout_s, self.min_rate = app, timeout_s, min_rate

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH") or "0"
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked or (length.isdigit() and int(length) > 0):
            environ["wsgi.input"] = _DeadlineInput(
                environ["wsgi.input"],
                self.timeout_s,
                self.min_rate,
                environ.get("gunicorn.socket"),
            )
        return self.app(environ, start_response)
