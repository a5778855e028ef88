"""One exception class per error family, parsed from the server's error bodies.

The ``/v1`` API answers ``{"error": {"code", "message"}}``; the KServe V2 protocol answers
``{"error": "<message>"}``. Both map onto :class:`FusionServeError` subclasses by HTTP
status, so callers can ``except QueueFull`` without looking at status codes.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import httpx
import orjson

# The code used when a body carries none (V2 errors, proxies, plain-text answers).
DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    413: "payload_too_large",
    422: "invalid_input",
    429: "queue_full",
    503: "unavailable",
}


class FusionServeError(Exception):
    """A request the server refused or could not answer.

    ``status`` is the HTTP status (``None`` when no response came back), ``code`` the
    server's machine-readable code, ``attempts`` how many tries were made (retries included).
    """

    def __init__(
        self,
        status: int | None,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(f"{status or '-'} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after
        self.body = body
        self.attempts = 1


class BadRequest(FusionServeError):
    """400: a malformed body or query (e.g. a ``wait`` out of range)."""


class Unauthorized(FusionServeError):
    """401: no API key, or one the server does not know (or revoked)."""


class Forbidden(FusionServeError):
    """403: the key is valid but may not do this (e.g. repository orders need an admin key)."""


class NotFound(FusionServeError):
    """404: an unknown model, an unknown or expired job, or an unknown route."""


class PayloadTooLarge(FusionServeError):
    """413: the body is over the server's byte limit, or it holds too many items."""


class InvalidInput(FusionServeError):
    """422: the input does not fit the model; the message names the input and the item."""


class QueueFull(FusionServeError):
    """429: the model's queue is full; nothing was enqueued, so a retry is safe."""


class NotCancellable(FusionServeError):
    """409: the job or batch has already started or finished, so it can no longer be cancelled."""


class Unavailable(FusionServeError):
    """503: the server cannot reach its queue (Redis); retry shortly."""


class ConnectionFailed(FusionServeError):
    """No HTTP answer: the connection could not be made or broke."""


class RequestTimeout(FusionServeError):
    """No HTTP answer within the client's timeout."""


class GenerationFailed(FusionServeError):
    """A generation that failed after it was accepted: its stream's ``error`` event, or its
    job ended ``failed``. ``code`` e.g. ``model_error`` (the model refused the input) or
    ``timeout`` (no result by the request's deadline); ``job_id`` names the job."""

    def __init__(self, code: str, message: str, job_id: str | None) -> None:
        super().__init__(None, code, message)
        self.job_id = job_id


class WaitTimeout(TimeoutError):
    """:meth:`Client.wait` gave up before the job was final; ``last`` is what it last saw."""

    def __init__(self, job_id: str, timeout: float, last: Any) -> None:
        super().__init__(f"job {job_id} is still {last.status} after {timeout:g} s")
        self.job_id, self.timeout, self.last = job_id, timeout, last


BY_STATUS: dict[int, type[FusionServeError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: NotCancellable,
    413: PayloadTooLarge,
    422: InvalidInput,
    429: QueueFull,
    503: Unavailable,
}


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(response: httpx.Response) -> FusionServeError:
    """The exception for an error response, whichever error body shape it carries."""
    status = response.status_code
    code = DEFAULT_CODES.get(status, "http_error")
    message = response.reason_phrase or f"HTTP {status}"
    body: Any = None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        text = response.text.strip()
        if text:
            message = text[:500]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = str(error.get("code") or code)
            message = str(error.get("message") or message)
        elif isinstance(error, str):
            message = error
    cls = BY_STATUS.get(status, FusionServeError)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return cls(status, code, message, retry_after=retry_after, body=body)


def error_from_transport(exc: httpx.TransportError) -> FusionServeError:
    """The exception for a request that got no HTTP answer."""
    if isinstance(exc, httpx.TimeoutException):
        return RequestTimeout(None, "timeout", f"{type(exc).__name__}: {exc}")
    return ConnectionFailed(None, "connection_error", f"{type(exc).__name__}: {exc}")
