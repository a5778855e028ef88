"""The KServe V2 model-repository extension: index, load, unload.

The API holds no model files: an order goes into the model's control hash with a new
generation, and the call returns once a worker has applied that generation and
published what it serves (every worker applies it on its next heartbeat). ``load``
re-reads the model's directory and serves what its ``version_policy`` selects;
``unload`` stops serving the model, or only ``parameters.version``. Versions that stop
being served drain: entries that asked for them exactly still run on them first.

The registry's view follows an unload from the moment it is written, and the call
answers no sooner than every API process's cached view has expired, so once it answers
the model is not ready and submissions are refused (``require_serving``) everywhere.
Bodies are KServe's ``{"parameters": {…}}``: anything else is a 400 that changes nothing.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from flask import Blueprint, jsonify, request

from batching import keys
from batching.registry import CACHE_S, PublishedModel
from server.errors import ApiError, bad_request, not_found
from server.services import services

bp = Blueprint("repository", __name__, url_prefix="/v2/repository")

APPLY_TIMEOUT_S = 60.0
LOAD_PARAMETERS: frozenset[str] = frozenset()
"""Triton's ``config`` and ``file:`` overrides are not supported: the directory is read."""
UNLOAD_PARAMETERS = frozenset({"version", "unload_dependents"})
"""``unload_dependents`` (what tritonclient sends) is accepted: no model depends on another."""


def require_serving(model: PublishedModel) -> None:
    """Refuse work for a model the repository API unloaded (503, before anything is queued)."""
    if model.unloaded:
        raise ApiError(
            503,
            "model_unloaded",
            f"model '{model.name}' is unloaded: POST /v2/repository/models/{model.name}/load"
            " serves it again",
        )


@bp.post("/index")
def index():
    registry = services().registry
    models = []
    for name in registry.names():
        model = registry.get(name)
        if model is None:
            continue
        serving = set(model.meta.versions)
        for version in model.meta.available or model.meta.versions:
            ready = version in serving and model.workers > 0
            models.append(
                {
                    "name": name,
                    "version": version,
                    "state": "READY" if ready else "UNAVAILABLE",
                    "reason": "" if ready else "unloaded" if model.workers else "no worker",
                }
            )
    return jsonify(models)


@bp.post("/models/<name>/load")
def load(name: str):
    _parameters(LOAD_PARAMETERS)
    _order(_model(name), {"action": "load"})
    return "", 200


@bp.post("/models/<name>/unload")
def unload(name: str):
    params = _parameters(UNLOAD_PARAMETERS)
    dependents = params.get("unload_dependents", False)
    if not isinstance(dependents, bool):
        raise bad_request("parameter 'unload_dependents' must be true or false")
    version = _version(params.get("version"))
    model = _model(name)
    if version is not None and str(version) not in {*model.meta.available, *model.meta.versions}:
        raise not_found("version_not_found", f"unknown version '{version}' of model '{name}'")
    _order(model, {"action": "unload", "version": version})
    return "", 200


def _version(value: Any) -> int | None:
    """``parameters.version``: a version number, as a JSON number or a string of digits."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdecimal() and value.isascii():
        return int(value)
    raise bad_request(f"parameter 'version' must be a version number, got {value!r}")


def _parameters(allowed: frozenset[str]) -> dict[str, Any]:
    """The body's ``parameters`` (an empty body has none); 400 for any other shape."""
    body = _body()
    extra = sorted(set(body) - {"parameters"})
    if extra:
        raise bad_request(f"unknown field '{extra[0]}': the body is {{\"parameters\": {{...}}}}")
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        raise bad_request("'parameters' must be a JSON object")
    unsupported = sorted(set(params) - allowed)
    if unsupported:
        supported = ", ".join(sorted(allowed)) or "none"
        raise bad_request(f"unsupported parameter '{unsupported[0]}' (supported: {supported})")
    return params


def _body() -> dict:
    raw = request.get_data()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


def _model(name: str) -> PublishedModel:
    model = services().registry.fresh(name) if keys.MODEL_NAME.match(name) else None
    if model is None:
        raise not_found("model_not_found", f"unknown model '{name}'")
    return model


def _order(model: PublishedModel, order: dict) -> None:
    """Write the order, then wait until a worker has applied it (and caches have expired)."""
    svc = services()
    name = model.name
    if not model.workers:
        raise ApiError(503, "not_ready", f"model '{name}' has no worker to apply the order")
    with svc.redis.pipeline(transaction=True) as pipe:
        if order["action"] == "unload":  # refuse new work for it at once; workers then drain it
            if order["version"] is None:
                pipe.delete(keys.accepting(name))
            else:
                pipe.srem(keys.accepting(name), order["version"])
        pipe.hset(keys.control(name), "order", orjson.dumps(order))
        pipe.hincrby(keys.control(name), "gen", 1)
        generation = pipe.execute()[-1]
    written = time.monotonic()
    deadline = written + APPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        published = svc.registry.fresh(name)
        applied = published is not None and published.meta.generation >= generation
        if applied and time.monotonic() - written >= CACHE_S:  # no process caches the old view
            return
        time.sleep(0.05)
    raise ApiError(503, "not_applied", f"no worker applied the order for '{name}' in time")
