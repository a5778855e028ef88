"""The asyncio client: the same calls as :class:`fusionserve.client.Client`, awaited."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
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


class AsyncClient:
    """A fusionserve server at ``base_url``; one ``httpx.AsyncClient`` per instance.

    Arguments as for :class:`fusionserve.client.Client`. Use ``async with``, or ``await aclose()``.
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
        self._http = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            headers=_base.headers(api_key),
            limits=limits or _base.DEFAULT_LIMITS,
            **httpx_options,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, call: Call[T]) -> T:
        """Send one call with retries; raise a :class:`FusionServeError` when it fails."""
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    call.method, call.path, **_base.request_kwargs(call)
                )
            except httpx.TransportError as exc:
                delay = _base.transport_delay(call, exc, self.retry, attempt)
            else:
                parsed, delay = _base.outcome(call, response, self.retry, attempt)
                if delay is None:
                    return parsed
            await asyncio.sleep(delay)
            attempt += 1

    async def submit(
        self,
        model: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        text: str | None = None,
        image: bytes | str | None = None,
        priority: int | None = None,
        timeout_ms: int | None = None,
    ) -> str:
        item = _codec.make_item(inputs, text, image)
        return await self.request(_calls.submit(model, item, priority, timeout_ms))

    async def submit_many(
        self,
        model: str,
        items: Sequence[Mapping[str, Any]],
        *,
        priority: int | None = None,
        timeout_ms: int | None = None,
    ) -> list[str]:
        body = [_codec.normalize_item(i) for i in items]
        return await self.request(_calls.submit(model, body, priority, timeout_ms))

    async def result(self, job_id: str, wait: float | None = None) -> JobResult:
        return await self.request(_calls.result(job_id, wait, self.timeout))

    async def cancel(self, job_id: str) -> JobResult:
        """Cancel a queued job (it never reaches the model) or stop a generation being
        written. Raises NotCancellable once a job has run, NotFound for an unknown id."""
        return await self.request(_calls.cancel(job_id))

    async def wait(
        self, job_id: str, timeout: float = 60.0, *, poll: float = _base.WAIT_CHUNK_S
    ) -> JobResult:
        return await self._poll(partial(_calls.result, job_id, timeout=self.timeout), timeout, poll)

    async def _poll(self, call: Callable[[float], Call[F]], timeout: float, poll: float) -> F:
        """Long-poll ``call(wait)`` until its answer is final, for at most ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            job = await self.request(call(max(0.0, min(poll, remaining))))
            if job.done:
                return job
            if deadline - time.monotonic() <= 0:
                raise WaitTimeout(job.job_id, timeout, job)

    async def generate(
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
        """As :meth:`Client.generate <fusionserve.client.Client.generate>`, awaited."""
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
        job_id = await self.request(_calls.generate(model, body))
        poll = partial(_calls.generation, job_id, timeout=self.timeout)
        return _generate.ended(await self._poll(poll, wait, _base.WAIT_CHUNK_S))

    async def stream(
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
    ) -> AsyncIterator[GenerationEvent]:
        """As :meth:`Client.stream <fusionserve.client.Client.stream>`: ``async for`` its events."""
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
                async with self._http.stream(call.method, call.path, **kwargs) as response:
                    if response.status_code >= 400:
                        await response.aread()
                    delay = follow.answered(call, response)
                    if delay is None:
                        async for line in response.aiter_lines():
                            event = follow.feed(line)
                            if event is not None:
                                yield event
                            if follow.finished:
                                return
                        delay = follow.dropped()
            except httpx.TransportError as exc:
                delay = follow.dropped(exc)
            await asyncio.sleep(delay)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray]:
        return await self.request(_calls.infer(model, inputs, outputs, timeout))

    async def submit_batch(
        self,
        model: str,
        path: str | Path,
        *,
        webhook_url: str | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        async def blocks() -> AsyncIterator[bytes]:
            for block in _base.file_blocks(path, on_bytes):
                yield block

        call = _calls.submit_batch(
            model,
            blocks,  # type: ignore[arg-type]
            webhook_url=webhook_url,
            priority=priority,
            idempotency_key=idempotency_key or uuid.uuid4().hex,
        )
        return await self.request(call)

    async def batch(self, batch_id: str) -> dict[str, Any]:
        return await self.request(_calls.batch(batch_id))

    async def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return await self.request(_calls.cancel_batch(batch_id))

    async def batches(self, model: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        return (await self.request(_calls.batches(model, limit)))["batches"]

    async def batch_results(self, batch_id: str) -> AsyncIterator[dict[str, Any]]:
        path = _calls.batch_results_path(batch_id)
        async with self._http.stream("GET", path, timeout=None) as response:
            if response.status_code >= 400:
                await response.aread()
                raise error_from_response(response)
            async for line in response.aiter_lines():
                if line:
                    yield orjson.loads(line)

    async def models(self) -> list[ModelInfo]:
        return await self.request(_calls.models())

    async def model(self, name: str) -> ModelInfo:
        return await self.request(_calls.model(name))

    async def health(self) -> dict[str, Any]:
        return await self.request(_calls.health())

    async def ready(self) -> bool:
        return await self.request(_calls.ready())
