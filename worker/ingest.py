"""The RQ job that feeds a bulk batch: read its file, validate each line, enqueue chunks.

The file is read a line at a time from the byte offset the batch last recorded, so a
file of a million items never sits in memory, and an ingest that died (its RQ worker
was killed) resumes where the last fed chunk ended. Each chunk of ``bulk_batch_size``
lines becomes one entry of the model's bulk lane (a worker runs one at a time); lines
that fail validation are recorded as failed in the chunk and never reach the model.
The lane holds at most ``bulk_window`` of a batch's entries: the ingest waits for the
workers rather than flooding Redis with a whole file's tensors.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import redis
from pydantic import ValidationError

from batching import assembly
from batching.bulk import BatchId, BatchStore, Chunk, read_lines
from batching.connection import client_from_url
from batching.generation import GenerateItem, OverCap
from batching.inputs import InvalidInput, item_tensors, pad_values
from batching.items import Item, describe_errors
from batching.registry import ModelRegistry, PublishedModel
from batching.settings import Settings, get_settings

log = logging.getLogger(__name__)

MAX_CUSTOM_ID = 512
FULL_WAIT_S = 0.02
"""How long the ingest sleeps when the bulk lane is at its window (workers are busy)."""


class LeaseLost(Exception):
    """Another ingest owns the batch now (this one stalled past its lease)."""


@dataclass
class Line:
    number: int
    end_byte: int
    custom_id: str | None
    tensors: dict[str, np.ndarray] | None
    error: str | None
    generate: dict[str, Any] | None = None
    """A generation model's line: its resolved parameters (batching/generation.py)."""


def ingest_batch(batch_id: str) -> str:
    """RQ entry point: feed the batch until its file is done, it stops, or another owns it."""
    from rq import get_current_job

    settings = get_settings()
    job = get_current_job()
    client = (
        job.connection
        if job is not None
        else client_from_url(settings.redis_url, settings, purpose="bulk")
    )
    return Ingest(client, settings, BatchId.parse(batch_id) or _bad_id(batch_id)).run()


def _bad_id(batch_id: str) -> BatchId:
    raise ValueError(f"not a batch id: {batch_id!r}")


class Ingest:
    def __init__(self, client: redis.Redis, settings: Settings, bid: BatchId) -> None:
        self.store = BatchStore(client)
        self.registry = ModelRegistry(client, settings.heartbeat_s)
        self.settings = settings
        self.bid = bid
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_ms = int(settings.ingest_lease_s * 1000)

    def run(self) -> str:
        lease = self.store.lease(self.bid, self.owner, self.lease_ms)
        if lease != "held":
            return f"batch {self.bid}: nothing to do ({lease})"
        fields = self.store.fields(self.bid)
        model = self.registry.get(self.bid.model)
        if model is None:
            self.store.stop(self.bid, "failed", f"model {self.bid.model} is not served")
            return "failed"
        try:
            lines = read_lines(fields["path"], int(fields["fed_byte"]), int(fields["fed_line"]))
            return self.feed(lines, fields, model)
        except OSError as exc:
            self.store.stop(self.bid, "failed", f"the batch file cannot be read: {exc}")
            return "failed"
        except LeaseLost:
            return "lease lost"
        except Exception as exc:  # the sweeper retries a bounded number of times, then fails
            self.store.redis.hset(self.bid.key, "ingest_error", f"{type(exc).__name__}: {exc}")
            raise

    def feed(
        self, lines: Iterator[tuple[int, int, bytes]], fields: dict[str, str], model: PublishedModel
    ) -> str:
        batching = model.meta.config.batching
        cap = min(batching.bulk_batch_size, batching.max_batch_size)
        generation = model.meta.config.generation
        if generation is not None:  # a worker runs a bulk entry's rows side by side
            cap = min(cap, generation.max_active)
        at_line = int(fields["fed_line"])
        chunk, rows = Chunk(), []
        for number, end_byte, raw in lines:
            line = parse_line(number, end_byte, raw, model)
            if line.error is not None:
                chunk.errors.append((line.number, line.custom_id, line.error))
            else:
                chunk.rows.append((line.number, line.custom_id))
                rows.append(line)
            if chunk.items == cap:
                outcome = self.send(fields, model, at_line, line.number, line.end_byte, chunk, rows)
                if outcome != "fed":
                    return outcome
                at_line, chunk, rows = line.number, Chunk(), []
        if chunk.items:
            return self.send(fields, model, at_line, number, end_byte, chunk, rows)
        return "fed"

    def send(
        self,
        fields: dict[str, str],
        model: PublishedModel,
        from_line: int,
        to_line: int,
        to_byte: int,
        chunk: Chunk,
        rows: list[Line],
    ) -> str:
        tensors = assembly.stack([r.tensors for r in rows], pad_values(model)) if rows else None
        generate = orjson.dumps([r.generate for r in rows]) if rows and rows[0].generate else b""
        while True:
            outcome = self.store.feed(
                self.bid,
                owner=self.owner,
                from_line=from_line,
                to_line=to_line,
                to_byte=to_byte,
                chunk=chunk,
                tensors=tensors,
                level=int(fields["priority"]),
                deadline_ms=int(fields["deadline_ms"]),
                window=self.settings.bulk_window,
                retention_s=int(fields["retention_s"]),
                lease_ms=self.lease_ms,
                generate=generate,
            )
            if outcome == "full":
                if self.store.lease(self.bid, self.owner, self.lease_ms) != "held":
                    raise LeaseLost
                time.sleep(FULL_WAIT_S)
                continue
            if outcome in ("lost", "stale"):
                raise LeaseLost
            return outcome


def parse_line(number: int, end_byte: int, raw: bytes, model: PublishedModel) -> Line:
    """One JSONL line as tensors, or the reason it cannot run (never raises for bad input)."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Line(number, end_byte, None, None, f"line {number} is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return Line(number, end_byte, None, None, f"line {number} must be a JSON object")
    custom_id = body.pop("custom_id", None)
    if custom_id is not None and (not isinstance(custom_id, str) or len(custom_id) > MAX_CUSTOM_ID):
        message = f"line {number}: custom_id must be a string of at most {MAX_CUSTOM_ID} chars"
        return Line(number, end_byte, None, None, message)
    generation = model.meta.config.generation
    try:
        if generation is None:
            return Line(
                number, end_byte, custom_id, item_tensors(Item.model_validate(body), model), None
            )
        item = GenerateItem.model_validate(body)
        params = item.resolved(generation.max_new_tokens)
        return Line(number, end_byte, custom_id, item_tensors(item, model), None, params)
    except ValidationError as exc:
        return Line(number, end_byte, custom_id, None, f"line {number}: {describe_errors(exc)}")
    except InvalidInput as exc:
        return Line(number, end_byte, custom_id, None, f"line {number}: {exc.message}")
    except OverCap as exc:
        return Line(number, end_byte, custom_id, None, f"line {number}: {exc}")
