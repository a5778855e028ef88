"""The blocking client: one ``httpx.Client`` (one connection pool) per instance."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import httpx
import numpy as np

from client import _base, _calls, _codec
from client._calls import Call
from client.errors import WaitTimeout
from client.types import JobResult, ModelInfo

T = TypeVar("T")


class Client:
    """A fusionserve server at ``base_url``.

    ``timeout`` is the per-request HTTP timeout (long polls extend it by their wait);
    ``max_retries`` bounds the retries of 429/503 answers and connection failures (see
    :mod:`client._retry`). Extra keyword arguments go to ``httpx.Client`` (e.g.
    ``event_hooks``, ``transport``, ``verify``).
    """

    def __init__(
        self,
        base_url: str = _base.DEFAULT_URL,
        *,
        timeout: float = 30.0,
        max_retries: int = 3,
        api_key: str | None = None,
        backoff: float = 0.2,
        backoff_max: float = 10.0,
        limits: httpx.Limits | None = None,
        **httpx_options: Any,
    ) -> None:
        self.timeout = timeout
        self.retry = _base.policy(max_retries, backoff, backoff_max)
        self._http = httpx.Client(
            base_url=base_url,
            timeout=timeout,
            headers=_base.headers(api_key),
            limits=limits or _base.DEFAULT_LIMITS,
            **httpx_options,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, call: Call[T]) -> T:
        """Send one call with retries; raise a :class:`FusionServeError` when it fails."""
        attempt = 0
        while True:
            try:
                response = self._http.request(call.method, call.path, **_base.request_kwargs(call))
            except httpx.TransportError as exc:
                delay = _base.transport_delay(call, exc, self.retry, attempt)
            else:
                parsed, delay = _base.outcome(call, response, self.retry, attempt)
                if delay is None:
                    return parsed
            time.sleep(delay)
            attempt += 1

    def submit(
        self,
        model: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        text: str | None = None,
        image: bytes | str | None = None,
        priority: int | None = None,
        timeout_ms: int | None = None,
    ) -> str:
        """Enqueue one item; returns its job id. Tensors may be numpy arrays or nested lists."""
        item = _codec.make_item(inputs, text, image)
        return self.request(_calls.submit(model, item, priority, timeout_ms))

    def submit_many(
        self,
        model: str,
        items: Sequence[Mapping[str, Any]],
        *,
        priority: int | None = None,
        timeout_ms: int | None = None,
    ) -> list[str]:
        """Enqueue items (``{"inputs": …}`` or ``{"text", "image"}``) as one queue entry."""
        body = [_codec.normalize_item(i) for i in items]
        return self.request(_calls.submit(model, body, priority, timeout_ms))

    def result(self, job_id: str, wait: float | None = None) -> JobResult:
        """The job now, or once final within ``wait`` seconds (a long poll, no busy polling)."""
        return self.request(_calls.result(job_id, wait, self.timeout))

    def wait(
        self, job_id: str, timeout: float = 60.0, *, poll: float = _base.WAIT_CHUNK_S
    ) -> JobResult:
        """Long-poll until the job is final; raise :class:`WaitTimeout` after ``timeout``.

        Each request waits at most ``poll`` seconds: keep it at or below the server's
        ``FUSIONSERVE_MAX_WAIT_S`` (60 by default), which refuses longer waits with a 400.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            job = self.result(job_id, wait=max(0.0, min(poll, remaining)))
            if job.done:
                return job
            if deadline - time.monotonic() <= 0:
                raise WaitTimeout(job_id, timeout, job)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Synchronous KServe V2 inference: rows in, outputs (with their dtypes) out."""
        return self.request(_calls.infer(model, inputs, outputs, timeout))

    def models(self) -> list[ModelInfo]:
        return self.request(_calls.models())

    def model(self, name: str) -> ModelInfo:
        return self.request(_calls.model(name))

    def health(self) -> dict[str, Any]:
        return self.request(_calls.health())

    def ready(self) -> bool:
        return self.request(_calls.ready())
