"""Scaling out, simulated: throughput against workers and API processes, where one Redis
saturates, and what a Redis Cluster split per model buys.

A discrete-event simulation of the serving path, calibrated on this machine's
measurements (``benchmarks/results/capacity.json``: CPU microseconds per request of the
API, the worker and Redis, from ``fusionserve bench capacity``), with each process on a
core of its own, as on a fleet of hosts:

    Poisson arrivals -> API process pool (FIFO) -> Redis shard of the model (submit)
      -> worker pool (an idle worker takes up to ``max_batch`` waiting items)
      -> Redis shard (results, notify) -> done

Redis is one single-threaded server per shard; a model's keys live on one shard (its
hash tag), so a Cluster splits load by model. Each point offers 1.3x the predicted
bottleneck and reports what gets through.

    python -m benchmarks.scaleout [--model-us-per-row 0] [--items-per-request 1]
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
from collections import deque
from dataclasses import dataclass

from benchmarks.common import RESULTS, table, write_json


@dataclass(frozen=True)
class Costs:
    api_us: float = 388.0  # per request, measured (/v2 single item)
    redis_us: float = 51.0  # per request: submit + results + notify, measured
    worker_batch_us: float = 300.0  # per batch: pull, assemble, write back
    worker_row_us: float = 1.0  # per row of the serving path (the MLP is ~free)
    model_row_us: float = 0.0  # per row of model compute (the demo: about 215 on 1 core)

    @classmethod
    def measured(cls, model_row_us: float) -> Costs:
        path = RESULTS / "capacity.json"
        if not path.exists():
            return cls(model_row_us=model_row_us)
        rows = {r["scenario"]: r for r in json.loads(path.read_text())["rows"]}
        single = rows.get("/v2 single item", {})
        return cls(
            api_us=single.get("api_us_per_item", cls.api_us),
            redis_us=single.get("redis_us_per_item", cls.redis_us),
            model_row_us=model_row_us,
        )


def simulate(
    costs: Costs,
    api: int,
    workers: int,
    shards: int,
    models: int,
    offered_rps: float,
    rows: int = 1,
    max_batch: int = 64,
    seconds: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """Throughput (requests/s) and p99 latency (ms) of one configuration, simulated."""
    rng = random.Random(seed)
    now, seq = 0.0, 0
    events: list[tuple[float, int, str, object]] = []

    def push(at: float, kind: str, payload: object) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, kind, payload))

    api_free, api_queue = api, deque()
    shard_free_at = [0.0] * shards
    ready: deque = deque()
    idle_workers = workers
    latencies: list[float] = []
    t = 0.0
    while t < seconds:
        t += rng.expovariate(offered_rps)
        push(t, "arrive", (t, rng.randrange(models)))

    def redis_op(model: int, at: float, cost_us: float) -> float:
        shard = model % shards
        start = max(at, shard_free_at[shard])
        shard_free_at[shard] = start + cost_us / 1e6
        return shard_free_at[shard]

    def start_batch(at: float) -> None:
        nonlocal idle_workers
        while idle_workers and ready:
            batch = [ready.popleft() for _ in range(min(max_batch // rows or 1, len(ready)))]
            idle_workers -= 1
            n = len(batch) * rows
            busy = (costs.worker_batch_us + n * (costs.worker_row_us + costs.model_row_us)) / 1e6
            push(at + busy, "computed", batch)

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            if api_free:
                api_free -= 1
                push(now + costs.api_us / 1e6, "accepted", payload)
            else:
                api_queue.append(payload)
        elif kind == "accepted":
            arrived, model = payload  # type: ignore[misc]
            if api_queue:
                push(now + costs.api_us / 1e6, "accepted", api_queue.popleft())
            else:
                api_free += 1
            push(redis_op(model, now, costs.redis_us / 2), "queued", payload)
        elif kind == "queued":
            ready.append(payload)
            start_batch(now)
        elif kind == "computed":
            idle_workers += 1
            for arrived, model in payload:  # type: ignore[union-attr]
                done = redis_op(model, now, costs.redis_us / 2)
                latencies.append((done, done - arrived))
            start_batch(now)
    warm = seconds / 5  # count the steady state: completions between warm and seconds
    steady = sorted(lat for done, lat in latencies if warm <= done <= seconds)
    return {
        "throughput_rps": round(len(steady) / (seconds - warm), 1),
        "p99_ms": round(1000 * steady[int(0.99 * (len(steady) - 1))], 2) if steady else 0.0,
    }


def bottleneck(costs: Costs, api: int, workers: int, shards: int, models: int) -> tuple[float, str]:
    """The predicted capacity (requests/s) and which stage limits it."""
    per_batch_rows = 64
    worker_rps = workers / (
        (costs.worker_batch_us / per_batch_rows + costs.worker_row_us + costs.model_row_us) / 1e6
    )
    limits = {
        "api": api / (costs.api_us / 1e6),
        "redis": min(shards, models) / (costs.redis_us / 1e6),
        "workers": worker_rps,
    }
    name = min(limits, key=limits.__getitem__)
    return limits[name], name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-us-per-row", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=0.5, help="simulated time per point")
    parser.add_argument(
        "--demo-us-per-row",
        type=float,
        default=215.0,
        help="the demo model's compute per row on one core (fp32, batch 64, measured)",
    )
    args = parser.parse_args()
    costs = Costs.measured(args.model_us_per_row)
    print(f"costs (µs): {costs}\n")
    rows = []

    def point(costs: Costs, scenario: str, api: int, workers: int, shards: int, models: int):
        capacity, limit = bottleneck(costs, api, workers, shards, models)
        sim = simulate(costs, api, workers, shards, models, 1.3 * capacity, seconds=args.seconds)
        rows.append(
            {
                "scenario": scenario,
                "api": api,
                "workers": workers,
                "redis_shards": shards,
                "models": models,
                "limit": limit,
                "predicted_rps": round(capacity),
                **sim,
            }
        )

    for api in (2, 8, 32, 64):
        point(costs, "serving path", api, 4, 1, 1)
    demo = Costs(**{**costs.__dict__, "model_row_us": args.demo_us_per_row})
    for workers in (1, 4, 16, 64):
        point(demo, "demo model", 64, workers, 1, 1)
    for shards in (1, 2, 4, 8):
        point(costs, "cluster", 256, 64, shards, 8)
    print(table(rows, list(rows[0])))
    print(write_json("scaleout", {"costs": costs.__dict__, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
