"""Typed views of the server's answers (plain dataclasses: cheap to build per result)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

FINAL_STATES = frozenset({"done", "failed", "expired", "cancelled"})


@dataclass(frozen=True)
class Timings:
    """Where a job's time went on the server (set by the worker that ran it)."""

    queue_ms: float | None = None
    compute_ms: float | None = None
    batch_size: int | None = None
    worker: str | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Timings:
        return cls(
            queue_ms=body.get("queue_ms"),
            compute_ms=body.get("compute_ms"),
            batch_size=body.get("batch_size"),
            worker=body.get("worker"),
        )


@dataclass(frozen=True)
class JobError:
    """Why a job failed or expired (``code`` e.g. ``model_error``, ``expired``, ``dead_letter``)."""

    code: str
    message: str


@dataclass(frozen=True)
class JobResult:
    """``GET /v1/jobs/<id>``.

    ``done`` is True once the job is final (``done``, ``failed``, ``expired`` or
    ``cancelled``), like
    ``Future.done()``; ``ok`` is True only when it succeeded. Outputs come back as JSON
    lists, so their dtype is numpy's default for the values (float64 / int64).
    """

    job_id: str
    model: str
    status: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    labels: list[tuple[str, float]] = field(default_factory=list)
    timings: Timings | None = None
    version: str | None = None
    error: JobError | None = None

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATES

    @property
    def ok(self) -> bool:
        return self.status == "done"

    @property
    def top_label(self) -> str | None:
        return self.labels[0][0] if self.labels else None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> JobResult:
        error = body.get("error")
        timings = body.get("timings")
        return cls(
            job_id=body["job_id"],
            model=body.get("model", ""),
            status=body["status"],
            outputs={k: np.asarray(v) for k, v in (body.get("outputs") or {}).items()},
            labels=[(x["label"], float(x["score"])) for x in body.get("labels") or []],
            timings=Timings.from_json(timings) if isinstance(timings, dict) else None,
            version=body.get("version"),
            error=_job_error(error),
        )


def _job_error(error: Any) -> JobError | None:
    if not isinstance(error, dict):
        return None
    return JobError(str(error.get("code", "")), str(error.get("message", "")))


@dataclass(frozen=True)
class GenerationTimings:
    """Where a generation's time went: queued, until its first token, writing, and its rate."""

    queue_ms: float | None = None
    time_to_first_token_ms: float | None = None
    generate_ms: float | None = None
    tokens_per_s: float | None = None
    worker: str | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> GenerationTimings:
        return cls(
            queue_ms=body.get("queue_ms"),
            time_to_first_token_ms=body.get("time_to_first_token_ms"),
            generate_ms=body.get("generate_ms"),
            tokens_per_s=body.get("tokens_per_s"),
            worker=body.get("worker"),
        )


@dataclass(frozen=True)
class Generation:
    """A generation request's result: ``GET /v1/jobs/<id>`` of it, or its stream's ``done``.

    ``finish_reason`` is ``stop`` (an end token or a stop string), ``length``
    (``max_new_tokens``), ``cancelled`` or ``deadline``; a cancelled or expired request
    keeps the text written so far. ``done`` and ``ok`` as in :class:`JobResult`.
    """

    job_id: str
    status: str
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    timings: GenerationTimings | None = None
    version: str | None = None
    error: JobError | None = None
    model: str = ""

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATES

    @property
    def ok(self) -> bool:
        return self.status == "done"

    @classmethod
    def from_json(cls, body: dict[str, Any], model: str = "") -> Generation:
        timings = body.get("timings")
        version = body.get("version")
        return cls(
            job_id=body["job_id"],
            status=body["status"],
            text=body.get("text", ""),
            tokens=[int(t) for t in body.get("tokens") or []],
            finish_reason=body.get("finish_reason"),
            timings=GenerationTimings.from_json(timings) if isinstance(timings, dict) else None,
            version=str(version) if version is not None else None,
            error=_job_error(body.get("error")),
            model=body.get("model", model),
        )


@dataclass(frozen=True)
class GenerationEvent:
    """One event of a generation's stream, in order, each once (across reconnections).

    ``token``: ``text`` is the next piece (``index`` its position, ``token_id`` the id;
    a piece may be empty while a stop string is still possible). ``restart``: the
    request runs again from its first token (its worker was lost): drop the pieces so
    far (:func:`text_of` does). ``done``: the last event, ``generation`` the whole result.
    """

    kind: Literal["token", "restart", "done"]
    id: str
    """The stream id: what ``Last-Event-ID`` resumes after."""
    job_id: str
    text: str = ""
    index: int | None = None
    token_id: int | None = None
    generation: Generation | None = None


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model; ``-1`` marks a variable dimension (batch first)."""

    name: str
    datatype: str
    shape: list[int]

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> TensorSpec:
        return cls(body["name"], body["datatype"], list(body["shape"]))


@dataclass(frozen=True)
class ModelInfo:
    """``GET /v1/models/<m>`` (all fields) or one entry of ``GET /v1/models`` (no signature)."""

    name: str
    versions: list[str]
    ready: bool
    workers: int
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ModelInfo:
        return cls(
            name=body["name"],
            versions=[str(v) for v in body.get("versions", [])],
            ready=bool(body.get("ready")),
            workers=int(body.get("workers", 0)),
            inputs=[TensorSpec.from_json(s) for s in body.get("inputs", [])],
            outputs=[TensorSpec.from_json(s) for s in body.get("outputs", [])],
            config=body.get("config", {}),
        )
