"""``/openapi.json``: an OpenAPI 3.1 document of ``/v1`` and ``/v2`` (the KServe V2 inference
protocol's JSON form), generated from the pydantic models.

Request bodies are the models the API validates with (``Submission``); response bodies
are described by the models below, so the document cannot drift from the code without
the schemathesis run in the tests noticing (every response is checked against it).
"""

from __future__ import annotations

from typing import Any, Literal

from flask import Blueprint, jsonify
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

import fusionserve
from batching.bulk import BatchStatus
from server.schemas import Submission, V2Datatype, V2Request

bp = Blueprint("openapi", __name__)


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable reason, e.g. invalid_input, queue_full")
    message: str = Field(description="what is wrong, for a human")


class ErrorBody(BaseModel):
    """Every ``/v1`` error: a 4xx or 5xx with this body."""

    error: ErrorDetail


class Submitted(BaseModel):
    job_id: str
    status_url: str


class SubmittedMany(BaseModel):
    job_ids: list[str]
    status_urls: list[str]


class JobBody(BaseModel):
    job_id: str
    model: str
    status: Literal["queued", "running", "done", "failed", "expired", "cancelled"]
    outputs: dict[str, Any] | None = None
    labels: list[dict[str, Any]] | None = None
    timings: dict[str, Any] | None = None
    version: str | None = None
    error: ErrorDetail | None = None


class ModelSummary(BaseModel):
    name: str
    versions: list[str]
    ready: bool
    workers: int


class ModelList(BaseModel):
    models: list[ModelSummary]


class ModelDescription(ModelSummary):
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    config: dict[str, Any]


class BatchCreated(BaseModel):
    batch_id: str
    status_url: str
    results_url: str
    total: int | None = None


class BatchList(BaseModel):
    batches: list[BatchStatus]
    next: str | None


class BatchResultLine(BaseModel):
    """One line of ``GET /v1/batches/<id>/results`` (JSONL)."""

    custom_id: str | None
    line: int
    status: str
    outputs: dict[str, Any] | None
    labels: list[dict[str, Any]] | None
    error: ErrorDetail | dict[str, Any] | None


class V2Error(BaseModel):
    """Every ``/v2`` error, as the protocol has it: a 4xx or 5xx with this body."""

    error: str


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: V2Datatype
    shape: list[int] = Field(description="-1: any size (the first dimension: the rows)")


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2OutputTensor(BaseModel):
    name: str
    datatype: V2Datatype
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class V2Response(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2OutputTensor]


MODELS: list[type[BaseModel]] = [
    Submission,
    V2Request,
    V2Error,
    V2ServerMetadata,
    V2ModelMetadata,
    V2Response,
    ErrorBody,
    Submitted,
    SubmittedMany,
    JobBody,
    ModelList,
    ModelDescription,
    BatchCreated,
    BatchStatus,
    BatchList,
    BatchResultLine,
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model_or_schema: Any, description: str) -> dict[str, Any]:
    schema = _ref(model_or_schema) if isinstance(model_or_schema, type) else model_or_schema
    return {"description": description, "content": {"application/json": {"schema": schema}}}


REASONS = {
    400: "malformed request",
    404: "unknown model, job or batch",
    409: "not possible in the current state",
    413: "body or item count over the limit",
    422: "input that does not fit the model",
    429: "queue full (Retry-After says when to retry)",
    500: "the model failed on the input",
    503: "Redis unreachable, or no worker serves the model (Retry-After)",
    504: "not finished within the request's timeout",
}


def _errors(*statuses: int, body: type[BaseModel] = ErrorBody) -> dict[str, Any]:
    return {str(s): _json(body, REASONS[s]) for s in statuses}


def _v2_paths(model: dict[str, Any]) -> dict[str, Any]:
    """The KServe V2 protocol as served here (binary tensor data: the same path, another
    content type, not described)."""
    empty = {"description": "no body"}
    infer = {
        "summary": "Run inference synchronously (rows: the inputs' first dimension)",
        "parameters": [model],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref(V2Request)}},
        },
        "responses": {
            "200": _json(V2Response, "the outputs"),
            **_errors(400, 404, 413, 422, 429, 500, 503, 504, body=V2Error),
        },
    }
    return {
        "/v2": {
            "get": {
                "summary": "Server metadata",
                "responses": {"200": _json(V2ServerMetadata, "the server")},
            }
        },
        "/v2/health/live": {"get": {"summary": "Liveness", "responses": {"200": empty}}},
        "/v2/health/ready": {
            "get": {
                "summary": "Readiness: some model has a ready worker",
                "responses": {"200": empty, "503": empty},
            }
        },
        "/v2/models/{name}": {
            "get": {
                "summary": "A model's metadata: its inputs and outputs",
                "parameters": [model],
                "responses": {
                    "200": _json(V2ModelMetadata, "the model"),
                    **_errors(404, 503, body=V2Error),
                },
            }
        },
        "/v2/models/{name}/ready": {
            "get": {
                "summary": "Whether a worker serves the model",
                "parameters": [model],
                "responses": {"200": empty, **_errors(404, 503, body=V2Error)},
            }
        },
        "/v2/models/{name}/infer": {"post": infer},
    }


def _param(name: str, where: str, schema: dict[str, Any], required: bool = False) -> dict:
    return {"name": name, "in": where, "required": required or where == "path", "schema": schema}


IDEMPOTENCY = _param("Idempotency-Key", "header", {"type": "string", "maxLength": 255})


def document() -> dict[str, Any]:
    _, definitions = models_json_schema(
        [(m, "validation") for m in MODELS], ref_template="#/components/schemas/{model}"
    )
    batch_id = _param("batch_id", "path", {"type": "string"})
    job_id = _param("job_id", "path", {"type": "string"})
    model = _param("name", "path", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"})
    paths: dict[str, Any] = {
        "/v1/models/{name}/infer": {
            "post": {
                "summary": "Submit one item or a list of items (one queue entry)",
                "parameters": [model, IDEMPOTENCY],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(Submission)}},
                },
                "responses": {
                    "202": _json(
                        {"oneOf": [_ref(Submitted), _ref(SubmittedMany)]}, "accepted: job ids"
                    ),
                    **_errors(400, 404, 413, 422, 429, 503),
                },
            }
        },
        "/v1/jobs/{job_id}": {
            "get": {
                "summary": "A job's state and, once final, its result; ?wait long-polls",
                "parameters": [job_id, _param("wait", "query", {"type": "number", "minimum": 0})],
                "responses": {"200": _json(JobBody, "the job"), **_errors(400, 404, 503)},
            },
            "delete": {
                "summary": "Cancel a queued job (all items of its submission)",
                "parameters": [job_id],
                "responses": {"200": _json(JobBody, "cancelled"), **_errors(404, 409, 503)},
            },
        },
        "/v1/models": {
            "get": {
                "summary": "Models some worker serves",
                "responses": {"200": _json(ModelList, "the models"), **_errors(503)},
            }
        },
        "/v1/models/{name}": {
            "get": {
                "summary": "A model's signature, config and workers",
                "parameters": [model],
                "responses": {"200": _json(ModelDescription, "the model"), **_errors(404, 503)},
            }
        },
        "/v1/batches": {
            "post": {
                "summary": "Submit a JSONL file of items as a bulk batch",
                "parameters": [
                    _param("model", "query", {"type": "string", "minLength": 1}, required=True),
                    _param("webhook_url", "query", {"type": "string", "format": "uri"}),
                    _param("priority", "query", {"type": "integer", "minimum": 1}),
                    IDEMPOTENCY,
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/jsonl": {"schema": {"type": "string"}},
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {"file": {"type": "string", "format": "binary"}},
                                "required": ["file"],
                            }
                        },
                    },
                },
                "responses": {
                    "202": _json(BatchCreated, "accepted"),
                    **_errors(400, 404, 413, 422, 503),
                },
            },
            "get": {
                "summary": "Batches, newest first",
                "parameters": [
                    _param("model", "query", {"type": "string"}),
                    _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100}),
                    _param("before", "query", {"type": "number"}),
                ],
                "responses": {"200": _json(BatchList, "a page"), **_errors(422, 503)},
            },
        },
        "/v1/batches/{batch_id}": {
            "get": {
                "summary": "A batch's status, counts and ETA",
                "parameters": [batch_id],
                "responses": {"200": _json(BatchStatus, "the batch"), **_errors(404, 503)},
            },
            "delete": {
                "summary": "Cancel a batch",
                "parameters": [batch_id],
                "responses": {"200": _json(BatchStatus, "cancelled"), **_errors(404, 409, 503)},
            },
        },
        **_v2_paths(model),
        "/v1/batches/{batch_id}/results": {
            "get": {
                "summary": "The results as JSONL, one BatchResultLine per input line, in order",
                "parameters": [batch_id],
                "responses": {
                    "200": {
                        "description": "JSONL",
                        "content": {"application/jsonl": {"schema": {"type": "string"}}},
                    },
                    **_errors(404, 503),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fusionserve",
            "version": fusionserve.__version__,
            "description": "Asynchronous inference with dynamic batching: the /v1 API, and "
            "synchronous inference over the same queue with the KServe V2 protocol at /v2.",
        },
        "paths": paths,
        "components": {"schemas": definitions["$defs"]},
    }


@bp.get("/openapi.json")
def openapi():
    return jsonify(document())
