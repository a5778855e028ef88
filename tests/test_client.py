"""The Python SDK against a real API and worker (tiny ``scale`` model: y = 2x), sync and async.

Errors come from real bad requests; retries are counted with httpx event hooks on the
real connection, never by faking the server.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from onnx_models import scale_model

from fusionserve.client import (
    AsyncClient,
    BadRequest,
    Client,
    ConnectionFailed,
    Forbidden,
    FusionServeError,
    InvalidInput,
    NotCancellable,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    TensorSpec,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from fusionserve.client._codec import encode_json, v2_body, v2_outputs
from fusionserve.client._retry import RetryPolicy
from fusionserve.client.errors import error_from_response, parse_retry_after
from fusionserve.embedded import free_port

MODEL = "scale"
X = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)


@pytest.fixture
def scale_url(stack_factory, tmp_path: Path) -> str:
    scale_model(tmp_path / "repo", MODEL)
    stack = stack_factory(tmp_path / "repo", FUSIONSERVE_MAX_ITEMS="4")
    stack.start_api()
    stack.start_worker()
    stack.wait_ready(MODEL, 1)
    return stack.url


class Counter:
    """An httpx response hook: how many HTTP answers (tries) a call took."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, response: httpx.Response) -> None:
        self.n += 1


class AsyncCounter(Counter):
    async def __call__(self, response: httpx.Response) -> None:  # type: ignore[override]
        self.n += 1


# -- pure parts: no server ---------------------------------------------------------------


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(max_retries=5, backoff=0.1, backoff_max=0.5)
    for attempt, ceiling in enumerate([0.1, 0.2, 0.4, 0.5, 0.5]):
        delays = [policy.delay(attempt) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert len(set(delays)) > 1  # jittered
    assert 2.0 <= policy.delay(0, retry_after=2.0) <= 2.2
    assert policy.delay(0, retry_after=1e6) <= 66.0
    queue_full = QueueFull(429, "queue_full", "full")
    assert policy.after_error(queue_full, False, 4) is not None
    assert policy.after_error(queue_full, False, 5) is None
    assert policy.after_error(InvalidInput(422, "invalid_input", "bad"), True, 0) is None
    unreachable = Unavailable(503, "unavailable", "Redis is unreachable")
    assert policy.after_error(unreachable, False, 0) is not None  # nothing was enqueued
    unknown = Unavailable(503, "outcome_unknown", "may have been queued")
    assert policy.after_error(unknown, False, 0) is None  # a submission: maybe enqueued
    assert policy.after_error(unknown, True, 0) is not None  # a read: safe to repeat
    refused = httpx.ConnectError("refused")
    broken = httpx.ReadError("reset")
    assert policy.after_transport(refused, idempotent=False, attempt=0) is not None
    assert policy.after_transport(broken, idempotent=True, attempt=0) is not None
    assert policy.after_transport(broken, idempotent=False, attempt=0) is None  # maybe enqueued


def test_retry_after_is_seconds_or_an_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after(later) <= 31  # type: ignore[operator]


def test_both_error_body_shapes_map_to_the_same_classes() -> None:
    v1 = httpx.Response(429, json={"error": {"code": "queue_full", "message": "full"}})
    v1.headers["Retry-After"] = "2"
    error = error_from_response(v1)
    assert isinstance(error, QueueFull) and error.retry_after == 2.0
    assert (error.status, error.code, error.message) == (429, "queue_full", "full")
    v2 = error_from_response(httpx.Response(400, json={"error": "bad tensor"}))
    assert isinstance(v2, BadRequest) and (v2.code, v2.message) == ("bad_request", "bad tensor")
    key = error_from_response(httpx.Response(401, json={"error": {"code": "unauthorized"}}))
    assert isinstance(key, Unauthorized) and key.status == 401
    assert isinstance(error_from_response(httpx.Response(403, json={"error": "no"})), Forbidden)
    plain = error_from_response(httpx.Response(502, text="bad gateway"))
    assert type(plain) is FusionServeError and plain.message == "bad gateway"


def test_v2_tensors_round_trip_every_datatype() -> None:
    inputs = {
        dtype: np.arange(6).reshape(2, 3).astype(dtype)
        for dtype in ("float16", "float32", "float64", "int8", "int32", "int64", "uint8")
    }
    inputs["bool"] = np.array([[True, False]])
    body = v2_body(inputs, outputs=["y"])
    assert body["outputs"] == [{"name": "y"}]
    wire = encode_json(body)  # what the server receives
    echoed = {"outputs": orjson.loads(wire)["inputs"]}
    back = v2_outputs(echoed)
    for name, array in inputs.items():
        assert back[name].dtype == array.dtype and np.array_equal(back[name], array)
    assert [t["datatype"] for t in body["inputs"]][:2] == ["FP16", "FP32"]
    with pytest.raises(TypeError, match="no KServe V2 datatype"):
        v2_body({"c": np.array([1j])})


def test_connection_failures_are_retried_then_raised() -> None:
    hook = Counter()
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, max_retries=2, backoff=0.01, event_hooks={"request": [hook]}) as fs:
        with pytest.raises(ConnectionFailed) as info:
            fs.health()
        assert info.value.attempts == 3 and hook.n == 3
        with pytest.raises(ConnectionFailed):  # never sent, so a POST may retry too
            fs.submit(MODEL, inputs={"x": X})
        assert hook.n == 6


# -- against a real stack -----------------------------------------------------------------


def test_sync_client_submits_polls_and_describes(scale_url: str) -> None:
    with Client(scale_url, timeout=10) as fs:
        assert fs.health() == {"status": "ok"} and fs.ready()
        [listed] = fs.models()
        assert (listed.name, listed.ready, listed.workers) == (MODEL, True, 1)
        described = fs.model(MODEL)
        assert described.inputs == [TensorSpec("x", "FP32", [-1, 4])]
        assert described.config["batching"]["max_batch_size"] == 32

        job_id = fs.submit(MODEL, inputs={"x": X}, priority=1, timeout_ms=10_000)
        result = fs.result(job_id, wait=10)
        assert result.done and result.ok and result.status == "done" and result.error is None
        assert result.job_id == job_id and result.model == MODEL and result.version == "1"
        np.testing.assert_allclose(result.outputs["y"], 2 * X)
        assert result.timings is not None and result.timings.batch_size >= 1
        assert result.timings.worker and result.labels == [] and result.top_label is None
        events = httpx.get(f"{scale_url}/v1/jobs/{job_id}/events", timeout=10)  # not generation
        assert events.status_code == 400 and events.json()["error"]["code"] == "not_generative"

        nested = fs.submit(MODEL, inputs={"x": [[0.5, 1.0, 1.5, 2.0]]})  # batch dim of 1, lists
        np.testing.assert_allclose(fs.wait(nested, timeout=10).outputs["y"], [1.0, 2.0, 3.0, 4.0])

        ids = fs.submit_many(
            MODEL, [{"inputs": {"x": np.full(4, i, np.float32)}} for i in range(3)]
        )
        assert len(ids) == 3 and len(set(ids)) == 3
        for i, item_id in enumerate(ids):
            np.testing.assert_allclose(fs.wait(item_id, timeout=10).outputs["y"], [2.0 * i] * 4)


def test_each_error_family_from_a_real_bad_request(scale_url: str) -> None:
    hook = Counter()
    with Client(scale_url, backoff=0.01, event_hooks={"response": [hook]}) as fs:
        with pytest.raises(NotFound) as unknown_model:
            fs.submit("nosuch", inputs={"x": X})
        assert unknown_model.value.status == 404 and unknown_model.value.code == "model_not_found"
        with pytest.raises(NotFound) as unknown_job:
            fs.result(f"{MODEL}.1-0-2.0")
        assert unknown_job.value.code == "job_not_found"
        with pytest.raises(InvalidInput) as bad_shape:
            fs.submit(MODEL, inputs={"x": [1.0, 2.0, 3.0]})
        assert bad_shape.value.status == 422 and "'x' has shape [3]" in bad_shape.value.message
        with pytest.raises(PayloadTooLarge) as too_many:
            fs.submit_many(MODEL, [{"inputs": {"x": X}}] * 5)
        assert too_many.value.code == "too_many_items" and "limit of 4" in too_many.value.message
        job_id = fs.submit(MODEL, inputs={"x": X})
        with pytest.raises(BadRequest, match="wait must be"):
            fs.result(job_id, wait=1e9)
        assert hook.n == 6  # one try each: none of these is worth retrying
        assert all(isinstance(e.value, FusionServeError) for e in (unknown_model, too_many))


def test_wait_gives_up_with_the_last_state_expired_jobs_say_why_and_cancel_stops_queued_ones(
    stack_factory, tmp_path: Path
) -> None:
    scale_model(tmp_path / "repo", MODEL)
    stack = stack_factory(tmp_path / "repo")
    stack.start_api()
    worker = stack.start_worker()
    stack.wait_ready(MODEL, 1)
    assert stack.stop_worker(worker) == 0
    with Client(stack.url) as fs:
        queued = fs.submit(MODEL, inputs={"x": X})
        doomed = fs.submit(MODEL, inputs={"x": X}, timeout_ms=1)  # deadline passes unbatched
        with pytest.raises(WaitTimeout) as info:
            fs.wait(queued, timeout=0.3, poll=0.1)
        assert info.value.last.status == "queued" and not info.value.last.done
        dropped = fs.submit(MODEL, inputs={"x": X})
        cancelled = fs.cancel(dropped)
        assert (cancelled.job_id, cancelled.status, cancelled.done) == (dropped, "cancelled", True)
        assert fs.cancel(dropped).status == "cancelled"  # asking again is harmless
        stack.start_worker()
        assert fs.wait(queued, timeout=30).ok
        with pytest.raises(NotCancellable) as late:
            fs.cancel(queued)  # it ran
        assert (late.value.status, late.value.code) == (409, "not_cancellable")
        with pytest.raises(NotFound):
            fs.cancel(f"{MODEL}.0-0-1.0")
        assert fs.result(dropped).status == "cancelled" and fs.result(dropped).outputs == {}
        expired = fs.wait(doomed, timeout=30)
        assert (expired.status, expired.done, expired.ok) == ("expired", True, False)
        assert expired.error is not None and expired.error.code == "expired"
        assert expired.outputs == {}


def test_queue_full_is_retried_then_raised_and_clears_once_a_worker_runs(
    stack_factory, tmp_path: Path
) -> None:
    scale_model(tmp_path / "repo", "tiny", max_queue_size=1)
    stack = stack_factory(tmp_path / "repo")
    stack.start_api()
    worker = stack.start_worker()
    stack.wait_ready("tiny", 1)  # it publishes the model, then leaves: nothing drains the queue
    assert stack.stop_worker(worker) == 0

    hook = Counter()
    quick = {"backoff": 0.05, "backoff_max": 0.1}
    with Client(stack.url, max_retries=2, event_hooks={"response": [hook]}, **quick) as fs:
        first = fs.submit("tiny", inputs={"x": X})  # the one entry the queue holds
        hook.n = 0
        with pytest.raises(QueueFull) as info:
            fs.submit("tiny", inputs={"x": X})
        assert (info.value.status, info.value.code) == (429, "queue_full")
        assert info.value.attempts == 3 and hook.n == 3

    async def async_refused() -> int:
        ahook = AsyncCounter()
        async with AsyncClient(
            stack.url, max_retries=1, event_hooks={"response": [ahook]}, **quick
        ) as afs:
            with pytest.raises(QueueFull) as ainfo:
                await afs.submit("tiny", inputs={"x": X})
            assert ainfo.value.attempts == 2
        return ahook.n

    assert asyncio.run(async_refused()) == 2

    stack.start_worker("tiny")  # drains the queue; the retrying submit gets in
    with Client(stack.url, max_retries=60, backoff=0.05, backoff_max=0.5) as fs:
        second = fs.submit("tiny", inputs={"x": 3 * X})
        assert fs.wait(first, timeout=30).ok
        np.testing.assert_allclose(fs.wait(second, timeout=30).outputs["y"], 6 * X)


def test_unavailable_is_retried_honouring_retry_after(stack_factory, tmp_path: Path) -> None:
    scale_model(tmp_path / "repo", MODEL)
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # the API answers; its Redis does not
    stack = stack_factory(tmp_path / "repo", REDIS_URL=dead_redis)
    stack.start_api()
    hook = Counter()
    with Client(stack.url, max_retries=1, event_hooks={"response": [hook]}) as fs:
        assert fs.health() == {"status": "ok"}
        assert fs.ready() is False  # a 503 from /readyz is an answer, not an error
        hook.n = 0
        with pytest.raises(Unavailable) as info:
            fs.models()
        assert info.value.status == 503 and info.value.retry_after == 1.0
        assert info.value.attempts == 2 and hook.n == 2


def test_async_client_equivalents(scale_url: str) -> None:
    async def main() -> None:
        async with AsyncClient(scale_url, timeout=10) as fs:
            assert await fs.health() == {"status": "ok"} and await fs.ready()
            assert [m.name for m in await fs.models()] == [MODEL]
            assert (await fs.model(MODEL)).inputs[0].shape == [-1, 4]
            job_id = await fs.submit(MODEL, inputs={"x": X})
            result = await fs.result(job_id, wait=10)
            assert result.ok
            np.testing.assert_allclose(result.outputs["y"], 2 * X)
            ids = await fs.submit_many(MODEL, [{"inputs": {"x": X}}, {"inputs": {"x": -X}}])
            done = await asyncio.gather(*(fs.wait(i, timeout=10) for i in ids))
            np.testing.assert_allclose(done[1].outputs["y"], -2 * X)
            # many concurrent requests over the one pool
            many = [fs.submit(MODEL, inputs={"x": X * i}) for i in range(20)]
            waits = [fs.wait(j, timeout=20) for j in await asyncio.gather(*many)]
            assert all(r.ok for r in await asyncio.gather(*waits))
            with pytest.raises(NotCancellable):
                await fs.cancel(job_id)  # done
            with pytest.raises(NotFound):
                await fs.submit("nosuch", inputs={"x": X})
            with pytest.raises(InvalidInput):
                await fs.submit(MODEL, inputs={"x": [[1.0, 2.0]]})
            with pytest.raises(PayloadTooLarge):
                await fs.submit_many(MODEL, [{"inputs": {"x": X}}] * 5)

    asyncio.run(main())


def test_v2_infer_when_the_server_has_it(scale_url: str) -> None:
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    with Client(scale_url, timeout=10) as fs:
        try:
            outputs = fs.infer(MODEL, {"x": rows}, outputs=["y"])
        except NotFound as exc:
            if isinstance(exc.body, dict) and isinstance(exc.body.get("error"), dict):
                pytest.skip("the server has no /v2 route yet (404 on POST /v2/models/<m>/infer)")
            raise
    assert set(outputs) == {"y"}
    assert outputs["y"].dtype == np.float32 and outputs["y"].shape == (3, 4)
    np.testing.assert_allclose(outputs["y"], 2 * rows)
