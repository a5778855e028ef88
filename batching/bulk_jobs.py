"""The RQ jobs of bulk batches, enqueued by name so the API never imports the worker.

Queues (standard RQ queues, visible to ``rq info`` and rq-dashboard):
``fusionserve-bulk`` holds ingest jobs, ``fusionserve-webhooks`` webhook deliveries.
"""

from __future__ import annotations

import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.utils import now

from batching import keys
from batching.bulk import BatchId

INGEST = "worker.ingest.ingest_batch"
DELIVER = "worker.webhooks.deliver_webhook"
WAITING = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED})


def enqueue_ingest(client: redis.Redis, bid: BatchId) -> Job:
    """Queue the ingest of a batch and remember its job (so the sweeper can tell if it died)
    and how many ingests it has had, in one transaction: a batch whose ``ingest_job`` is
    unset was never queued, and the sweeper never starts it."""
    with client.pipeline(transaction=True) as pipe:
        job = Queue(keys.BULK_QUEUE, connection=client).enqueue_call(
            INGEST,
            args=(str(bid),),
            timeout=-1,  # a million lines take as long as the workers take: no RQ timeout
            result_ttl=86_400,
            failure_ttl=7 * 86_400,
            description=f"ingest {bid}",
            pipeline=pipe,
        )
        pipe.hset(bid.key, "ingest_job", job.id)
        pipe.hincrby(bid.key, "ingest_runs", 1)
        pipe.execute()
    return job


def enqueue_webhook(client: redis.Redis, bid: BatchId, retry: Retry | None) -> Job:
    return Queue(keys.WEBHOOK_QUEUE, connection=client).enqueue(
        DELIVER, str(bid), retry=retry, result_ttl=86_400, description=f"webhook {bid}"
    )


def ingest_waiting_or_fresh(client: redis.Redis, job_id: str | None, grace_s: float) -> bool:
    """Whether a batch's ingest job is still queued, or started less than ``grace_s`` ago."""
    if not job_id:
        return False
    try:
        job = Job.fetch(job_id, connection=client)
    except Exception:  # NoSuchJobError, or a job hash that expired
        return False
    status = job.get_status()
    if status in WAITING:
        return True
    if status == JobStatus.STARTED and job.started_at is not None:
        return (now() - job.started_at).total_seconds() < grace_s
    return False
