"""Every endpoint as a :class:`Call`: what to send and how to read the answer.

The sync and async clients share these and differ only in how they send and sleep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import numpy as np
import orjson

from fusionserve.client import _codec
from fusionserve.client.types import Generation, JobResult, ModelInfo

T = TypeVar("T")
JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {"Accept": "text/event-stream"}


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP request. ``accept`` lists error statuses that are answers, not failures."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, str] | None = None
    content: bytes | None = None
    timeout: float | None = None
    idempotent: bool = True
    accept: frozenset[int] = frozenset()
    upload: Callable[[], Iterator[bytes]] | None = None
    """A streamed body, opened afresh for each attempt (``content`` is then None)."""
    extra_headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str] | None:
        base = JSON_HEADERS if self.content is not None else None
        if self.extra_headers:
            return {**(base or {}), **self.extra_headers}
        return base


def _json(response: httpx.Response) -> Any:
    return orjson.loads(response.content)


def _seg(name: str) -> str:
    return quote(name, safe="")


def submit(
    model: str,
    item_or_items: dict[str, Any] | list[dict[str, Any]],
    priority: int | None,
    timeout_ms: int | None,
) -> Call[Any]:
    body = _codec.v1_body(item_or_items, priority, timeout_ms)
    many = isinstance(item_or_items, list)
    return Call(
        "POST",
        f"/v1/models/{_seg(model)}/infer",
        (lambda r: _json(r)["job_ids"]) if many else (lambda r: _json(r)["job_id"]),
        content=_codec.encode_json(body),
        idempotent=False,
    )


def result(job_id: str, wait: float | None, timeout: float) -> Call[JobResult]:
    params = {"wait": f"{wait:g}"} if wait else None
    # a long-poll holds the response for up to ``wait`` seconds: never time out before it
    read_timeout = max(timeout, (wait or 0) + 10)
    return Call(
        "GET",
        f"/v1/jobs/{_seg(job_id)}",
        lambda r: JobResult.from_json(_json(r)),
        params=params,
        timeout=read_timeout,
    )


def cancel(job_id: str) -> Call[JobResult]:
    """``DELETE /v1/jobs/<id>``: the job, cancelled; a generation being written answers 202 and
    stops at its worker's next step (poll it to see ``cancelled``)."""
    return Call("DELETE", f"/v1/jobs/{_seg(job_id)}", lambda r: JobResult.from_json(_json(r)))


def generate(model: str, body: dict[str, Any]) -> Call[str]:
    """``POST /v1/models/<m>/generate``: queue a generation job; its id."""
    return Call(
        "POST",
        f"/v1/models/{_seg(model)}/generate",
        lambda r: _json(r)["job_id"],
        content=_codec.encode_json(body),
        idempotent=False,
    )


def generate_stream(model: str, body: dict[str, Any]) -> Call[str | None]:
    """The same, answered with the request's events (read as a stream, not parsed here);
    the parsed answer is the job id, what a dropped stream resumes from."""
    return Call(
        "POST",
        f"/v1/models/{_seg(model)}/generate",
        lambda r: r.headers.get("X-Job-Id"),
        content=_codec.encode_json({**body, "stream": True}),
        idempotent=False,
        extra_headers=SSE_HEADERS,
    )


def job_events(job_id: str, after: str) -> Call[str | None]:
    """``GET /v1/jobs/<id>/events``: a generation's events after the stream id ``after``."""
    return Call(
        "GET",
        f"/v1/jobs/{_seg(job_id)}/events",
        lambda r: job_id,
        extra_headers={**SSE_HEADERS, "Last-Event-ID": after},
    )


def generation(job_id: str, wait: float | None, timeout: float) -> Call[Generation]:
    """``GET /v1/jobs/<id>`` of a generation job, read as a :class:`Generation`."""
    poll = result(job_id, wait, timeout)
    return replace(poll, parse=lambda r: Generation.from_json(_json(r)))  # type: ignore[arg-type]


def models() -> Call[list[ModelInfo]]:
    return Call("GET", "/v1/models", lambda r: [ModelInfo.from_json(m) for m in _json(r)["models"]])


def model(name: str) -> Call[ModelInfo]:
    return Call("GET", f"/v1/models/{_seg(name)}", lambda r: ModelInfo.from_json(_json(r)))


def health() -> Call[dict[str, Any]]:
    return Call("GET", "/healthz", _json)


def ready() -> Call[bool]:
    """``/readyz``: 503 means "not ready" (no workers, or Redis down): an answer, not an error."""
    return Call("GET", "/readyz", lambda r: r.status_code == 200, accept=frozenset({503}))


def infer(
    model: str,
    inputs: Mapping[str, Any],
    outputs: Sequence[str] | None,
    timeout: float | None,
) -> Call[dict[str, np.ndarray]]:
    """KServe V2 synchronous inference (no side effects, so safe to retry on 429/503)."""
    return infer_raw(model, _codec.encode_json(_codec.v2_body(inputs, outputs)), timeout)


def infer_raw(
    model: str, content: bytes, timeout: float | None = None
) -> Call[dict[str, np.ndarray]]:
    return Call(
        "POST",
        f"/v2/models/{_seg(model)}/infer",
        lambda r: _codec.v2_outputs(_json(r)),
        content=content,
        timeout=timeout,
        idempotent=False,
    )


def submit_batch(
    model: str,
    upload: Callable[[], Iterator[bytes]],
    *,
    webhook_url: str | None,
    priority: int | None,
    idempotency_key: str,
) -> Call[dict[str, Any]]:
    """``POST /v1/batches``: the JSONL streamed; the key makes a retried upload safe."""
    params = {"model": model}
    if webhook_url:
        params["webhook_url"] = webhook_url
    if priority is not None:
        params["priority"] = str(priority)
    return Call(
        "POST",
        "/v1/batches",
        _json,
        params=params,
        upload=upload,
        extra_headers={"Content-Type": "application/jsonl", "Idempotency-Key": idempotency_key},
        timeout=None,
    )


def batch(batch_id: str) -> Call[dict[str, Any]]:
    return Call("GET", f"/v1/batches/{_seg(batch_id)}", _json)


def cancel_batch(batch_id: str) -> Call[dict[str, Any]]:
    return Call("DELETE", f"/v1/batches/{_seg(batch_id)}", _json)


def batches(model: str | None, limit: int) -> Call[dict[str, Any]]:
    params = {"limit": str(limit)} | ({"model": model} if model else {})
    return Call("GET", "/v1/batches", _json, params=params)


def batch_results_path(batch_id: str) -> str:
    return f"/v1/batches/{_seg(batch_id)}/results"
