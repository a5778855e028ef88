"""``/v1/batches``: bulk jobs. Hand over a JSONL file, watch progress, stream results back.

The API only stores the file (streamed to ``batch_dir`` a line at a time, counted and
hashed on the way) and records the batch; an RQ ingest job validates the lines and
feeds them to the model's bulk lane. Results come back as JSONL in input order.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
import redis
from flask import Blueprint, Response, jsonify, request

from batching import codec, webhook_target
from batching.broker import JobView
from batching.bulk import ACTIVE_STATES, BatchId, BatchStatus, Chunk, NewBatch, read_lines
from batching.bulk_jobs import enqueue_ingest
from batching.registry import PublishedModel
from server.auth import owns, tenant
from server.errors import ApiError, bad_request, invalid, not_found
from server.idempotency import fingerprint as request_fingerprint
from server.idempotency import idempotency_key
from server.jobs import top_labels
from server.repository import require_serving
from server.services import services

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")
log = logging.getLogger(__name__)

RESULT_CHUNKS = 64
"""Chunks read per Redis round trip while streaming results."""
MAX_LIST = 100
BLOCK = 1 << 20
MAX_TIME_S = 1e11
"""Later than any created_at (year 5138): bounds ``?before=``."""


@bp.post("")
def create_batch():
    svc = services()
    request.max_content_length = svc.settings.max_batch_bytes
    args = request.args if request.args.get("model") else request.form
    name = args.get("model")
    if not name:
        raise invalid("give the model: POST /v1/batches?model=<name>")
    model = svc.registry.get(name)
    if model is None:
        raise not_found("model_not_found", f"no model named {name!r} is served")
    require_serving(model)
    bulk = model.meta.config.batching.bulk_level
    level = _int_arg(args.get("priority"), "priority", bulk)
    if not 1 <= level <= bulk:
        raise invalid(f"priority must be 1..{bulk} for model {name} ({bulk}: the bulk lane)")
    webhook_url = _webhook_url(args.get("webhook_url"))
    key = idempotency_key()

    bid = BatchId.new(name)
    folder = svc.settings.batch_path()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{bid}.jsonl"
    stored = _store(_upload(), path)
    total, digest = stored.lines, stored.digest
    expected = request.content_length
    raw_body = request.mimetype != "multipart/form-data"
    if raw_body and expected is not None and stored.size != expected:
        path.unlink(missing_ok=True)
        raise bad_request(
            f"the body ended after {stored.size} of its {expected} bytes (Content-Length):"
            " nothing was created; send the whole file again"
        )
    if total == 0:
        path.unlink(missing_ok=True)
        raise invalid("the batch holds no items (one JSON object per line)")
    fingerprint = request_fingerprint(name, str(level), webhook_url or "", digest)
    new = NewBatch(
        id=bid,
        total=total,
        path=str(path.resolve()),
        fingerprint=fingerprint,
        priority=level,
        webhook_url=webhook_url,
        retention_s=svc.settings.batch_retention_s,
        window_s=svc.settings.batch_window_s,
        tenant=tenant(),
    )
    try:
        prior = svc.batches.create(new, key, svc.settings.idempotency_ttl_s)
    except redis.RedisError:
        path.unlink(missing_ok=True)
        raise  # 503: nothing was recorded
    if prior is not None:
        path.unlink(missing_ok=True)
        return _replay(prior, fingerprint)
    try:
        enqueue_ingest(svc.redis, bid)
    except redis.RedisError:
        _undo(new, key, path)
        raise  # 503, and the batch is gone: a retry creates it afresh
    return jsonify(_created(str(bid), total)), 202


def _undo(new: NewBatch, key: str | None, path: Path) -> None:
    """All or nothing: forget a batch the client is about to be told was not created."""
    try:
        services().batches.discard(new, key)
    except redis.RedisError as exc:  # the sweeper never starts a batch with no ingest job
        log.warning("batch %s: cannot discard (%s)", new.id, exc)
    path.unlink(missing_ok=True)


def _created(batch_id: str, total: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "batch_id": batch_id,
        "status_url": f"/v1/batches/{batch_id}",
        "results_url": f"/v1/batches/{batch_id}/results",
    }
    if total is not None:
        body["total"] = total
    return body


def _replay(prior: str, fingerprint: str):
    """The batch an earlier request with this Idempotency-Key created (same body only)."""
    remembered, batch_id = prior.split("\n", 1)
    if remembered != fingerprint:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different batch (model, options or file)",
        )
    response = jsonify(_created(batch_id))
    response.headers["Idempotent-Replayed"] = "true"
    return response, 202


def _upload() -> IO[bytes]:
    """The file: the multipart part named ``file``, else the raw body (JSONL)."""
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise invalid("the multipart body needs a part named 'file' holding the JSONL")
        return upload.stream
    return request.stream


@dataclass(frozen=True)
class Stored:
    """What :func:`_store` wrote: bytes, non-blank lines, and the sha256 of the bytes."""

    size: int
    lines: int
    digest: str


def _store(source: IO[bytes], path: Path) -> Stored:
    """Copy ``source`` to ``path`` in 1 MiB blocks, counting and hashing on the way.

    Blocks, not lines: a line-at-a-time read of a WSGI input is slow for long lines,
    and each block yields to other requests (under gevent) while the file arrives.
    """
    digest, count, size, open_line = hashlib.sha256(), 0, 0, False
    partial = path.with_suffix(".part")
    try:
        with open(partial, "wb") as out:
            for block in iter(lambda: source.read(BLOCK), b""):
                out.write(block)
                size += len(block)
                digest.update(block)
                *ended, rest = block.split(b"\n")
                for line in ended:
                    count += open_line or bool(line.strip())
                    open_line = False
                open_line = open_line or bool(rest.strip())
                time.sleep(0)
        count += open_line
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return Stored(size, count, digest.hexdigest())


def _webhook_url(url: str | None) -> str | None:
    if not url:
        return None
    try:
        webhook_target.check(url, services().settings)
    except webhook_target.WebhookRefused as exc:
        raise invalid(str(exc)) from None
    if services().settings.webhook_secret is None:
        raise invalid(
            "this server signs webhooks but has no secret: set FUSIONSERVE_WEBHOOK_SECRET"
        )
    return url


def _int_arg(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise invalid(f"{name} must be an integer, got {value!r}") from None


def _batch(batch_id: str) -> tuple[BatchId, BatchStatus]:
    bid = BatchId.parse(batch_id)
    status = services().batches.status(bid) if bid else None
    if bid is None or status is None or not owns(status.tenant):
        raise not_found(
            "batch_not_found", f"no batch {batch_id!r} (unknown, or past its retention)"
        )
    return bid, status


@bp.get("/<batch_id>")
def get_batch(batch_id: str):
    _, status = _batch(batch_id)
    return jsonify(status.model_dump(mode="json"))


@bp.delete("/<batch_id>")
def cancel_batch(batch_id: str):
    """Cancel: unfed and queued items never reach the model; finished ones stay readable."""
    bid, status = _batch(batch_id)
    if status.status not in ACTIVE_STATES:
        raise ApiError(409, "not_cancellable", f"batch {batch_id} is already {status.status}")
    services().batches.stop(bid, "cancelled")
    return jsonify(_batch(batch_id)[1].model_dump(mode="json"))


@bp.get("")
def list_batches():
    """Newest first; page with ``?before=<created_at of the last one seen>``."""
    svc = services()
    limit = _int_arg(request.args.get("limit"), "limit", 20)
    if not 1 <= limit <= MAX_LIST:
        raise invalid(f"limit must be 1..{MAX_LIST}")
    before = request.args.get("before")
    try:
        before_s = float(before) if before else None
    except ValueError:
        before_s = math.nan
    if before_s is not None and not (math.isfinite(before_s) and 0 <= before_s <= MAX_TIME_S):
        raise invalid(f"before must be a created_at time (unix seconds), got {before!r}")
    before_ms = int(before_s * 1000) if before_s is not None else None
    name = request.args.get("model")
    models = [name] if name else svc.registry.names()
    page = [s for s in svc.batches.page(models, tenant(), limit, before_ms) if owns(s.tenant)]
    body: dict[str, Any] = {"batches": [s.model_dump(mode="json") for s in page]}
    body["next"] = (
        f"/v1/batches?limit={limit}&before={page[-1].created_at}"
        + (f"&model={name}" if name else "")
        if len(page) == limit
        else None
    )
    return jsonify(body)


@bp.get("/<batch_id>/results")
def batch_results(batch_id: str):
    """JSONL, one line per item in input order; while running, the items fed so far."""
    bid, status = _batch(batch_id)
    svc = services()
    model = svc.registry.get(bid.model)
    fields = svc.batches.fields(bid)

    def lines() -> Iterator[bytes]:
        chunks = int(fields.get("chunks", 0))
        for start in range(0, chunks, RESULT_CHUNKS):
            for chunk, view in svc.batches.chunks(bid, start, RESULT_CHUNKS):
                for row in result_rows(chunk, view, model):
                    yield orjson.dumps(row) + b"\n"
        if status.status in ("cancelled", "failed") and fields.get("path"):
            for row in _never_fed(fields, status.status):
                yield orjson.dumps(row) + b"\n"

    response = Response(lines(), mimetype="application/jsonl")
    response.headers["Content-Disposition"] = f'attachment; filename="{batch_id}.jsonl"'
    return response


def result_rows(
    chunk: Chunk, view: JobView | None, model: PublishedModel | None
) -> Iterator[dict[str, Any]]:
    """The chunk's lines in order: its valid rows from the entry's result, and its errors."""
    result = (view.result if view else None) or {}
    state = view.state if view else "queued"
    outputs = {n: codec.tensor_from_wire(t) for n, t in (result.get("outputs") or {}).items()}
    row_errors = result.get("row_errors", {})
    rows = [
        _row(line, cid, state, result, outputs, row_errors.get(str(i)), i, model)
        for i, (line, cid) in enumerate(chunk.rows)
    ]
    errors = [
        _line(line, cid, "failed", error={"code": "invalid_input", "message": message})
        for line, cid, message in chunk.errors
    ]
    yield from sorted(rows + errors, key=lambda r: r["line"])


def _row(
    line: int,
    custom_id: str | None,
    state: str,
    result: dict[str, Any],
    outputs: dict[str, Any],
    row_error: dict[str, str] | None,
    row: int,
    model: PublishedModel | None,
) -> dict[str, Any]:
    if row_error:
        return _line(line, custom_id, "failed", error=row_error)
    generation = result.get("generation")
    if state == "done" and isinstance(generation, list) and row < len(generation):
        written = dict(generation[row])  # text, tokens, finish_reason, status[, error]
        body = _line(line, custom_id, written.pop("status"), error=written.pop("error", None))
        return {**body, **written}
    if state != "done" or not outputs:
        return _line(line, custom_id, state, error=result.get("error"))
    values = {n: a[row] for n, a in outputs.items()}
    labels = top_labels(values, model) if model is not None else None
    return _line(
        line, custom_id, "done", outputs={n: v.tolist() for n, v in values.items()}, labels=labels
    )


def _line(
    line: int,
    custom_id: str | None,
    status: str,
    *,
    outputs: dict[str, Any] | None = None,
    labels: list[dict] | None = None,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "line": line,
        "status": status,
        "outputs": outputs,
        "labels": labels,
        "error": error,
    }


def _never_fed(fields: dict[str, str], state: str) -> Iterable[dict[str, Any]]:
    """Lines a stopped batch never fed, read back from its file for their custom ids."""
    message = "the batch was cancelled before this item was fed; it never ran"
    if state == "failed":
        message = f"the batch failed before this item was fed: {fields.get('error', '')}"
    error = {"code": state, "message": message}
    unfed = read_lines(
        fields["path"], int(fields.get("fed_byte", 0)), int(fields.get("fed_line", 0))
    )
    try:
        for number, _, raw in unfed:
            try:
                custom_id = orjson.loads(raw).get("custom_id")
            except (orjson.JSONDecodeError, AttributeError):
                custom_id = None
            yield _line(
                number, custom_id if isinstance(custom_id, str) else None, state, error=error
            )
    except OSError:
        return
