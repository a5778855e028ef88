"""``/metrics`` in the Prometheus exposition format (prometheus-client).

Every figure lives in Redis: workers count batches, latencies and outcomes in the
same atomic calls that finish work, the submit script counts refusals, and queue
depths and ready workers are read live. So any API process answers for the whole
deployment, and gunicorn's several processes need no shared metrics directory.

Metric names:
- ``fusionserve_requests_total{model, outcome}``: submissions by how they ended
  (success, failed, expired, cancelled, rejected).
- ``fusionserve_inferences_total{model, version}``: rows run through the model.
- ``fusionserve_batches_total{model, version}``: model executions.
- ``fusionserve_queue_seconds{model, version}``: histogram of time from submission to batch.
- ``fusionserve_compute_seconds{model, version}``: histogram of batch compute time, per request.
- ``fusionserve_batch_size{model, version}``: histogram of rows per executed batch.
- ``fusionserve_queue_depth{model, priority}``: entries waiting or in flight.
- ``fusionserve_ready_workers{model}``: workers with a fresh heartbeat (0 while unloaded).
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from batching import keys
from batching.histograms import cumulative
from server.services import Services, services

bp = Blueprint("metrics", __name__)

OUTCOMES = {"done": "success", "failed": "failed", "expired": "expired"}
OUTCOMES |= {"cancelled": "cancelled", "rejected": "rejected"}
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class RedisCollector:
    """Reads the deployment's counters from Redis at scrape time."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        svc = self.svc
        requests = CounterMetricFamily(
            "fusionserve_requests", "Submissions by how they ended", labels=["model", "outcome"]
        )
        inferences = CounterMetricFamily(
            "fusionserve_inferences", "Rows run through the model", labels=["model", "version"]
        )
        batches = CounterMetricFamily(
            "fusionserve_batches", "Model executions", labels=["model", "version"]
        )
        queue = HistogramMetricFamily(
            "fusionserve_queue_seconds",
            "Time from submission to batch",
            labels=["model", "version"],
        )
        compute = HistogramMetricFamily(
            "fusionserve_compute_seconds",
            "Batch compute time, per request",
            labels=["model", "version"],
        )
        sizes = HistogramMetricFamily(
            "fusionserve_batch_size", "Rows per executed batch", labels=["model", "version"]
        )
        depth = GaugeMetricFamily(
            "fusionserve_queue_depth",
            "Entries waiting or in flight",
            labels=["model", "priority"],
        )
        ready = GaugeMetricFamily(
            "fusionserve_ready_workers",
            "Workers with a fresh heartbeat (0 while the model is unloaded)",
            labels=["model"],
        )
        for name in svc.registry.names():
            model = svc.registry.fresh(name)  # scrapes want now, not the request-path cache
            if model is None:
                continue
            counts = svc.redis.hgetall(keys.outcomes(name))
            for field, outcome in OUTCOMES.items():
                requests.add_metric([name, outcome], int(counts.get(field.encode(), 0)))
            for version in model.meta.available or model.meta.versions:
                c = svc.broker.stats(name, version)
                if not c:
                    continue
                labels = [name, version]
                inferences.add_metric(labels, c.get("inference_count", 0))
                batches.add_metric(labels, c.get("execution_count", 0))
                queue.add_metric(labels, cumulative("queue", c), c.get("queue_ns", 0) / 1e9)
                compute_ns = sum(c.get(f"compute_{p}_ns", 0) for p in ("input", "infer", "output"))
                compute.add_metric(labels, cumulative("compute", c), compute_ns / 1e9)
                sizes.add_metric(labels, *_batch_histogram(c))
            for lane, entries in svc.broker.lane_depths(name, model.meta.config.batching).items():
                depth.add_metric([name, lane], entries)
            ready.add_metric([name], model.ready_workers)
        yield from (requests, inferences, batches, queue, compute, sizes, depth, ready)


def _batch_histogram(c: dict[str, int]) -> tuple[list[tuple[str, int]], float]:
    executed = {
        int(k.split(":")[1]): v
        for k, v in c.items()
        if k.startswith("batch:") and k.endswith(":count")
    }
    buckets, total = [], 0
    for bound in BATCH_BOUNDS:
        total = sum(n for size, n in executed.items() if size <= bound)
        buckets.append((str(bound), total))
    buckets.append(("+Inf", sum(executed.values())))
    return buckets, float(sum(size * n for size, n in executed.items()))


@bp.get("/metrics")
def metrics():
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(services()))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
