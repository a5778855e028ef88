"""Job ids and how a job looks to clients.

A job id addresses one row of one queue entry: ``<model>.<entry ref>.<row>``, where the
reference is ``<stream entry id>-<priority level>``; a row is written canonically (``.2``,
never ``.02``), so one job has one id. So a
list of 64 items is one entry and one record, and reading one item reads that record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from batching import codec
from batching.broker import JobView
from batching.registry import PublishedModel

JOB_ID = re.compile(
    r"^(?P<model>[A-Za-z0-9_-]{1,64})\.(?P<entry>\d{1,20}-\d{1,20}-\d{1,2})\.(?P<row>0|[1-9]\d{0,5})$"
)


@dataclass(frozen=True)
class JobId:
    model: str
    entry: str
    row: int

    def __str__(self) -> str:
        return f"{self.model}.{self.entry}.{self.row}"

    @classmethod
    def parse(cls, text: str) -> JobId | None:
        match = JOB_ID.match(text)
        if not match:
            return None
        return cls(match["model"], match["entry"], int(match["row"]))


def job_ids(model: str, entry: str, rows: int) -> list[str]:
    return [str(JobId(model, entry, row)) for row in range(rows)]


def render(job: JobId, view: JobView, model: PublishedModel | None) -> dict[str, Any]:
    """The ``GET /v1/jobs/<id>`` body for one row of an entry."""
    body: dict[str, Any] = {"job_id": str(job), "model": job.model, "status": view.state}
    result = view.result or {}
    row_error = result.get("row_errors", {}).get(str(job.row))
    if row_error:  # the model rejected this row alone; the rest of its batch went on
        body.update(status="failed", error=row_error)
        result = {k: v for k, v in result.items() if k in ("timings", "version")}
    if "error" in result:
        body["error"] = result["error"]
    if "timings" in result:
        body["timings"] = result["timings"]
    if "version" in result:
        body["version"] = str(result["version"])
    generation = result.get("generation")
    if isinstance(generation, list):  # a bulk entry: one per row, each with its status
        generation = generation[job.row] if job.row < len(generation) else None
    if generation:  # text, tokens, finish_reason
        body.update(generation)
    outputs = result.get("outputs")
    if outputs:
        rows = {name: codec.tensor_from_wire(t)[job.row] for name, t in outputs.items()}
        body["outputs"] = {name: a.tolist() for name, a in rows.items()}
        if model is not None:
            labels = top_labels(rows, model)
            if labels is not None:
                body["labels"] = labels
    return body


def top_labels(outputs: dict[str, np.ndarray], model: PublishedModel) -> list[dict] | None:
    """Top-k labels with softmax scores, for classifiers whose config names their labels."""
    post = model.meta.config.postprocessing
    if not post.labels or post.label_output not in outputs:
        return None
    logits = outputs[post.label_output].astype(np.float64).reshape(-1)
    if logits.size != len(post.labels):
        return None
    scores = np.exp(logits - logits.max())
    scores /= scores.sum()
    order = np.argsort(-scores)[: post.top_k]
    return [{"label": post.labels[i], "score": round(float(scores[i]), 6)} for i in order]
