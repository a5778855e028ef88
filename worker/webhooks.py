"""The RQ job that POSTs a settled batch's summary to its ``webhook_url``, signed.

RQ's own job webhooks are best-effort; these are not: a failed delivery (a network
error or any non-2xx answer) raises, and RQ's ``Retry`` schedules the next attempt
with exponential backoff. Every attempt is recorded in the batch's status, and a
delivered webhook is never sent again (a duplicate job finds it delivered).
"""

from __future__ import annotations

import time

import httpx
import orjson
from rq import Retry, get_current_job

from batching import signature
from batching.bulk import BatchId, BatchStore
from batching.settings import Settings, get_settings


class DeliveryFailed(Exception):
    """The receiver did not answer 2xx; RQ retries the job while it has retries left."""


def retry_policy(settings: Settings) -> Retry | None:
    """Backoff that doubles from ``webhook_backoff_s``: 1, 2, 4, 8 … seconds by default."""
    n = settings.webhook_max_retries
    if n == 0:
        return None
    return Retry(max=n, interval=[settings.webhook_backoff_s * 2**k for k in range(n)])


def deliver_webhook(batch_id: str) -> str:
    job = get_current_job()
    assert job is not None, "runs as an RQ job"
    settings = get_settings()
    store = BatchStore(job.connection)
    bid = BatchId.parse(batch_id)
    status = store.status(bid) if bid else None
    if bid is None or status is None or status.webhook is None:
        return "no webhook"
    if status.webhook.state != "pending":
        return status.webhook.state
    attempt = {"attempt": len(status.webhook.attempts) + 1, "at": round(time.time(), 3)}
    if settings.webhook_secret is None:
        store.record_attempt(bid, attempt | {"error": "no webhook secret is configured"}, "failed")
        return "failed"
    body = orjson.dumps(
        {"type": "batch.finished", "batch": status.model_dump(mode="json", exclude={"webhook"})}
    )
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "fusionserve-webhooks",
        signature.HEADER: signature.sign(settings.webhook_secret.get_secret_value().encode(), body),
        "Fusionserve-Batch": batch_id,
    }
    try:
        response = httpx.post(
            status.webhook.url, content=body, headers=headers, timeout=settings.webhook_timeout_s
        )
        attempt["status_code"] = response.status_code
        ok = response.is_success
    except httpx.HTTPError as exc:
        attempt["error"] = f"{type(exc).__name__}: {exc}"
        ok = False
    final = not ok and not job.retries_left
    store.record_attempt(bid, attempt, "delivered" if ok else "failed" if final else None)
    if not ok:
        raise DeliveryFailed(f"webhook for {batch_id} failed: {attempt}")
    return "delivered"
