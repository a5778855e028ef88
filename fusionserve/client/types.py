"""Typed views of the server's answers (plain dataclasses: cheap to build per result)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

FINAL_STATES = frozenset({"done", "failed", "expired"})


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

    ``done`` is True once the job is final (``done``, ``failed`` or ``expired``), like
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
            error=JobError(str(error.get("code", "")), str(error.get("message", "")))
            if isinstance(error, dict)
            else None,
        )


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
