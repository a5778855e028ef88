"""``/v1/stats``: one JSON snapshot per model, what the console's overview polls.

The same Redis counters ``/metrics`` exports, summed over versions: rows run, outcomes,
queue depth per lane, ready workers, batch sizes, and queue and compute percentiles
from the histogram buckets. Rates are the client's business (deltas between polls).
"""

from __future__ import annotations

import time

from flask import Blueprint, jsonify

from batching import keys
from batching.histograms import quantile
from server.services import services

bp = Blueprint("stats", __name__, url_prefix="/v1")


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 3) if seconds is not None else None


@bp.get("/stats")
def stats():
    svc = services()
    models = {}
    for name in svc.registry.names():
        model = svc.registry.get(name)
        if model is None:
            continue
        counters: dict[str, int] = {}
        for version in model.meta.available or model.meta.versions:
            for field, value in svc.broker.stats(name, version).items():
                if field != "last_inference":
                    counters[field] = counters.get(field, 0) + value
        outcomes = {k.decode(): int(v) for k, v in svc.redis.hgetall(keys.outcomes(name)).items()}
        depth = svc.broker.lane_depths(name, model.meta.config.batching)
        sizes = {
            int(k.split(":")[1]): v
            for k, v in counters.items()
            if k.startswith("batch:") and k.endswith(":count")
        }
        sizes = {str(size): sizes[size] for size in sorted(sizes)}  # JSON keys are strings
        models[name] = {
            "ready_workers": model.ready_workers,
            "queue_depth": depth,
            "inferences": counters.get("inference_count", 0),
            "batches": counters.get("execution_count", 0),
            "outcomes": outcomes,
            "batch_sizes": sizes,
            "queue_ms": {
                "p50": _ms(quantile("queue", counters, 0.5)),
                "p99": _ms(quantile("queue", counters, 0.99)),
            },
            "compute_ms": {
                "p50": _ms(quantile("compute", counters, 0.5)),
                "p99": _ms(quantile("compute", counters, 0.99)),
            },
        }
    return jsonify({"time": time.time(), "models": models})
