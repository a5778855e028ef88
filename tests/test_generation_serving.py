"""Generation through the whole server: HTTP, the Redis queue, real worker processes.

The tiny random-weight encoder-decoder (tests/generation_models.py) is served; what a
request gets through the server is compared with the engine run in-process on the
same inputs (greedy and seeded sampling are deterministic). Streams are read with a
real HTTP client as Server-Sent Events. A worker is held still with SIGSTOP where a
test needs the request to be mid-generation, instead of racing it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from generation_models import random_inputs, tiny_generator
from helpers import b64, wait_until

from fusionserve.zoo.data import png_bytes
from worker.generation import Request
from worker.generation.runtime import GenerationRuntime
from worker.repository import load_model_files

MODEL = "tiny_gen"
OWN = "tiny_gen_own"
"""The same weights (same seed) under another name, for the test that kills its worker."""
CAP = 24


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    tiny_generator(root, MODEL, max_new_tokens=CAP, max_active=4, eos_slope=0.2)
    return root


@pytest.fixture(scope="module")
def reference(repository: Path) -> GenerationRuntime:
    return GenerationRuntime(load_model_files(repository / MODEL))


def serve(factory, repository: Path, model: str = MODEL, **env: str):
    stack = factory(repository, FUSIONSERVE_VISIBILITY_TIMEOUT_S="3", **env)
    stack.start_api()
    stack.start_worker(model)
    stack.wait_ready(model, 1)
    return stack


@pytest.fixture(scope="module")
def stack(module_stack_factory, repository: Path, tmp_path_factory):
    """Shared by the module's tests (with a bulk worker for batches); a test that kills a
    worker builds its own."""
    stack = serve(
        module_stack_factory,
        repository,
        FUSIONSERVE_DATA_DIR=str(tmp_path_factory.mktemp("data")),
        FUSIONSERVE_SWEEP_INTERVAL_S="0.2",
    )
    stack.start_bulk_worker()
    return stack


@pytest.fixture
def own_stack(module_stack_factory, tmp_path: Path, request):
    """A stack of its own, over a copy of the model under another name (the shared stack's
    worker must not take its requests), on the same Redis (never flushed under the other).
    ``@pytest.mark.env(NAME="value")`` sets its environment."""
    tiny_generator(tmp_path, OWN, max_new_tokens=CAP, max_active=4, eos_slope=0.2)
    marker = request.node.get_closest_marker("env")
    return serve(module_stack_factory, tmp_path, OWN, **(marker.kwargs if marker else {}))


def request_inputs(seed: int) -> dict[str, np.ndarray]:
    return random_inputs(np.random.default_rng(seed), text_length=4)


def named(inputs: dict[str, np.ndarray]) -> dict:
    return {name: array.tolist() for name, array in inputs.items()}


def alone(runtime: GenerationRuntime, inputs: dict, **options) -> tuple[list[int], str, str]:
    """(tokens, text, finish reason) of one request in an engine of its own."""
    engine = runtime.engine
    engine.admit([Request(key="alone", inputs=inputs, **options)])
    ids, pieces = [], []
    while engine.active:
        for event in engine.step():
            ids.append(event.token_id)
            pieces.append(event.piece)
            reason = event.finish_reason
    return ids, "".join(pieces), reason


def sse(response: httpx.Response) -> Iterator[tuple[str, str, dict]]:
    """(id, event, data) of each Server-Sent Event; comments are skipped."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if "event" in fields:
                yield fields.get("id", ""), fields["event"], orjson.loads(fields["data"])
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def test_a_generation_job_writes_what_the_engine_writes_alone(stack, reference) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        for seed, options in ((1, {}), (2, {"temperature": 0.9, "top_k": 8, "seed": 77})):
            inputs = request_inputs(seed)
            submitted = http.post(
                f"/v1/models/{MODEL}/generate", json={"inputs": named(inputs), **options}
            )
            assert submitted.status_code == 202, submitted.text
            job = submitted.json()["job_id"]
            body = http.get(f"/v1/jobs/{job}", params={"wait": 20}).json()
            assert body["status"] == "done", body
            ids, text, reason = alone(reference, inputs, **options)
            assert body["tokens"] == ids
            assert body["text"] == text
            assert body["finish_reason"] == reason
            assert body["timings"]["time_to_first_token_ms"] >= 0


def test_tokens_stream_before_the_sequence_ends_and_add_up_to_its_text(stack, reference) -> None:
    worker = stack.workers[0]
    inputs = request_inputs(3)
    ids, text, _ = alone(reference, inputs, max_new_tokens=CAP)
    assert len(ids) > 2  # long enough to be caught mid-way
    events = []
    with (
        httpx.Client(base_url=stack.url, timeout=30) as http,
        http.stream(
            "POST", f"/v1/models/{MODEL}/generate", json={"inputs": named(inputs), "stream": True}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        job = response.headers["X-Job-Id"]
        for event in sse(response):
            if not events:  # the first token is here: hold the worker and look at the job
                assert event[1] == "token"
                os.kill(worker.pid, signal.SIGSTOP)
                try:
                    assert http.get(f"/v1/jobs/{job}").json()["status"] == "running"
                finally:
                    os.kill(worker.pid, signal.SIGCONT)
            events.append(event)
    kinds = [e[1] for e in events]
    assert kinds == ["token"] * len(ids) + ["done"], kinds
    done = events[-1][2]
    assert "".join(e[2]["text"] for e in events[:-1]) == done["text"] == text
    assert [e[2]["id"] for e in events[:-1]] == ids
    assert done["status"] == "done" and done["job_id"] == job


def test_a_cancel_mid_stream_stops_the_sequence_and_frees_its_slot(stack) -> None:
    worker = stack.workers[0]
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        submitted = http.post(
            f"/v1/models/{MODEL}/generate",
            json={"inputs": named(request_inputs(4)), "max_new_tokens": CAP},
        ).json()
        job = submitted["job_id"]
        with http.stream("GET", f"/v1/jobs/{job}/events") as response:
            stream = sse(response)
            first = next(stream)
            assert first[1] == "token"
            os.kill(worker.pid, signal.SIGSTOP)  # mid-sequence, for sure
            try:
                cancel = http.delete(f"/v1/jobs/{job}")
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            rest = list(stream)
        if cancel.status_code == 200:  # it had finished before the worker was held
            pytest.skip("the sequence ended before the cancel")
        assert cancel.status_code == 202, cancel.text
        assert rest[-1][1] == "done"
        assert rest[-1][2]["status"] == "cancelled"
        assert rest[-1][2]["finish_reason"] == "cancelled"
        body = http.get(f"/v1/jobs/{job}").json()
        assert body["status"] == "cancelled" and body["finish_reason"] == "cancelled"
        assert len(body["tokens"]) < CAP
        assert "".join(e[2]["text"] for e in [first, *rest[:-1]]) == body["text"]
        # The slot is free: four more requests (max_active = 4) all finish.
        jobs = [
            http.post(
                f"/v1/models/{MODEL}/generate", json={"inputs": named(request_inputs(10 + i))}
            ).json()["job_id"]
            for i in range(4)
        ]
        for j in jobs:
            assert http.get(f"/v1/jobs/{j}", params={"wait": 20}).json()["status"] == "done"


def test_a_killed_workers_request_finishes_on_another_with_a_restart_event(
    own_stack, reference
) -> None:
    stack = own_stack
    first = stack.workers[0]
    inputs = request_inputs(5)
    _, text, _ = alone(reference, inputs, max_new_tokens=CAP)
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        job = http.post(
            f"/v1/models/{OWN}/generate",
            json={"inputs": named(inputs), "max_new_tokens": CAP},
        ).json()["job_id"]
        with http.stream("GET", f"/v1/jobs/{job}/events") as response:
            events = []
            for event in sse(response):
                events.append(event)
                if len(events) == 1:
                    assert event[1] == "token"
                    os.kill(first.pid, signal.SIGKILL)  # mid-sequence: its tokens are half out
                    first.wait(10)
                    stack.start_worker(OWN)
    kinds = [e[1] for e in events]
    assert "restart" in kinds, kinds
    after = events[kinds.index("restart") + 1 :]
    assert after[-1][1] == "done"
    assert "".join(e[2]["text"] for e in after[:-1]) == after[-1][2]["text"] == text
    assert httpx.get(f"{stack.url}/v1/jobs/{job}").json()["text"] == text


def test_resuming_after_last_event_id_gives_the_rest(stack, module_redis) -> None:
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        job = http.post(
            f"/v1/models/{MODEL}/generate", json={"inputs": named(request_inputs(6))}
        ).json()["job_id"]
        http.get(f"/v1/jobs/{job}", params={"wait": 20})
        with http.stream("GET", f"/v1/jobs/{job}/events") as response:
            everything = list(sse(response))
        assert len(everything) >= 2
        entry = job.split(".")[1]
        assert 0 < module_redis.ttl(f"fs:{{{MODEL}}}:tokens:{entry}") <= 3600  # it expires
        with http.stream(
            "GET", f"/v1/jobs/{job}/events", headers={"Last-Event-ID": everything[0][0]}
        ) as response:
            rest = list(sse(response))
        assert rest == everything[1:]
        bad = http.get(f"/v1/jobs/{job}/events", headers={"Last-Event-ID": "yesterday"})
        assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["error"]["message"]
        # After the last event: nothing more, at once (not a wait for the deadline).
        last = {"Last-Event-ID": everything[-1][0]}
        with http.stream("GET", f"/v1/jobs/{job}/events", headers=last, timeout=3) as response:
            assert response.status_code == 200 and list(sse(response)) == []


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"inputs": {}, "max_new_tokens": CAP + 1}, 422, "max_new_tokens"),
        ({"inputs": {}, "temperature": -1}, 422, "temperature"),
        ({"inputs": {}, "top_p": 0}, 422, "top_p"),
        ({"inputs": {}, "stop": [""]}, 422, "stop"),
        ({"inputs": {}, "beam_width": 4}, 422, "beam_width"),
        ({"inputs": {}, "stream": "yes"}, 422, "stream"),
    ],
)
def test_bad_generation_requests_are_refused_before_anything_is_queued(
    stack, module_redis, body: dict, status: int, says: str
) -> None:
    body = {**body, "inputs": named(request_inputs(7))}
    jobs = f"fs:{{{MODEL}}}:job:*"
    before = len(module_redis.keys(jobs))
    response = httpx.post(f"{stack.url}/v1/models/{MODEL}/generate", json=body, timeout=30)
    assert response.status_code == status, response.text
    assert says in response.text
    assert len(module_redis.keys(jobs)) == before


def test_infer_on_a_generator_and_generate_on_a_classifier_say_which_to_use(stack) -> None:
    response = httpx.post(
        f"{stack.url}/v1/models/{MODEL}/infer", json={"inputs": named(request_inputs(8))}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "generative_model"
    assert f"/v1/models/{MODEL}/generate" in response.json()["error"]["message"]


def test_a_stream_of_an_unknown_job_is_404(stack) -> None:
    response = httpx.get(f"{stack.url}/v1/jobs/{MODEL}.1-0-1.0/events")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def triton_body(seed: int) -> dict:
    """A raw question and picture, as a plain Triton client sends them."""
    rng = np.random.default_rng(seed)
    picture = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return {
        "text_input": "the big red circle on the left",
        "image": b64(png_bytes(picture)),
        "parameters": {"temperature": 0.7, "seed": 5, "max_tokens": 12},
    }


def test_triton_generate_endpoints_answer_a_plain_http_client(stack) -> None:
    body = triton_body(9)
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        answer = http.post(f"/v2/models/{MODEL}/generate", json={**body, "id": "q1"})
        assert answer.status_code == 200, answer.text
        whole = answer.json()
        assert whole["model_name"] == MODEL and whole["id"] == "q1"
        assert whole["model_version"] == "1" and whole["text_output"]
        # The same request through /v1 writes the same text (same seed, same preprocessing).
        v1 = {
            "text": body["text_input"],
            "image": body["image"],
            "temperature": 0.7,
            "seed": 5,
            "max_new_tokens": 12,
        }
        job = http.post(f"/v1/models/{MODEL}/generate", json=v1).json()["job_id"]
        assert (
            http.get(f"/v1/jobs/{job}", params={"wait": 20}).json()["text"] == whole["text_output"]
        )

        with http.stream("POST", f"/v2/models/{MODEL}/generate_stream", json=body) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            chunks = [
                orjson.loads(line.removeprefix("data: "))
                for line in response.iter_lines()
                if line.startswith("data: ")
            ]
        assert all(c["model_name"] == MODEL for c in chunks)
        assert "".join(c["text_output"] for c in chunks) == whole["text_output"]
        assert chunks[-1]["finish_reason"] == whole["finish_reason"]

        refused = http.post(f"/v2/models/{MODEL}/generate", json={**body, "beams": 2})
        assert refused.status_code == 422 and "beams" in refused.json()["error"]
        missing = http.post(f"/v2/models/{MODEL}/generate", json={"parameters": {}})
        assert missing.status_code == 422 and isinstance(missing.json()["error"], str)


def test_bulk_batch_lines_are_generation_requests(stack, reference) -> None:
    options = [{}, {"temperature": 0.8, "seed": 3}, {"max_new_tokens": 5}, {"stop": ["a"]}]
    lines, expected = [], {}
    for i in range(10):
        inputs = request_inputs(100 + i)
        line = {"custom_id": f"g{i}", "inputs": named(inputs), **options[i % len(options)]}
        lines.append(orjson.dumps(line))
        expected[f"g{i}"] = alone(reference, inputs, **options[i % len(options)])
    lines.append(
        orjson.dumps(
            {"custom_id": "over", "inputs": named(request_inputs(1)), "max_new_tokens": CAP + 1}
        )
    )
    lines.append(b'{"custom_id": "bad", "inputs": {}, "top_p": 0}')
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        created = http.post("/v1/batches", params={"model": MODEL}, content=b"\n".join(lines))
        assert created.status_code == 202, created.text
        batch = created.json()["batch_id"]

        def settled() -> bool:
            return http.get(f"/v1/batches/{batch}").json()["status"] in ("completed", "failed")

        wait_until(settled, "the batch never settled", 120)
        rows = [
            orjson.loads(r) for r in http.get(f"/v1/batches/{batch}/results").content.splitlines()
        ]
    by_id = {r["custom_id"]: r for r in rows}
    for custom_id, (ids, text, reason) in expected.items():
        row = by_id[custom_id]
        assert row["status"] == "done", row
        assert (row["tokens"], row["text"], row["finish_reason"]) == (ids, text, reason)
    assert (
        by_id["over"]["status"] == "failed"
        and "max_new_tokens" in by_id["over"]["error"]["message"]
    )
    assert by_id["bad"]["status"] == "failed" and "top_p" in by_id["bad"]["error"]["message"]


@pytest.mark.env(FUSIONSERVE_MAX_STREAMS="1")
def test_past_max_streams_a_stream_is_refused_and_nothing_is_queued(own_stack, module_redis):
    stack, worker = own_stack, own_stack.workers[0]
    body = {"inputs": named(request_inputs(12)), "stream": True, "max_new_tokens": CAP}
    jobs = f"fs:{{{OWN}}}:job:*"
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        os.kill(worker.pid, signal.SIGSTOP)  # the first stream stays open
        try:
            with http.stream("POST", f"/v1/models/{OWN}/generate", json=body) as first:
                assert first.status_code == 200
                before = len(module_redis.keys(jobs))
                second = http.post(f"/v1/models/{OWN}/generate", json=body)
                assert second.status_code == 503, second.text
                assert second.headers["Retry-After"]
                assert second.json()["error"]["code"] == "too_many_streams"
                assert len(module_redis.keys(jobs)) == before
        finally:
            os.kill(worker.pid, signal.SIGCONT)

        # The slot is given back once the server sees the client gone (its next write
        # fails): a client that retries on the 503 is then served, to the end.
        def served() -> bool:
            third = http.post(f"/v1/models/{OWN}/generate", json=body)
            return third.status_code == 200 and b"event: done" in third.content

        wait_until(served, "the stream's slot was never given back", 30)
