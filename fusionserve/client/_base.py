"""What the sync and async clients share: settings, headers, and the request loop's steps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from fusionserve.client._calls import Call
from fusionserve.client._retry import RetryPolicy
from fusionserve.client.errors import FusionServeError, error_from_response, error_from_transport

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "fusionserve-client/0.1"
# a long poll and the next request reuse one connection; 100 allows wide fan-out
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)
WAIT_CHUNK_S = 30.0  # one long-poll request; below the server's FUSIONSERVE_MAX_WAIT_S


def headers(api_key: str | None) -> dict[str, str]:
    out = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key:
        out["Authorization"] = f"Bearer {api_key}"
    return out


def policy(max_retries: int, backoff: float, backoff_max: float) -> RetryPolicy:
    if max_retries < 0:
        raise ValueError("max_retries must be >= 0")
    return RetryPolicy(max_retries=max_retries, backoff=backoff, backoff_max=backoff_max)


def request_kwargs(call: Call[Any]) -> dict[str, Any]:
    content = call.upload() if call.upload is not None else call.content
    kwargs: dict[str, Any] = {"params": call.params, "content": content}
    if call.headers:
        kwargs["headers"] = call.headers
    if call.timeout is not None or call.upload is not None:
        kwargs["timeout"] = call.timeout  # an upload of any size: no overall timeout
    return kwargs


def file_blocks(path: str | Path, on_bytes: Callable[[int], None] | None) -> Iterator[bytes]:
    """A file in 1 MiB blocks (an upload never holds it whole), reporting each block."""
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            if on_bytes is not None:
                on_bytes(len(block))
            yield block


def outcome(
    call: Call[Any], response: httpx.Response, retry: RetryPolicy, attempt: int
) -> tuple[Any, float | None]:
    """``(parsed, None)`` for an answer, ``(None, delay)`` to retry; raises to give up."""
    if response.status_code < 400 or response.status_code in call.accept:
        return call.parse(response), None
    error = error_from_response(response)
    delay = retry.after_error(error, call.idempotent, attempt)
    if delay is None:
        error.attempts = attempt + 1
        raise error
    return None, delay


def transport_delay(
    call: Call[Any], exc: httpx.TransportError, retry: RetryPolicy, attempt: int
) -> float:
    """The delay before retrying a failed transport, or raise the SDK's error for it."""
    delay = retry.after_transport(exc, call.idempotent, attempt)
    if delay is None:
        error: FusionServeError = error_from_transport(exc)
        error.attempts = attempt + 1
        raise error from exc
    return delay
