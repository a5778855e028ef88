"""The SDK's generation calls against a real server: API and worker processes, Valkey.

The tiny random-weight encoder-decoder (tests/generation_models.py) writes the text;
what the SDK returns is compared with the same request made over plain HTTP. A dropped
connection is a real one: the socket under the streamed response is shut down, as a
network failure would, while the worker is held still (SIGSTOP) mid-sequence so the
stream cannot have ended before it. The SSE parser and the resumption's bookkeeping
are also tested alone, on the lines and the exceptions httpx gives.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from generation_models import random_inputs, tiny_generator
from onnx_models import scale_model

from fusionserve.client import (
    AsyncClient,
    BadRequest,
    Client,
    ConnectionFailed,
    Generation,
    GenerationEvent,
    GenerationFailed,
    InvalidInput,
    NotFound,
    text_of,
)
from fusionserve.client._generate import Follower, ServerEvent, SSEParser
from fusionserve.client._retry import RetryPolicy

MODEL = "tiny_gen"
CLASSIFIER = "scale"
CAP = 24
SAMPLED = {"temperature": 0.9, "top_k": 8, "seed": 77}


def named(seed: int) -> dict:
    inputs = random_inputs(np.random.default_rng(seed), text_length=4)
    return {name: array.tolist() for name, array in inputs.items()}


# -- pure parts: no server ---------------------------------------------------------------


def parse(lines: list[str]) -> list[ServerEvent]:
    parser = SSEParser()
    return [e for e in map(parser.feed, lines) if e is not None]


def test_sse_parser_follows_the_whatwg_rules() -> None:
    lines = [
        ": keep-alive",
        "",
        "id: 1-0",
        "event: token",
        'data: {"a":',
        "data:1}",
        "retry: 5",
        "",
        "",  # a blank line without data dispatches nothing
        "data: no type, no id of its own",
        "",
        "id",  # a field without a colon: an empty id
        "event:done",
        "data",
        "",
    ]
    assert parse(lines) == [
        ServerEvent("token", '{"a":\n1}', "1-0"),
        ServerEvent("message", "no type, no id of its own", "1-0"),  # the last id carries
        ServerEvent("done", "", ""),
    ]
    assert parse(["data: half an event"]) == []  # nothing until its blank line


def stream_lines(*events: tuple[str, str, str]) -> list[str]:
    return [x for i, e, d in events for x in (f"id: {i}", f"event: {e}", f"data: {d}", "")]


def test_events_are_typed_and_text_of_drops_pieces_before_a_restart() -> None:
    follow = Follower(MODEL, {}, RetryPolicy())
    follow.job_id = "tiny_gen.1-0.0"
    lines = stream_lines(
        ("1-0", "token", '{"index":0,"id":7,"text":"a"}'),
        ("2-0", "restart", '{"reason":"the worker running it was lost"}'),
        ("3-0", "token", '{"index":0,"id":7,"text":"the"}'),
        ("4-0", "token", '{"index":1,"id":9,"text":" red"}'),
        ("5-0", "future", "{}"),  # an event this client does not know is skipped
        (
            "6-0",
            "done",
            '{"status":"done","text":"the red","tokens":[7,9],"finish_reason":"stop",'
            '"timings":{"time_to_first_token_ms":1.5,"tokens_per_s":80},"version":"1",'
            '"job_id":"tiny_gen.1-0.0"}',
        ),
    )
    events = [e for e in map(follow.feed, lines) if e is not None]
    assert [e.kind for e in events] == ["token", "restart", "token", "token", "done"]
    assert events[0] == GenerationEvent("token", "1-0", "tiny_gen.1-0.0", "a", 0, 7)
    done = events[-1].generation
    assert done is not None and done.ok and done.model == MODEL
    assert (done.text, done.tokens, done.finish_reason) == ("the red", [7, 9], "stop")
    assert done.timings is not None and done.timings.time_to_first_token_ms == 1.5
    assert follow.finished and follow.last_id == "6-0"
    assert text_of(events) == text_of(events[:-1]) == "the red"


def test_an_error_event_raises_generation_failed_with_its_code() -> None:
    follow = Follower(MODEL, {}, RetryPolicy())
    lines = stream_lines(
        ("1-0", "error", '{"code":"model_error","message":"bad ids","job_id":"tiny_gen.1-0.0"}')
    )
    with pytest.raises(GenerationFailed) as caught:
        for line in lines:
            follow.feed(line)
    assert (caught.value.code, caught.value.message) == ("model_error", "bad ids")
    assert caught.value.job_id == "tiny_gen.1-0.0" and caught.value.status is None


def test_a_drop_resumes_the_known_job_and_never_submits_twice() -> None:
    retry = RetryPolicy(max_retries=2, backoff=0.01, backoff_max=0.01)
    follow = Follower(MODEL, {"inputs": {}}, retry)
    assert follow.open().method == "POST"
    # A submission that broke after it was sent may have been queued: not sent again.
    with pytest.raises(ConnectionFailed):
        follow.dropped(httpx.ReadError("reset"))
    # One that was never sent is.
    follow = Follower(MODEL, {"inputs": {}}, retry)
    assert follow.dropped(httpx.ConnectError("refused")) > 0
    follow.job_id = "tiny_gen.1-0.0"  # the answer named its job: resumptions are GETs
    follow.open()
    for line in stream_lines(("1-0", "token", '{"index":0,"id":7,"text":"a"}')):
        follow.feed(line)
    follow.dropped(httpx.ReadError("reset"))  # after an event: a fresh budget
    resume = follow.open()
    assert (resume.method, resume.path) == ("GET", "/v1/jobs/tiny_gen.1-0.0/events")
    assert resume.headers == {"Accept": "text/event-stream", "Last-Event-ID": "1-0"}
    assert resume.idempotent
    # max_retries drops in a row without a new event, then it gives up.
    follow.dropped()  # the stream ended before its last event
    follow.open()
    with pytest.raises(ConnectionFailed) as caught:
        follow.dropped(httpx.ReadError("reset"))
    assert caught.value.attempts == 3


# -- through the server --------------------------------------------------------------------


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    tiny_generator(root, MODEL, max_new_tokens=CAP, max_active=4, eos_slope=0.2)
    scale_model(root, CLASSIFIER)
    return root


@pytest.fixture(scope="module")
def stack(module_stack_factory, repository: Path):
    stack = module_stack_factory(repository)
    stack.start_api()
    stack.start_worker(MODEL, CLASSIFIER)
    stack.wait_ready(MODEL, 1)
    stack.wait_ready(CLASSIFIER, 1)
    return stack


def over_http(url: str, body: dict) -> dict:
    """The same request through plain HTTP: the job's final body."""
    with httpx.Client(base_url=url, timeout=30) as http:
        submitted = http.post(f"/v1/models/{MODEL}/generate", json=body)
        assert submitted.status_code == 202, submitted.text
        job = http.get(f"/v1/jobs/{submitted.json()['job_id']}", params={"wait": 20}).json()
    assert job["status"] == "done", job
    return job


def same(generation: Generation, job: dict) -> None:
    assert generation.ok and generation.done and generation.model == MODEL
    assert generation.text == job["text"]
    assert generation.tokens == job["tokens"]
    assert generation.finish_reason == job["finish_reason"]
    assert generation.version == job["version"]


def test_generate_returns_what_the_v1_job_gives(stack) -> None:
    with Client(stack.url) as fs:
        greedy = fs.generate(MODEL, inputs=named(1))
        sampled = fs.generate(MODEL, inputs=named(2), **SAMPLED)
        short = fs.generate(MODEL, inputs=named(2), max_new_tokens=2, **SAMPLED)
    same(greedy, over_http(stack.url, {"inputs": named(1)}))
    same(sampled, over_http(stack.url, {"inputs": named(2), **SAMPLED}))
    assert greedy.job_id.startswith(f"{MODEL}.") and greedy.job_id != sampled.job_id
    timings = sampled.timings
    assert timings is not None and timings.time_to_first_token_ms is not None
    assert timings.generate_ms is not None and timings.worker
    assert len(short.tokens) <= 2 and sampled.text.startswith(short.text)


def test_async_generate_returns_what_the_v1_job_gives(stack) -> None:
    async def main() -> list[Generation]:
        async with AsyncClient(stack.url) as fs:
            return await asyncio.gather(
                fs.generate(MODEL, inputs=named(1)), fs.generate(MODEL, inputs=named(2), **SAMPLED)
            )

    greedy, sampled = asyncio.run(main())
    same(greedy, over_http(stack.url, {"inputs": named(1)}))
    same(sampled, over_http(stack.url, {"inputs": named(2), **SAMPLED}))


@contextmanager
def held(stack) -> Iterator[None]:
    """The worker stopped (SIGSTOP) meanwhile: a running sequence stays mid-way."""
    pid = stack.workers[0].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def status(url: str, job_id: str) -> str:
    return httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()["status"]


def check_stream(events: list[GenerationEvent], job: dict) -> None:
    """Each token once, in order, then ``done``: pieces that join to the job's text."""
    assert [e.kind for e in events] == ["token"] * len(job["tokens"]) + ["done"]
    tokens = events[:-1]
    assert [e.index for e in tokens] == list(range(len(tokens)))
    assert [e.token_id for e in tokens] == job["tokens"]
    done = events[-1].generation
    assert done is not None
    same(done, job)
    assert "".join(e.text for e in tokens) == done.text == text_of(events)
    assert {e.job_id for e in events} == {done.job_id}
    assert len({e.id for e in events}) == len(events)


def test_stream_yields_tokens_as_they_come_then_the_whole_generation(stack) -> None:
    events: list[GenerationEvent] = []
    with Client(stack.url) as fs:
        for event in fs.stream(MODEL, inputs=named(3), max_new_tokens=CAP):
            if not events:  # the first token is here, the sequence is not over
                with held(stack):
                    assert status(stack.url, event.job_id) == "running"
            events.append(event)
    check_stream(events, over_http(stack.url, {"inputs": named(3), "max_new_tokens": CAP}))


def cut(response: httpx.Response) -> None:
    """Drop the connection under a streamed response, as a network failure would."""
    sock = response.extensions["network_stream"].get_extra_info("socket")
    sock.shutdown(socket.SHUT_RDWR)


class Wire:
    """httpx hooks: the stream requests sent, each with how many events had been read by
    then, and the responses (to cut one)."""

    def __init__(self) -> None:
        self.events: list[GenerationEvent] = []
        self.sent: list[tuple[httpx.Request, int]] = []
        self.answered: list[httpx.Response] = []

    def request(self, request: httpx.Request) -> None:
        if request.url.path.endswith(("/generate", "/events")):
            self.sent.append((request, len(self.events)))

    def read(self, event: GenerationEvent, stack) -> None:
        """Keep ``event``; after the second, drop the connection mid-sequence."""
        self.events.append(event)
        if len(self.events) == 2:
            with held(stack):  # the stream cannot end while the connection drops
                assert status(stack.url, event.job_id) == "running"
                cut(self.answered[-1])

    def check_resumed(self) -> None:
        """Submitted once, resumed once, after the last event read (those that were already
        on their way when the connection dropped are read too)."""
        (post, _), (get, read) = self.sent
        assert (post.method, get.method) == ("POST", "GET")
        assert get.url.path == f"/v1/jobs/{self.events[0].job_id}/events"
        assert read >= 2 and get.headers["Last-Event-ID"] == self.events[read - 1].id


def test_a_dropped_stream_resumes_after_the_last_event_read(stack) -> None:
    wire = Wire()
    hooks = {"request": [wire.request], "response": [wire.answered.append]}
    with Client(stack.url, event_hooks=hooks) as fs:
        for event in fs.stream(MODEL, inputs=named(4), max_new_tokens=CAP, **SAMPLED):
            wire.read(event, stack)
    body = {"inputs": named(4), "max_new_tokens": CAP, **SAMPLED}
    check_stream(wire.events, over_http(stack.url, body))
    wire.check_resumed()


def test_an_async_dropped_stream_resumes_after_the_last_event_read(stack) -> None:
    wire = Wire()

    async def on_request(request: httpx.Request) -> None:
        wire.request(request)

    async def on_response(response: httpx.Response) -> None:
        wire.answered.append(response)

    async def main() -> None:
        hooks = {"request": [on_request], "response": [on_response]}
        async with AsyncClient(stack.url, event_hooks=hooks) as fs:
            async for event in fs.stream(MODEL, inputs=named(5), max_new_tokens=CAP):
                wire.read(event, stack)

    asyncio.run(main())
    check_stream(wire.events, over_http(stack.url, {"inputs": named(5), "max_new_tokens": CAP}))
    wire.check_resumed()


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_new_tokens": CAP + 1}, "max_new_tokens"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_a_parameter_the_server_refuses_raises_invalid_input(stack, options, says) -> None:
    with Client(stack.url) as fs:
        with pytest.raises(InvalidInput, match=says):
            fs.generate(MODEL, inputs=named(6), **options)
        with pytest.raises(InvalidInput, match=says):
            next(fs.stream(MODEL, inputs=named(6), **options))

    async def main() -> None:
        async with AsyncClient(stack.url) as fs:
            with pytest.raises(InvalidInput, match=says):
                await fs.generate(MODEL, inputs=named(6), **options)
            with pytest.raises(InvalidInput, match=says):
                await anext(fs.stream(MODEL, inputs=named(6), **options))

    asyncio.run(main())


def test_a_classifier_or_an_unknown_model_refuses_to_generate(stack) -> None:
    x = {"x": [[1.0, 2.0, 3.0, 4.0]]}
    with Client(stack.url) as fs:
        with pytest.raises(BadRequest) as refused:
            fs.generate(CLASSIFIER, inputs=x)
        assert refused.value.code == "not_generative"
        with pytest.raises(BadRequest) as refused:
            next(fs.stream(CLASSIFIER, inputs=x))
        assert refused.value.code == "not_generative"
        with pytest.raises(NotFound):
            fs.generate("no_such_model", text="hello")


def test_a_request_the_model_fails_raises_generation_failed(stack) -> None:
    """A question longer than the encoder's positions passes the API's checks (the ids,
    the shapes are right); the encoder refuses it."""
    inputs = named(7)
    inputs["input_ids"][0] *= 20
    inputs["attention_mask"][0] *= 20
    with Client(stack.url) as fs:
        with pytest.raises(GenerationFailed) as streamed:
            list(fs.stream(MODEL, inputs=inputs))
        with pytest.raises(GenerationFailed) as polled:
            fs.generate(MODEL, inputs=inputs)
    for caught in (streamed, polled):
        assert caught.value.code == "model_error" and caught.value.job_id
    assert streamed.value.message == polled.value.message
