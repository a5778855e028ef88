"""The blocking client: one ``httpx.Client`` (one connection pool) per instance."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import orjson

from fusionserve.client import _base, _calls, _codec, _generate
from fusionserve.client._calls import Call
from fusionserve.client.errors import WaitTimeout, error_from_response
from fusionserve.client.types import Generation, GenerationEvent, JobResult, ModelInfo

T = TypeVar("T")
F = TypeVar("F", JobResult, Generation)


class Client:
    """A fusionserve server at ``base_url``.

    ``timeout`` is the per-request HTTP timeout (long polls extend it by their wait);
    ``max_retries`` bounds the retries of 429/503 answers and connection failures (see
    :mod:`fusionserve.client._retry`). Extra keyword arguments go to ``httpx.Client`` (e.g.
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

    def cancel(self, job_id: str) -> JobResult:
        """Cancel a queued job (it never reaches the model) or stop a generation being
        written. Raises NotCancellable once a job has run, NotFound for an unknown id."""
        return self.request(_calls.cancel(job_id))

    def wait(
        self, job_id: str, timeout: float = 60.0, *, poll: float = _base.WAIT_CHUNK_S
    ) -> JobResult:
        """Long-poll until the job is final; raise :class:`WaitTimeout` after ``timeout``.

        Each request waits at most ``poll`` seconds: keep it at or below the server's
        ``FUSIONSERVE_MAX_WAIT_S`` (60 by default), which refuses longer waits with a 400.
        """
        return self._poll(partial(_calls.result, job_id, timeout=self.timeout), timeout, poll)

    def _poll(self, call: Callable[[float], Call[F]], timeout: float, poll: float) -> F:
        """Long-poll ``call(wait)`` until its answer is final, for at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            job = self.request(call(max(0.0, min(poll, remaining))))
            if job.done:
                return job
            if deadline - time.monotonic() <= 0:
                raise WaitTimeout(job.job_id, timeout, job)

    def generate(
        self,
        model: str,
        text: str | None = None,
        image: bytes | str | None = None,
        audio: bytes | str | None = None,
        inputs: Mapping[str, Any] | None = None,
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        priority: int | None = None,
        timeout_ms: int | None = None,
        wait: float = 60.0,
    ) -> Generation:
        """Write text: queue a generation job, then long-poll it for up to ``wait`` seconds.

        ``temperature`` 0 is greedy; otherwise tokens are sampled (``top_k``, then
        ``top_p``) from ``seed``'s generator. Returns the final :class:`Generation` (a
        cancelled or expired one keeps its text so far); raises :class:`InvalidInput` for
        a parameter the server refuses, :class:`GenerationFailed` if the request failed,
        :class:`WaitTimeout` if it is not final within ``wait``.
        """
        body = _codec.generate_body(
            _codec.make_item(inputs, text, image, audio),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            priority=priority,
            timeout_ms=timeout_ms,
        )
        job_id = self.request(_calls.generate(model, body))
        poll = partial(_calls.generation, job_id, timeout=self.timeout)
        return _generate.ended(self._poll(poll, wait, _base.WAIT_CHUNK_S))

    def stream(
        self,
        model: str,
        text: str | None = None,
        image: bytes | str | None = None,
        audio: bytes | str | None = None,
        inputs: Mapping[str, Any] | None = None,
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        priority: int | None = None,
        timeout_ms: int | None = None,
    ) -> Iterator[GenerationEvent]:
        """Write text and yield its events as they come (Server-Sent Events).

        ``token`` events carry the pieces; ``restart`` says to drop the pieces so far;
        the last, ``done``, carries the whole :class:`Generation` (:func:`text_of` joins
        them). A dropped connection is resumed after the last event read, so each event
        comes once. Raises as :meth:`generate` does (``GenerationFailed`` for an
        ``error`` event), and :class:`ConnectionFailed` once the retries are spent.
        """
        body = _codec.generate_body(
            _codec.make_item(inputs, text, image, audio),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            priority=priority,
            timeout_ms=timeout_ms,
        )
        follow = _generate.Follower(model, body, self.retry)
        while True:
            call = follow.open()
            try:
                kwargs = _base.request_kwargs(call)
                with self._http.stream(call.method, call.path, **kwargs) as response:
                    if response.status_code >= 400:
                        response.read()
                    delay = follow.answered(call, response)
                    if delay is None:
                        for line in response.iter_lines():
                            event = follow.feed(line)
                            if event is not None:
                                yield event
                            if follow.finished:
                                return
                        delay = follow.dropped()
            except httpx.TransportError as exc:
                delay = follow.dropped(exc)
            time.sleep(delay)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Synchronous KServe V2 inference: rows in, outputs (with their dtypes) out."""
        return self.request(_calls.infer(model, inputs, outputs, timeout))

    def submit_batch(
        self,
        model: str,
        path: str | Path,
        *,
        webhook_url: str | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Upload a JSONL file as a bulk batch; returns ``{"batch_id", "status_url", …}``.

        The upload carries an Idempotency-Key (a fresh one unless given), so a retry after
        a dropped connection returns the batch the first attempt created, never a second.
        """
        call = _calls.submit_batch(
            model,
            lambda: _base.file_blocks(path, on_bytes),
            webhook_url=webhook_url,
            priority=priority,
            idempotency_key=idempotency_key or uuid.uuid4().hex,
        )
        return self.request(call)

    def batch(self, batch_id: str) -> dict[str, Any]:
        """The batch's status: ``status``, ``counts``, times, ``eta_s``, ``webhook``."""
        return self.request(_calls.batch(batch_id))

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self.request(_calls.cancel_batch(batch_id))

    def batches(self, model: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        return self.request(_calls.batches(model, limit))["batches"]

    def batch_results(self, batch_id: str) -> Iterator[dict[str, Any]]:
        """The results, one dict per input line in input order, streamed as they download."""
        with self._http.stream("GET", _calls.batch_results_path(batch_id), timeout=None) as r:
            if r.status_code >= 400:
                r.read()
                raise error_from_response(r)
            for line in r.iter_lines():
                if line:
                    yield orjson.loads(line)

    def models(self) -> list[ModelInfo]:
        return self.request(_calls.models())

    def model(self, name: str) -> ModelInfo:
        return self.request(_calls.model(name))

    def health(self) -> dict[str, Any]:
        return self.request(_calls.health())

    def ready(self) -> bool:
        return self.request(_calls.ready())
