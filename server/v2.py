"""The KServe V2 / Triton HTTP protocol: synchronous inference over the same queue as ``/v1``.

A V2 request is one queue entry whose rows are the tensors' batch dimension; the
request waits on the entry's notification (no second queue, no second batcher).
Tensors come as JSON ``data`` or through the binary tensor data extension; a BYTES
input named ``text`` carries raw text for models with a tokenizer, and a BYTES image
input carries encoded PNG or JPEG images. Errors follow the protocol: a non-200
status with ``{"error": "<message>"}``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flask import Blueprint, Response, jsonify, request
from pydantic import ValidationError

import fusionserve
from batching import codec
from batching.inputs import (
    check_batch_shape,
    check_names,
    check_shared_dims,
    check_values,
    decode_audio,
    decode_image,
    text_tensors,
    to_array,
)
from batching.items import check_count
from batching.model_config import NUMPY_TO_V2
from batching.registry import PublishedModel
from server import v2_wire
from server.auth import tenant
from server.errors import (
    ApiError,
    bad_request,
    invalid,
    not_found,
)
from server.generate import refuse_generative
from server.jsonio import read_body
from server.repository import require_serving
from server.schemas import V2Output, V2Request, V2Tensor
from server.services import services

bp = Blueprint("v2", __name__, url_prefix="/v2")

EXTENSIONS = ["binary_tensor_data", "statistics", "model_repository"]
TEXT_INPUT = "text"


# --- server and model metadata ---------------------------------------------------------


@bp.get("")
def server_metadata():
    return jsonify(
        {"name": "fusionserve", "version": fusionserve.__version__, "extensions": EXTENSIONS}
    )


@bp.get("/health/live")
def live():
    return "", 200


@bp.get("/health/ready")
def ready():
    svc = services()
    serving = [m for m in map(svc.registry.get, svc.registry.names()) if m and m.ready_workers]
    return ("", 200) if serving else ("", 503)


def versioned_model(name: str, version: str | None) -> PublishedModel:
    model = services().registry.get(name)
    if model is None:
        raise not_found("model_not_found", f"unknown model '{name}'")
    if version is not None and version not in model.meta.versions:
        raise not_found("version_not_found", f"unknown version '{version}' of model '{name}'")
    return model


def _spec(spec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": spec.shape}


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    model = versioned_model(name, version)
    return jsonify(
        {
            "name": name,
            "versions": [version] if version else model.meta.versions,
            "platform": model.meta.config.platform,
            "inputs": [_spec(s) for s in model.meta.inputs],
            "outputs": [_spec(s) for s in model.meta.outputs],
        }
    )


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    model = versioned_model(name, version)
    if not model.ready_workers:
        raise ApiError(503, "not_ready", f"model '{name}' has no ready worker")
    return "", 200


@bp.get("/models/<name>/config")
@bp.get("/models/<name>/versions/<version>/config")
def model_config(name: str, version: str | None = None):
    """Triton's model configuration, as JSON."""
    model = versioned_model(name, version)
    batching = model.meta.config.batching

    def io(spec) -> dict[str, Any]:
        return {
            "name": spec.name,
            "data_type": f"TYPE_{_triton_type(spec.datatype)}",
            "dims": spec.shape[1:],
        }

    return jsonify(
        {
            "name": name,
            "platform": model.meta.config.platform,
            "backend": "onnxruntime",
            "max_batch_size": batching.max_batch_size,
            "version_policy": _triton_policy(model.meta.config.version_policy),
            "input": [io(s) for s in model.meta.inputs],
            "output": [io(s) for s in model.meta.outputs],
            "dynamic_batching": {
                "preferred_batch_size": batching.preferred_batch_sizes,
                "max_queue_delay_microseconds": int(batching.max_queue_delay_ms * 1000),
                "priority_levels": batching.priority_levels,
                "default_priority_level": batching.priority_levels,
                "default_queue_policy": {
                    "default_timeout_microseconds": batching.default_timeout_ms * 1000,
                    "max_queue_size": batching.max_queue_size,
                },
            },
            "instance_group": [{"count": model.ready_workers, "kind": "KIND_CPU"}],
        }
    )


@bp.get("/models/<name>/stats")
@bp.get("/models/<name>/versions/<version>/stats")
def model_stats(name: str, version: str | None = None):
    """Triton's statistics extension, from the counters workers keep per model version."""
    model = versioned_model(name, version)
    broker = services().broker
    versions = [version] if version else model.meta.versions
    return jsonify({"model_stats": [_stats(name, v, broker.stats(name, v)) for v in versions]})


def _stats(name: str, version: str, c: dict[str, int]) -> dict[str, Any]:
    def pair(prefix: str) -> dict[str, int]:
        return {"count": c.get(f"{prefix}_count", 0), "ns": c.get(f"{prefix}_ns", 0)}

    sizes = sorted(
        int(k.split(":")[1]) for k in c if k.startswith("batch:") and k.endswith(":count")
    )
    batch_stats = []
    for size in sizes:
        count = c[f"batch:{size}:count"]
        batch_stats.append(
            {"batch_size": size}
            | {
                part: {"count": count, "ns": c.get(f"batch:{size}:{part}_ns", 0)}
                for part in ("compute_input", "compute_infer", "compute_output")
            }
        )
    return {
        "name": name,
        "version": version,
        "last_inference": c.get("last_inference", 0),
        "inference_count": c.get("inference_count", 0),
        "execution_count": c.get("execution_count", 0),
        "inference_stats": {
            part: pair(part)
            for part in (
                "success",
                "fail",
                "queue",
                "compute_input",
                "compute_infer",
                "compute_output",
            )
        },
        "batch_stats": batch_stats,
    }


def _triton_policy(policy) -> dict[str, Any]:
    if policy.all:
        return {"all": {}}
    if policy.specific is not None:
        return {"specific": {"versions": policy.specific}}
    return {"latest": {"num_versions": policy.latest or 1}}


def _triton_type(datatype: str) -> str:
    return {"BYTES": "STRING"}.get(datatype, datatype)


# --- inference ------------------------------------------------------------------------


def _parse(raw: bytes) -> V2Request:
    """The request, its shapes and row count checked before any input's data is decoded."""
    header, binary = v2_wire.split_body(raw, request.headers.get(v2_wire.HEADER_LENGTH))
    inputs = header.get("inputs")
    if isinstance(inputs, list) and all(isinstance(t, dict) for t in inputs):
        for t in inputs:
            if "shape" in t:  # a missing one is pydantic's to report
                v2_wire.check_shape(t["shape"], t.get("name"))
        rows = max((t["shape"][0] for t in inputs if t.get("shape")), default=0)
        check_count(rows, services().settings.max_items, "rows", "request")
        v2_wire.decode_binary_inputs(inputs, binary)
    elif len(binary):
        raise bad_request("binary data without inputs that claim it")
    try:
        return V2Request.model_validate(header)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise bad_request(f"malformed inference request: {where}: {first['msg']}") from None


def _tensors(req: V2Request, model: PublishedModel) -> tuple[dict[str, np.ndarray], int]:
    names = [t.name for t in req.inputs]
    if len(set(names)) != len(names):
        raise bad_request("an input is given more than once")
    pre = model.meta.config.preprocessing
    specs = {s.name: s for s in model.meta.inputs}
    tensors: dict[str, np.ndarray] = {}
    rows: set[int] = set()
    for t in req.inputs:
        if t.datatype == "BYTES":
            elements = _bytes_rows(t)
            rows.add(len(elements))
            if t.name == TEXT_INPUT and pre.text is not None:
                texts = [_utf8(e, t.name) for e in elements]
                tensors.update(text_tensors(texts, model))
            elif pre.image is not None and t.name == pre.image.input:
                tensors[t.name] = np.stack([decode_image(e, pre.image) for e in elements])
            elif pre.audio is not None and t.name == pre.audio.input:
                tensors[t.name] = np.stack([decode_audio(e, pre.audio) for e in elements])
            else:
                raise invalid(
                    f"input '{t.name}': BYTES is accepted only for raw text, images or audio"
                )
            continue
        spec = specs.get(t.name)
        if spec is None:
            raise invalid(
                f"unknown input(s) ['{t.name}']; model {model.name} takes {sorted(specs)}"
            )
        if t.datatype != spec.datatype:
            raise invalid(
                f"input '{t.name}' has datatype {t.datatype}; the model takes {spec.datatype}"
            )
        array = t.data if isinstance(t.data, np.ndarray) else to_array(t.name, t.data, spec)
        if array.size != math.prod(t.shape):
            needed = math.prod(t.shape)
            raise invalid(
                f"input '{t.name}' has {array.size} values; shape {t.shape} needs {needed}"
            )
        array = array.reshape(t.shape)
        check_batch_shape(t.name, array, spec)
        tensors[t.name] = array
        rows.add(array.shape[0])
    check_names(tensors.keys(), model)
    if len(rows) != 1:
        raise invalid(f"inputs disagree on the batch size: {sorted(rows)}")
    check_shared_dims(tensors, model)
    check_values(tensors, model)
    return tensors, rows.pop()


def _bytes_rows(t: V2Tensor) -> list[bytes]:
    """One BYTES element per row: shape [N] or [N, 1], N at least 1."""
    if not t.shape or t.shape[0] == 0 or math.prod(t.shape) != t.shape[0]:
        raise invalid(
            f"input '{t.name}': BYTES inputs take at least one row and one element per row, "
            f"shape [N] or [N, 1]; got {t.shape}"
        )
    data = t.data
    if isinstance(data, np.ndarray):
        elements = list(data.ravel())
    elif isinstance(data, list):
        flat = _flatten(data, len(t.shape), t.name)
        elements = [e.encode() if isinstance(e, str) else e for e in flat]
    else:
        raise invalid(f"input '{t.name}': BYTES data must be a list of strings")
    if len(elements) != t.shape[0] or not all(isinstance(e, bytes) for e in elements):
        raise invalid(f"input '{t.name}': expected {t.shape[0]} strings")
    return elements


def _flatten(data: list, rank: int, name: str) -> list:
    """Nested lists to at most ``rank`` levels, level by level: data nested hundreds deep
    is refused, never recursed into."""
    level = data
    for _ in range(rank - 1):
        level = [x for item in level for x in (item if isinstance(item, list) else [item])]
    if any(isinstance(x, list) for x in level):
        raise invalid(f"input '{name}': data is nested deeper than its shape")
    return level


def _utf8(element: bytes, name: str) -> str:
    try:
        return element.decode()
    except UnicodeDecodeError:
        raise invalid(f"input '{name}': text is not UTF-8") from None


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    svc = services()
    model = versioned_model(name, version)
    require_serving(model)
    refuse_generative(model)
    if not model.ready_workers:  # a synchronous caller would only wait for its timeout
        raise ApiError(503, "not_ready", f"model '{name}' has no ready worker")
    req = _parse(read_body())
    params = req.parameters  # checked before the inputs are decoded
    timeout_us = params.get("timeout")
    if timeout_us is not None and (not _is_int(timeout_us) or timeout_us <= 0):
        raise bad_request("parameter 'timeout' must be a positive number of microseconds")
    priority = params.get("priority")
    if priority is not None and (not _is_int(priority) or priority < 0):
        raise bad_request("parameter 'priority' must be a non-negative integer")
    timeout_ms = max(1, timeout_us // 1000) if timeout_us else None
    tensors, rows = _tensors(req, model)
    ref = svc.queue.submit(
        model,
        tensors,
        rows,
        priority=priority or None,
        timeout_ms=timeout_ms,
        version=int(version) if version else 0,
        tenant=tenant(),
        sync=True,
    )
    budget_ms = min(timeout_ms or 10**9, model.meta.config.batching.default_timeout_ms)
    view = svc.queue.wait_submitted(name, ref, budget_ms / 1000.0 + 1.0)
    if view is None or view.result is None:
        raise ApiError(504, "timeout", "inference did not finish within the request's timeout")
    row_errors = view.result.get("row_errors")
    if row_errors:
        row, error = next(iter(row_errors.items()))
        raise ApiError(500, "model_error", f"row {row}: {error['message']}")
    if view.state != "done":
        error = view.result.get("error", {})
        status = 504 if view.state == "expired" else 500
        raise ApiError(status, error.get("code", view.state), error.get("message", view.state))
    return _response(req, name, model, view.result)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no number


def _response(req: V2Request, name: str, model: PublishedModel, result: dict[str, Any]) -> Response:
    outputs = result["outputs"]
    wanted = req.outputs or [V2Output(name=n) for n in outputs]
    unknown = sorted({o.name for o in wanted} - outputs.keys())
    if unknown:
        raise bad_request(f"unknown output(s) {unknown}")
    binary_default = bool(req.parameters.get("binary_data_output", False))
    header: dict[str, Any] = {
        "model_name": name,
        "model_version": str(result.get("version", model.meta.versions[-1])),
        "outputs": [],
    }
    if req.id is not None:
        header["id"] = req.id
    binary: list[bytes] = []
    for out in wanted:
        array = codec.tensor_from_wire(outputs[out.name])
        entry: dict[str, Any] = {
            "name": out.name,
            "datatype": NUMPY_TO_V2[array.dtype.name],
            "shape": list(array.shape),
        }
        if out.parameters.get("binary_data", binary_default):
            data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            binary.append(data)
        else:
            entry["data"] = (
                array.astype(np.float32) if array.dtype == np.float16 else array
            ).ravel()
        header["outputs"].append(entry)
    body, headers = v2_wire.response_body(header, binary)
    return Response(body, status=200, headers=headers)
