"""The asynchronous ``/v1`` API: submit work, read (or long-poll) jobs, list models."""

from __future__ import annotations

import time

from flask import Blueprint, jsonify, request
from pydantic import ValidationError

from batching import keys
from batching.broker import Replayed
from batching.inputs import entry_tensors
from batching.items import check_count, describe_errors
from batching.registry import PublishedModel
from server.auth import owns, tenant
from server.errors import ApiError, bad_request, invalid, not_found
from server.generate import refuse_generative
from server.idempotency import fingerprint, idempotency_key
from server.jobs import JobId, job_ids, render
from server.jsonio import json_object, read_body
from server.repository import require_serving
from server.schemas import Submission
from server.services import services

bp = Blueprint("v1", __name__, url_prefix="/v1")


def _model(name: str) -> PublishedModel:
    model = services().registry.get(name)
    if model is None:
        raise not_found("model_not_found", f"no model named {name!r} is served")
    return model


@bp.post("/models/<name>/infer")
def submit(name: str):
    svc = services()
    model = _model(name)
    require_serving(model)
    refuse_generative(model)
    body = read_body()
    raw = json_object(body)  # whatever the content type: curl -d sends a form one
    items = raw.get("items")
    if isinstance(items, list):
        check_count(len(items), svc.settings.max_items)
    try:
        submission = Submission.model_validate(raw)
    except ValidationError as exc:
        raise invalid(describe_errors(exc)) from None
    items = submission.all_items()
    key = idempotency_key()
    idempotency = None
    if key is not None:
        remembered = f"{fingerprint(name, body)}\n{len(items)}"
        idempotency = (
            keys.idempotency(name, "infer", f"{tenant()}\n{key}"),  # per tenant
            remembered,
            svc.settings.idempotency_ttl_s,
        )
    tensors = entry_tensors(items, model)
    try:
        entry = svc.queue.submit(
            model,
            tensors,
            len(items),
            priority=submission.priority,
            timeout_ms=submission.timeout_ms,
            idempotency=idempotency,
            tenant=tenant(),
        )
    except Replayed as replay:
        return _replayed(name, replay.remembered, idempotency, submission.items is not None)
    return jsonify(_submitted(name, entry, len(items), submission.items is not None)), 202


def _submitted(model: str, entry: str, rows: int, many: bool) -> dict:
    ids = job_ids(model, entry, rows)
    if many:
        return {"job_ids": ids, "status_urls": [f"/v1/jobs/{i}" for i in ids]}
    return {"job_id": ids[0], "status_url": f"/v1/jobs/{ids[0]}"}


def _replayed(model: str, remembered: str, idempotency, many: bool):
    """What the first request with this Idempotency-Key created; its result once final."""
    digest, rows, entry = remembered.split("\n")
    if idempotency is None or digest != idempotency[1].split("\n")[0]:
        raise ApiError(
            422, "idempotency_key_reused", "this Idempotency-Key was used for a different request"
        )
    response = jsonify(_submitted(model, entry, int(rows), many))
    response.headers["Idempotent-Replayed"] = "true"
    return response, 202


def generates(name: str) -> bool:
    model = services().registry.get(name)
    return model is not None and model.meta.config.generation is not None


def _job_id(text: str) -> JobId:
    job = JobId.parse(text)
    if job is None:
        raise not_found("job_not_found", f"no job {text!r} (job ids look like model.entry.row)")
    return job


def _no_job(job_id: str) -> ApiError:
    """Unknown, expired, or another API key's: the same answer, so ids reveal nothing."""
    return not_found("job_not_found", f"no job {job_id!r} (unknown, or its result expired)")


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    svc = services()
    job = _job_id(job_id)
    wait_arg = request.args.get("wait")
    try:
        wait_s = float(wait_arg) if wait_arg is not None else 0.0
    except ValueError:
        raise bad_request(f"wait must be a number of seconds, got {wait_arg!r}") from None
    if not 0 <= wait_s <= svc.settings.max_wait_s:
        raise bad_request(f"wait must be between 0 and {svc.settings.max_wait_s} seconds")
    if wait_s > 0:
        view = svc.queue.wait(job.model, job.entry, wait_s)
    else:
        view = svc.queue.read(job.model, job.entry)
    if view is None or job.row >= view.rows or not owns(view.tenant):
        raise _no_job(job_id)
    return jsonify(render(job, view, svc.registry.get(job.model)))


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str):
    """Cancel queued work: it never reaches the model. A list is one submission: all its items.

    A generation request that is being written is stopped too (202: at the next step)."""
    svc = services()
    job = _job_id(job_id)
    owner = svc.queue.read(job.model, job.entry)
    if owner is None or job.row >= owner.rows or not owns(owner.tenant):
        raise _no_job(job_id)  # checked before cancelling: a bad id cancels nothing
    state = svc.broker.cancel(job.model, job.entry, svc.settings.result_ttl_s)
    view = svc.queue.read(job.model, job.entry)
    if state is None or view is None:
        raise _no_job(job_id)
    if state == "running" and generates(job.model):
        # A sequence being written stops at its worker's next step (its record then says
        # cancelled, with the text so far); asking again is harmless.
        svc.redis.zadd(keys.stopping(job.model), {job.entry: time.time()})
        body = render(job, view, svc.registry.get(job.model))
        body["cancel_requested"] = True
        return jsonify(body), 202
    if state != "cancelled":
        raise ApiError(
            409, "not_cancellable", f"job {job_id} is {state}; only queued jobs can be cancelled"
        )
    return jsonify(render(job, view, svc.registry.get(job.model)))


@bp.get("/models")
def list_models():
    registry = services().registry
    models = []
    for name in registry.names():
        model = registry.get(name)
        if model is not None:
            models.append(
                {
                    "name": name,
                    "versions": model.meta.versions,
                    "ready": model.ready_workers > 0,
                    "workers": model.ready_workers,
                }
            )
    return jsonify({"models": models})


@bp.get("/models/<name>")
def describe_model(name: str):
    return jsonify(_model(name).describe())
