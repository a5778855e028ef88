"""Generation: submit a request that writes text, and follow its tokens as they come.

``POST /v1/models/<m>/generate`` queues one request on the model's streams like an
``/infer`` job (a durable record to poll), with its generation parameters in the
entry. With ``"stream": true`` the answer is Server-Sent Events read from the
request's token stream (batching/tokens.py): ``token`` events as the worker writes
them, then ``done`` with the whole result, ``error``, or ``restart`` when the worker
was lost and another runs the request again. ``GET /v1/jobs/<id>/events`` follows
(or resumes, after ``Last-Event-ID``) any generation job. Triton's generate extension
(``/v2/models/<m>/generate`` and ``generate_stream``) runs the same path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
from flask import Blueprint, Response, jsonify, request, stream_with_context
from pydantic import ValidationError

from batching import tokens
from batching.generation import GenerationParameters, OverCap
from batching.inputs import entry_tensors
from batching.items import Item, describe_errors
from batching.registry import PublishedModel
from batching.tokens import FINAL, TokenEvent
from server.auth import owns, tenant
from server.errors import ApiError, invalid, not_found
from server.jobs import JobId, job_ids
from server.jsonio import json_object, read_body
from server.repository import require_serving
from server.schemas import GenerateRequest
from server.services import services

bp = Blueprint("generate", __name__)

STREAM_GRACE_S = 5.0
"""How long past the request's deadline a reader waits for its final event."""


class StreamSlots:
    """At most ``settings.max_streams`` streams per API process: each holds a connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.open = 0

    def take(self, limit: int) -> None:
        with self._lock:
            if self.open >= limit:
                raise ApiError(
                    503,
                    "too_many_streams",
                    f"this server already streams {limit} responses; retry, or poll the job",
                    retry_after=1,
                )
            self.open += 1

    def give_back(self) -> None:
        with self._lock:
            self.open -= 1


SLOTS = StreamSlots()


def generative(name: str, version: str | None = None) -> PublishedModel:
    """The served model ``name`` (and ``version``), which must write text (404 / 400)."""
    from server.v2 import versioned_model

    model = versioned_model(name, version)
    require_serving(model)
    if model.meta.config.generation is None:
        raise ApiError(
            400,
            "not_generative",
            f"model {name!r} does not generate text: POST /v1/models/{name}/infer",
        )
    return model


def refuse_generative(model: PublishedModel) -> None:
    """``infer`` is for models that answer tensors; one that writes text is asked to generate."""
    if model.meta.config.generation is not None:
        raise ApiError(
            400,
            "generative_model",
            f"model {model.name!r} writes text: POST /v1/models/{model.name}/generate "
            f"(or Triton's /v2/models/{model.name}/generate)",
        )


def submit(
    model: PublishedModel,
    item: Item,
    params: GenerationParameters,
    *,
    priority: int | None = None,
    timeout_ms: int | None = None,
    version: int = 0,
) -> tuple[str, int]:
    """Queue one generation request; (entry reference, deadline in unix ms)."""
    svc = services()
    config = model.meta.config.generation
    assert config is not None
    try:
        chosen = params.resolved(config.max_new_tokens)
    except OverCap as exc:
        raise invalid(str(exc)) from None
    batching = model.meta.config.batching
    timeout_ms = min(timeout_ms or batching.default_timeout_ms, batching.default_timeout_ms)
    started_ms = int(time.time() * 1000)
    ref = svc.queue.submit(
        model,
        entry_tensors([item], model),
        1,
        priority=priority,
        timeout_ms=timeout_ms,
        tenant=tenant(),
        version=version,
        generate=orjson.dumps(chosen),
    )
    return ref, started_ms + timeout_ms


@bp.post("/v1/models/<name>/generate")
def generate(name: str):
    model = generative(name)
    try:
        body = GenerateRequest.model_validate(json_object(read_body()))
    except ValidationError as exc:
        raise invalid(describe_errors(exc)) from None
    item = Item(inputs=body.inputs, text=body.text, image=body.image, audio=body.audio)
    if body.stream:
        SLOTS.take(services().settings.max_streams)  # before queueing: a 503 queues nothing
        try:
            ref, deadline_ms = submit(
                model, item, body, priority=body.priority, timeout_ms=body.timeout_ms
            )
        except BaseException:
            SLOTS.give_back()
            raise
        job = job_ids(name, ref, 1)[0]
        response = _event_stream(_sse(name, ref, "0", deadline_ms, job))
        response.headers["X-Job-Id"] = job  # to poll, cancel or resume it
        return response
    ref, _ = submit(model, item, body, priority=body.priority, timeout_ms=body.timeout_ms)
    job = job_ids(name, ref, 1)[0]
    return (
        jsonify(
            {
                "job_id": job,
                "status_url": f"/v1/jobs/{job}",
                "events_url": f"/v1/jobs/{job}/events",
            }
        ),
        202,
    )


@bp.get("/v1/jobs/<job_id>/events")
def job_events(job_id: str):
    """Follow a generation job's events; ``Last-Event-ID`` resumes after the last one seen."""
    svc = services()
    job = JobId.parse(job_id)
    view = svc.queue.read(job.model, job.entry) if job is not None else None
    if job is None or view is None or job.row != 0 or not owns(view.tenant):
        raise not_found("job_not_found", f"no job {job_id!r} (unknown, or its result expired)")
    model = svc.registry.get(job.model)
    if model is None or model.meta.config.generation is None:
        raise ApiError(400, "not_generative", f"job {job_id} is not a generation request")
    after = request.headers.get("Last-Event-ID", "0")
    if not tokens.EVENT_ID.match(after):
        raise invalid(f"Last-Event-ID must be a stream id like 1700000000000-0, got {after!r}")
    if view.result is not None and tokens.last_id(svc.redis, job.model, job.entry) == after:
        return _event_stream(iter(()))  # finished, and the client has seen its last event
    deadline_ms = int(time.time() * 1000) + model.meta.config.batching.default_timeout_ms
    SLOTS.take(svc.settings.max_streams)
    return _event_stream(_sse(job.model, job.entry, after, deadline_ms, job_id))


def _event_stream(events: Iterator[bytes]) -> Response:
    response = Response(stream_with_context(events), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass each event at once
    return response


def follow(model: str, ref: str, after: str, deadline_ms: int) -> Iterator[list[TokenEvent]]:
    """A request's events from ``after`` until its final one, as each read returns them
    (several at a time when the client fell behind: one write for all); ``[]`` after a
    silent wait.

    Ends with a synthetic ``error`` event (code ``timeout``) when nothing final came by
    the request's deadline (plus a grace for the worker to write it). Releases the
    stream slot taken for it, however the iteration ends (a client gone mid-stream).
    """
    svc = services()
    try:
        end = deadline_ms / 1000 + STREAM_GRACE_S
        while time.time() < end:
            found = tokens.read(svc.streams, model, ref, after, block_ms=tokens.READ_BLOCK_MS)
            final = next((i for i, e in enumerate(found) if e.event in FINAL), None)
            if final is not None:
                yield found[: final + 1]
                return
            yield found
            if found:
                after = found[-1].id
        message = "no result by the request's deadline"
        yield [TokenEvent(after, "error", {"code": "timeout", "message": message})]
    finally:
        SLOTS.give_back()


def _sse(model: str, ref: str, after: str, deadline_ms: int, job_id: str) -> Iterator[bytes]:
    for events in follow(model, ref, after, deadline_ms):
        if not events:
            yield b": keep-alive\n\n"
            continue
        chunk = []
        for event in events:
            data: dict[str, Any] = dict(event.data)
            if event.event in FINAL:
                data["job_id"] = job_id
            chunk.append(
                b"id: %s\nevent: %s\ndata: %s\n\n"
                % (event.id.encode(), event.event.encode(), orjson.dumps(data))
            )
        yield b"".join(chunk)


# --- Triton's generate extension ------------------------------------------------------------

TRITON_ALIASES = {"max_tokens": "max_new_tokens", "stop_words": "stop", "random_seed": "seed"}
"""Names Triton's LLM backends use for the same parameters."""
TRITON_INPUTS = {"text_input": "text", "image": "image", "audio": "audio"}


class TritonRequest(GenerationParameters):
    """A generate-extension body, read into the /v1 request: ``text_input`` (and ``image``,
    ``audio``) are the inputs; parameters come in ``parameters`` or beside the inputs."""

    priority: int | None = None
    timeout_ms: int | None = None

    @classmethod
    def read(cls, raw: dict[str, Any]) -> tuple[str | None, Item, TritonRequest]:
        body = dict(raw)
        request_id = body.pop("id", None)
        if request_id is not None and not isinstance(request_id, str):
            raise invalid("'id' must be a string")
        item = {field: body.pop(key) for key, field in TRITON_INPUTS.items() if key in body}
        params = body.pop("parameters", {})
        if not isinstance(params, dict):
            raise invalid("'parameters' must be an object")
        merged = {TRITON_ALIASES.get(k, k): v for k, v in {**body, **params}.items()}
        try:
            return request_id, Item.model_validate(item), cls.model_validate(merged)
        except ValidationError as exc:
            raise invalid(describe_errors(exc)) from None


def _triton(name: str, version: str | None) -> tuple[PublishedModel, str | None, str, int]:
    model = generative(name, version)
    request_id, item, params = TritonRequest.read(json_object(read_body()))
    ref, deadline_ms = submit(
        model,
        item,
        params,
        priority=params.priority,
        timeout_ms=params.timeout_ms,
        version=int(version or 0),
    )
    return model, request_id, ref, deadline_ms


def _triton_body(model: PublishedModel, request_id: str | None, **fields: Any) -> dict:
    body: dict[str, Any] = {"model_name": model.name}
    if request_id is not None:
        body["id"] = request_id
    return {**body, **fields}


@bp.post("/v2/models/<name>/generate")
@bp.post("/v2/models/<name>/versions/<version>/generate")
def triton_generate(name: str, version: str | None = None):
    """One JSON answer once the text is written (Triton's ``/generate``)."""
    svc = services()
    model, request_id, ref, deadline_ms = _triton(name, version)
    wait_s = max(0.0, deadline_ms / 1000 - time.time()) + STREAM_GRACE_S
    view = svc.queue.wait(model.name, ref, wait_s)
    result = (view.result or {}) if view is not None else {}
    generation = result.get("generation")
    if view is None or view.state != "done" or not generation:
        error = result.get("error", {}).get("message") or f"the request ended {view and view.state}"
        raise ApiError(504 if view is None or view.state == "expired" else 500, "failed", error)
    return jsonify(
        _triton_body(
            model,
            request_id,
            model_version=str(result.get("version", "")),
            text_output=generation["text"],
            finish_reason=generation["finish_reason"],
        )
    )


@bp.post("/v2/models/<name>/generate_stream")
@bp.post("/v2/models/<name>/versions/<version>/generate_stream")
def triton_generate_stream(name: str, version: str | None = None):
    """Server-Sent Events, one ``data:`` object per token (Triton's ``/generate_stream``).

    A request run again after its worker was lost writes the same tokens (its seed was
    fixed at submission): the tokens already sent are checked and not sent twice, so a
    Triton client sees one uninterrupted answer. Were they to differ (a version changed
    meanwhile), the stream ends with an error object instead.
    """
    SLOTS.take(services().settings.max_streams)
    try:
        model, request_id, ref, deadline_ms = _triton(name, version)
    except BaseException:
        SLOTS.give_back()
        raise
    version_label = version or ",".join(model.meta.versions[-1:])

    def events() -> Iterator[bytes]:
        sent: list[int] = []
        replay: list[int] | None = None
        for batch in follow(model.name, ref, "0", deadline_ms):
            if not batch:
                yield b": keep-alive\n\n"
                continue
            chunk = []
            for event in batch:
                if event.event == "restart":
                    replay = list(sent)
                    continue
                index = event.data.get("index", -1)
                if event.event == "token" and replay is not None and index < len(replay):
                    if event.data["id"] == replay[index]:
                        continue
                    body = {
                        "error": "the request ran again after its worker was lost and wrote "
                        "different text; send it again"
                    }
                    yield b"".join(chunk) + b"data: %s\n\n" % orjson.dumps(body)
                    return
                if event.event == "token":
                    sent.append(event.data["id"])
                    fields = {"text_output": event.data["text"]}
                elif event.event == "done":
                    fields = {"text_output": "", "finish_reason": event.data["finish_reason"]}
                    if event.data.get("status") != "done":
                        fields = {"error": event.data.get("error", {}).get("message", "failed")}
                else:
                    fields = {"error": event.data.get("message", "failed")}
                body = _triton_body(model, request_id, model_version=version_label, **fields)
                chunk.append(b"data: %s\n\n" % orjson.dumps(body))
            yield b"".join(chunk)

    return _event_stream(events())
