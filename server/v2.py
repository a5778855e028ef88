"""The KServe V2 / Triton HTTP protocol: synchronous inference over the same queue as ``/v1``.

A V2 request is one queue entry whose rows are the tensors' batch dimension; the
request waits on the entry's notification (no second queue, no second batcher).
Errors follow the protocol: a non-200 status with ``{"error": "<message>"}``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from flask import Blueprint, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batching import codec
from batching.model_config import NUMPY_TO_V2
from server.errors import ApiError, bad_request, invalid, not_found
from server.inputs import check_batch_shape, check_names, check_shared_dims, to_array
from server.registry import PublishedModel
from server.services import services

bp = Blueprint("v2", __name__, url_prefix="/v2")


class V2Tensor(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int] = Field(max_length=8)
    datatype: str
    data: Any = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class V2Output(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class V2Request(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[V2Output] | None = None


@bp.errorhandler(ApiError)
def _v2_error(exc: ApiError):
    response = jsonify({"error": exc.message})
    response.status_code = exc.status
    if exc.status in (429, 503):
        response.headers["Retry-After"] = str(exc.extra.get("retry_after", 1))
    return response


@bp.get("/health/live")
def live():
    return "", 200


@bp.get("/health/ready")
def ready():
    svc = services()
    names = svc.registry.names()
    serving = [m for m in map(svc.registry.get, names) if m and m.ready_workers]
    return ("", 200) if serving else ("", 503)


def _model(name: str, version: str | None) -> PublishedModel:
    model = services().registry.get(name)
    if model is None:
        raise not_found("model_not_found", f"unknown model '{name}'")
    if version is not None and version not in model.meta.versions:
        raise not_found("version_not_found", f"unknown version '{version}' of model '{name}'")
    return model


def _parse(raw: bytes) -> V2Request:
    try:
        return V2Request.model_validate(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"malformed JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise bad_request(f"malformed inference request: {where}: {first['msg']}") from None


def _tensors(req: V2Request, model: PublishedModel) -> tuple[dict[str, np.ndarray], int]:
    names = [t.name for t in req.inputs]
    if len(set(names)) != len(names):
        raise bad_request("an input is given more than once")
    check_names(names, model)
    specs = {s.name: s for s in model.meta.inputs}
    tensors: dict[str, np.ndarray] = {}
    for t in req.inputs:
        spec = specs[t.name]
        if t.datatype != spec.datatype:
            raise invalid(
                f"input '{t.name}' has datatype {t.datatype}; the model takes {spec.datatype}"
            )
        array = to_array(t.name, t.data, spec)
        if array.size != math.prod(t.shape):
            needed = math.prod(t.shape)
            raise invalid(
                f"input '{t.name}' has {array.size} values; shape {t.shape} needs {needed}"
            )
        array = array.reshape(t.shape)
        check_batch_shape(t.name, array, spec)
        tensors[t.name] = array
    rows = {a.shape[0] for a in tensors.values()}
    if len(rows) != 1:
        raise invalid(f"inputs disagree on the batch size: {sorted(rows)}")
    check_shared_dims(tensors, model)
    return tensors, rows.pop()


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    svc = services()
    model = _model(name, version)
    req = _parse(request.get_data())
    tensors, rows = _tensors(req, model)
    params = req.parameters
    timeout_us = params.get("timeout")
    timeout_ms = max(1, int(timeout_us) // 1000) if isinstance(timeout_us, int) else None
    priority = params.get("priority") if isinstance(params.get("priority"), int) else None
    ref = svc.queue.submit(model, tensors, rows, priority=priority or None, timeout_ms=timeout_ms)
    budget_ms = min(timeout_ms or 10**9, model.meta.config.batching.default_timeout_ms)
    view = svc.queue.wait_submitted(name, ref, budget_ms / 1000.0 + 1.0)
    if view is None or view.result is None:
        raise ApiError(504, "timeout", "inference did not finish within the request's timeout")
    if view.state != "done":
        error = view.result.get("error", {})
        status = 504 if view.state == "expired" else 500
        raise ApiError(status, error.get("code", view.state), error.get("message", view.state))
    wanted = [o.name for o in req.outputs] if req.outputs else None
    outputs = view.result["outputs"]
    if wanted:
        unknown = sorted(set(wanted) - outputs.keys())
        if unknown:
            raise bad_request(f"unknown output(s) {unknown}")
    body = {
        "model_name": name,
        "model_version": str(view.result.get("version", model.meta.versions[-1])),
        "outputs": [_output(n, outputs[n]) for n in (wanted or outputs)],
    }
    if req.id is not None:
        body["id"] = req.id
    return jsonify(body)


def _output(name: str, frame: dict[str, Any]) -> dict[str, Any]:
    array = codec.tensor_from_wire(frame)
    datatype = NUMPY_TO_V2[array.dtype.name]
    if array.dtype == np.float16:
        array = array.astype(np.float32)  # orjson serialises no float16
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(array.shape),
        "data": array.ravel(),
    }
