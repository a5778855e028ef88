"""A soak: the served demo model at about 70 % of its measured capacity for ten minutes.

1. Serve the demo model (embedded Valkey with AOF, API with 2 processes, one worker),
   results kept for ``--result-ttl`` seconds so Redis holds a bounded window of them.
2. Measure capacity: closed loop, 32 clients, ``/v1`` raw text + PNG, 15 s.
3. Soak: open-loop Poisson arrivals at ``--load`` x capacity for ``--minutes``, while
   the RSS of the API processes and the worker and Redis's ``used_memory`` are sampled.

Flat means the last minute's peak is within a few percent of the peak of the minute
after the first result TTL has passed (before it, Redis fills its result window).
Prints the figures and writes ``benchmarks/results/soak.json``.

    python -m benchmarks.soak [--minutes 10] [--load 0.7] [--result-ttl 60]
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import redis

from benchmarks.common import descendants, rss_mib, served, table, write_json
from fusionserve.loadtest.payloads import Payloads, synthetic_items
from fusionserve.loadtest.runner import RunSettings, run_point

ROOT = Path(__file__).resolve().parent.parent
MODEL = "demo"


class Sampler(threading.Thread):
    """Every ``every_s``: RSS (MiB) of each role's processes, and Redis used_memory."""

    def __init__(self, roles: dict[str, list[int]], client: redis.Redis, every_s: float = 5.0):
        super().__init__(daemon=True)
        self.roles, self.client, self.every_s = roles, client, every_s
        self.samples: list[dict[str, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.wait(self.every_s):
            row = {"t_s": round(time.monotonic() - start, 1)}
            for role, roots in self.roles.items():
                row[role] = round(sum(rss_mib(p) for r in roots for p in descendants(r)), 1)
            row["redis_used_mib"] = round(self.client.info("memory")["used_memory"] / 2**20, 2)
            self.samples.append(row)


def window_peak(samples: list[dict[str, float]], key: str, start_s: float, end_s: float) -> float:
    values = [s[key] for s in samples if start_s <= s["t_s"] < end_s]
    return max(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--load", type=float, default=0.7)
    parser.add_argument("--result-ttl", type=int, default=60)
    args = parser.parse_args()
    payloads = Payloads([orjson.dumps(i) for i in synthetic_items(64, 5)], 1, "synthetic")
    env = {"FUSIONSERVE_RESULT_TTL_S": str(args.result_ttl)}
    with served(ROOT / "model_repository", MODEL, **env) as stack:
        probe = RunSettings(stack.url, MODEL, concurrency=32, duration=15, progress=False)
        capacity = asyncio.run(run_point(probe, payloads)).throughput_rps
        rate = args.load * capacity
        print(f"capacity {capacity:.0f} req/s; soaking at {rate:.0f} req/s for {args.minutes} min")
        roles = {
            "api_mib": [p.pid for p in stack.procs if p not in stack.workers],
            "worker_mib": [p.pid for p in stack.workers],
        }
        client = redis.Redis.from_url(stack.env["REDIS_URL"])
        sampler = Sampler(roles, client)
        sampler.start()
        soak = RunSettings(
            stack.url,
            MODEL,
            mode="open",
            rate=rate,
            duration=args.minutes * 60,
            max_time_s=args.minutes * 60 + 120,
            progress=False,
        )
        summary = asyncio.run(run_point(soak, payloads))
        sampler.stop.set()
        sampler.join()
    samples = sampler.samples
    end = samples[-1]["t_s"] if samples else 0.0
    settled = args.result_ttl + 60.0  # the result window is full after one TTL
    report: dict[str, Any] = {
        "capacity_rps": round(capacity, 1),
        "offered_rps": round(rate, 1),
        "minutes": args.minutes,
        "throughput_rps": round(summary.throughput_rps, 1),
        "sent": summary.sent,
        "ok": summary.ok,
        "failed": summary.failed,
        "errors": summary.errors,
        "latency_ms": summary.latency_ms,
        "flatness_last_minute_over_after_ttl": {
            key: round(
                window_peak(samples, key, end - 60, end + 1)
                / window_peak(samples, key, settled - 60, settled),
                3,
            )
            for key in ("api_mib", "worker_mib", "redis_used_mib")
        },
        "samples": samples,
    }
    print(
        table(
            [{k: v for k, v in s.items()} for s in samples[:: max(1, len(samples) // 12)]],
            list(samples[0]),
        )
    )
    print({k: v for k, v in report.items() if k != "samples"})
    print(write_json("soak", report))
    return 0 if summary.failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
