"""The RQ job that POSTs a settled batch's summary to its ``webhook_url``, signed.

RQ's own job webhooks are best-effort; these are not: a failed delivery (a network
error, no complete answer within ``webhook_timeout_s``, or any non-2xx answer) raises,
and RQ's ``Retry`` schedules the next attempt with exponential backoff. Every attempt is
recorded in the batch's status, and a delivered webhook is never sent again (a
duplicate job finds it delivered). A target that is not allowed (see
:mod:`batching.webhook_target`, checked again here after DNS) fails at once.
Deliveries run on their own RQ queue and worker process, so a slow receiver never holds
up a batch's ingest.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
from rq import Retry, get_current_job

from batching import signature, webhook_target
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
    """RQ entry point: one delivery attempt. Every attempt ends recorded, whatever went
    wrong; the last one (or one that can never succeed) leaves the webhook ``failed``."""
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
    attempt: dict[str, Any] = {
        "attempt": len(status.webhook.attempts) + 1,
        "at": round(time.time(), 3),
    }
    ok = False
    try:
        if settings.webhook_secret is None:
            raise webhook_target.WebhookRefused("no webhook secret is configured")
        body = orjson.dumps(
            {"type": "batch.finished", "batch": status.model_dump(mode="json", exclude={"webhook"})}
        )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "fusionserve-webhooks",
            signature.HEADER: signature.sign(
                settings.webhook_secret.get_secret_value().encode(), body
            ),
            "Fusionserve-Batch": batch_id,
        }
        target, addresses = webhook_target.check(status.webhook.url, settings)
        code = asyncio.run(_post(target, addresses, body, headers, settings.webhook_timeout_s))
        attempt["status_code"] = code
        ok = 200 <= code < 300
    except webhook_target.Unresolved as exc:  # DNS may answer later: retried
        attempt["error"] = str(exc)
    except webhook_target.WebhookRefused as exc:  # no retry can succeed
        store.record_attempt(bid, attempt | {"error": str(exc)}, "failed")
        return "failed"
    except TimeoutError:
        attempt["error"] = f"no complete answer within {settings.webhook_timeout_s} s"
    except Exception as exc:  # any failure ends as a recorded attempt, never a stuck webhook
        attempt["error"] = f"{type(exc).__name__}: {exc}"
    final = not ok and not job.retries_left
    store.record_attempt(bid, attempt, "delivered" if ok else "failed" if final else None)
    if not ok:
        raise DeliveryFailed(f"webhook for {batch_id} failed: {attempt}")
    return "delivered"


async def _post(
    target: webhook_target.Target,
    addresses: list[str],
    body: bytes,
    headers: dict[str, str],
    deadline_s: float,
) -> int:
    """POST to the checked ``addresses`` in turn until one connects (Host and TLS name: the
    URL's host), all of it, from connect to the last byte of the answer, within
    ``deadline_s``; the status code."""
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    async with httpx.AsyncClient(
        timeout=deadline_s, trust_env=False, follow_redirects=False
    ) as client:

        async def send() -> int:
            for n, address in enumerate(addresses, 1):
                try:
                    response = await client.post(
                        target.via(address),
                        content=body,
                        headers=headers | {"Host": target.authority},
                        extensions=extensions,
                    )
                    return response.status_code
                except httpx.ConnectError:
                    if n == len(addresses):
                        raise
            raise AssertionError("resolve() returns at least one address")

        return await asyncio.wait_for(send(), deadline_s)
