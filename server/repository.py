"""The KServe V2 model-repository extension: index, load, unload.

The API holds no model files: an order goes into the model's control hash with a new
generation, and the call returns once a worker has applied that generation and
published what it serves (every worker applies it on its next heartbeat). ``load``
re-reads the model's directory and serves what its ``version_policy`` selects;
``unload`` stops serving the model, or only ``parameters.version``. Versions that stop
being served drain: entries that asked for them exactly still run on them first.
"""

from __future__ import annotations

import time

import orjson
from flask import Blueprint, jsonify, request

from batching import keys
from server.errors import ApiError, bad_request, not_found
from server.services import services
from server.v2 import v2_error

bp = Blueprint("repository", __name__, url_prefix="/v2/repository")
bp.register_error_handler(ApiError, v2_error)

APPLY_TIMEOUT_S = 60.0


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
            ready = version in serving and model.ready_workers > 0
            models.append(
                {
                    "name": name,
                    "version": version,
                    "state": "READY" if ready else "UNAVAILABLE",
                    "reason": "" if ready else "unloaded" if model.ready_workers else "no worker",
                }
            )
    return jsonify(models)


@bp.post("/models/<name>/load")
def load(name: str):
    _order(name, {"action": "load"})
    return "", 200


@bp.post("/models/<name>/unload")
def unload(name: str):
    body = _body()
    version = (body.get("parameters") or {}).get("version")
    if version is not None and not str(version).isdigit():
        raise bad_request("parameter 'version' must be a version number")
    _order(name, {"action": "unload", "version": int(version) if version is not None else None})
    return "", 200


def _body() -> dict:
    raw = request.get_data()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    return body


def _order(name: str, order: dict) -> None:
    """Write the order, then wait until a worker has applied it."""
    svc = services()
    model = svc.registry.get(name)
    if model is None:
        raise not_found("model_not_found", f"unknown model '{name}'")
    if not model.ready_workers:
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
    deadline = time.monotonic() + APPLY_TIMEOUT_S
    while time.monotonic() < deadline:
        published = svc.registry.fresh(name)
        if published is not None and published.meta.generation >= generation:
            return
        time.sleep(0.05)
    raise ApiError(503, "not_applied", f"no worker applied the order for '{name}' in time")
