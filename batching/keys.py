"""Every Redis key and channel fusionserve uses, named in one place (like rq's ``keys.py``).

Per-model keys carry the model in a hash tag (``fs:{model}:…``) so that all of a
model's keys live in one Redis Cluster slot and one Lua script may touch them
together. The few global keys (the model index, reply channels) are never used
in the same script as a model's keys.
"""

from __future__ import annotations

import hashlib
import re

PREFIX = "fs"
GROUP = "workers"
"""The consumer group every worker of a model reads its streams through."""

MODEL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""Model names are safe in keys, URLs and job ids (no dots: a job id is ``model.entry.row``)."""

MODELS = f"{PREFIX}:models"
"""Set of model names that some worker has published."""


def _tag(model: str) -> str:
    return f"{PREFIX}:{{{model}}}"


def stream(model: str, priority: int) -> str:
    """The queue of one priority level of a model (1 is the highest level)."""
    return f"{_tag(model)}:q:{priority}"


def job(model: str, entry_id: str) -> str:
    """The record of one submission: its state, reply channel, and once final its results."""
    return f"{_tag(model)}:job:{entry_id}"


def watchers(model: str, entry_id: str) -> str:
    """Reply channels of API processes long-polling an entry they did not submit."""
    return f"{_tag(model)}:watch:{entry_id}"


def tokens(model: str, entry_id: str) -> str:
    """The events of one generation request (tokens, restart, done), capped and expiring."""
    return f"{_tag(model)}:tokens:{entry_id}"


def stopping(model: str) -> str:
    """Set of running generation requests asked to stop (a cancel): workers poll it per step."""
    return f"{_tag(model)}:stopping"


def meta(model: str) -> str:
    """Hash a worker publishes at load: signature, config, tokenizer."""
    return f"{_tag(model)}:meta"


def workers(model: str) -> str:
    """Sorted set of worker ids serving the model, scored by last heartbeat (unix seconds)."""
    return f"{_tag(model)}:workers"


def stats(model: str, version: int | str) -> str:
    """Hash of counters for one model version (Triton's statistics extension)."""
    return f"{_tag(model)}:stats:{version}"


def pinned(model: str, version: int | str) -> str:
    """Counter of unfinished entries that asked for this exact version: unload drains to zero."""
    return f"{_tag(model)}:pinned:{version}"


def accepting(model: str) -> str:
    """Set of versions that may still be asked for by number (unload removes one first)."""
    return f"{_tag(model)}:accepting"


def outcomes(model: str) -> str:
    """Counters of how submissions ended: done, failed, expired, cancelled, rejected (429)."""
    return f"{_tag(model)}:outcomes"


def drain_rates(model: str) -> str:
    """Hash of worker id -> "entries per second,unix time" measured by each worker."""
    return f"{_tag(model)}:drain"


def control(model: str) -> str:
    """Hash of what the repository API asked for (``want``) and a generation counter."""
    return f"{_tag(model)}:control"


def idempotency(model: str, scope: str, key: str) -> str:
    """What an ``Idempotency-Key`` first created (``scope``: ``infer`` or ``batch``).

    The client's key is hashed: any header value makes a short, safe key name.
    """
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"{_tag(model)}:idem:{scope}:{digest}"


# --- bulk batches ---------------------------------------------------------------------

BULK_QUEUE = "fusionserve-bulk"
"""RQ queue of ingest jobs (one per batch: validate lines, feed the bulk lane)."""

WEBHOOK_QUEUE = "fusionserve-webhooks"
"""RQ queue of signed completion webhooks (retried with backoff through RQ's ``Retry``)."""

SWEEP_LOCK = f"{PREFIX}:bulk:sweep"
"""Held by the one bulk worker that sweeps (restarts stalled ingests, enqueues webhooks)."""


def batch(model: str, local_id: str) -> str:
    """Hash of one batch: status, counters, ingest offsets and lease, webhook state."""
    return f"{_tag(model)}:batch:{local_id}"


def batch_chunks(model: str, local_id: str) -> str:
    """Hash of a batch's chunks: ``<seq>`` -> its lines, ``<seq>:ref`` -> its entry reference."""
    return f"{batch(model, local_id)}:chunks"


def batch_inflight(model: str, local_id: str) -> str:
    """Hash of job record key -> stream entry id for a batch's entries not yet final.

    The Lua scripts derive it as ``<batch key>:inflight`` from a record's ``bt`` field.
    """
    return f"{batch(model, local_id)}:inflight"


def batch_hooks(model: str, local_id: str) -> str:
    """List of webhook delivery attempts (JSON), oldest first."""
    return f"{batch(model, local_id)}:hooks"


def batches(model: str) -> str:
    """Sorted set of the model's batch ids, scored by creation time (unix ms)."""
    return f"{_tag(model)}:batches"


def batches_of(model: str, tenant: str) -> str:
    """The batch index one tenant (API key id) lists: its own sorted set, or, for "" (keys
    off), the model's whole index. Kept by the step that creates a batch."""
    if not tenant:
        return batches(model)
    digest = hashlib.sha256(tenant.encode()).hexdigest()[:32]
    return f"{batches(model)}:tenant:{digest}"


def batches_active(model: str) -> str:
    """Set of batch ids not yet settled: the sweeper restarts their ingest if it stalls."""
    return f"{_tag(model)}:batches:active"


def batches_settled(model: str) -> str:
    """Set of batch ids that just settled: an outbox the sweeper turns into webhook jobs."""
    return f"{_tag(model)}:batches:settled"


# --- access control --------------------------------------------------------------------

API_KEYS = f"{PREFIX}:apikeys"
"""Hash of key id -> the key's record (JSON: name, digest, limits, created, revoked)."""


def api_key_digest(digest: str) -> str:
    """Maps the SHA-256 of a presented key to its id: keys are stored hashed, never raw."""
    return f"{PREFIX}:apikey:{digest}"


def rate_bucket(key_id: str) -> str:
    """The token bucket of one API key."""
    return f"{PREFIX}:ratelimit:{key_id}"


def reply_channel(process_id: str) -> str:
    """Pub/sub channel of one API process; workers publish finished results to it."""
    return f"{PREFIX}:reply:{process_id}"
