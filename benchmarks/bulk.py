"""Bulk batches: throughput, memory that stays flat, and what a bulk batch costs online traffic.

1. Serve the demo model (embedded Valkey, API, model worker, bulk worker) on loopback.
2. Baseline: a fixed light online load (open loop, ``--rate`` single-item ``/v2`` calls
   a second) for ``--seconds``; its latency percentiles.
3. For each batch size (default 20,000 then 200,000 raw text+PNG lines, each with a
   custom id): write the JSONL, upload it with the SDK, and wait for it to settle while
   sampling the RSS of every process. During the largest batch, the same online load
   runs again: p99 with and without the bulk batch, side by side in one run.
4. Stream the results back and check they come in input order.

Reports items/s, peak RSS per role (API, model worker, bulk worker with its work horse,
Redis) per batch size (flat means it does not grow with the batch), and the online
latency ratio. Writes ``benchmarks/results/bulk.json``.

    python -m benchmarks.bulk [--sizes 20000,200000] [--rate 20] [--seconds 20]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
from tokenizers import Tokenizer

from benchmarks.common import (
    Connection,
    descendants,
    percentiles,
    rss_mib,
    served,
    table,
    v2_body,
    write_json,
)
from fusionserve.client import Client
from fusionserve.loadtest.payloads import image_field
from fusionserve.zoo import data
from fusionserve.zoo.tokenizer import encode_batch

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "model_repository" / "demo"
MODEL = "demo"
UNIQUE = 1000


def write_batch(path: Path, n: int, samples: list[data.Sample]) -> int:
    """``n`` lines cycling over the samples, written a line at a time; returns bytes."""
    encoded = [
        orjson.dumps({"text": s.question, "image": image_field(data.png_bytes(s.image))})[1:]
        for s in samples
    ]
    with path.open("wb") as out:
        for i in range(n):
            out.write(b'{"custom_id":"row-%d",' % i + encoded[i % len(encoded)] + b"\n")
    return path.stat().st_size


def demo_v2_body(sample: data.Sample, tokenizer: Tokenizer) -> bytes:
    ids, mask = encode_batch(tokenizer, [sample.question])
    image = data.normalize(sample.image)[None]
    return v2_body({"input_ids": ids, "attention_mask": mask, "image": image})


def online_load(url: str, body: bytes, rate: float, seconds: float) -> dict[str, Any]:
    """Open loop: one request every 1/rate s whatever the answers do; latencies of each."""
    local = threading.local()
    latencies: list[float] = []
    errors = 0

    def one() -> None:
        nonlocal errors
        conn = getattr(local, "conn", None) or Connection(url)
        local.conn = conn
        start = time.perf_counter()
        status, _ = conn.post(f"/v2/models/{MODEL}/infer", body)
        if status == 200:
            latencies.append(time.perf_counter() - start)
        else:
            errors += 1

    with ThreadPoolExecutor(16) as pool:
        start = time.perf_counter()
        for k in range(int(rate * seconds)):
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one)
    return {"requests": len(latencies), "errors": errors, **percentiles(latencies)}


class DelayedLoad(threading.Thread):
    """:func:`online_load` in a thread, starting ``after_s`` seconds after ``start()``."""

    def __init__(self, url: str, body: bytes, rate: float, seconds: float, after_s: float):
        super().__init__(daemon=True)
        self.args, self.after_s = (url, body, rate, seconds), after_s
        self.result: dict[str, Any] = {}

    def run(self) -> None:
        time.sleep(self.after_s)
        self.result = online_load(*self.args)
        self.result["ended_at"] = time.time()


class RssSampler:
    """Peak resident memory (MiB) per role, sampled every ``every_s`` in a thread."""

    def __init__(self, roles: dict[str, list[int]], every_s: float = 0.25) -> None:
        self.roles, self.every_s = roles, every_s
        self.peak: dict[str, float] = dict.fromkeys(roles, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            for role, roots in self.roles.items():
                pids = [d for root in roots for d in descendants(root)]  # a new work horse too
                self.peak[role] = max(self.peak[role], sum(rss_mib(p) for p in pids))


def run_batch(url: str, path: Path, n: int) -> dict[str, Any]:
    with Client(url, timeout=120) as client:
        t0 = time.perf_counter()
        created = client.submit_batch(MODEL, path)
        upload_s = time.perf_counter() - t0
        batch_id = created["batch_id"]
        while (status := client.batch(batch_id))["finished_at"] is None:
            time.sleep(0.5)
        total_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        ids = [row["custom_id"] for row in client.batch_results(batch_id)]
        download_s = time.perf_counter() - t1
    assert ids == [f"row-{i}" for i in range(n)], "results out of order or missing"
    assert status["counts"]["done"] == n, status["counts"]
    run_s = status["finished_at"] - status["started_at"]
    return {
        "items": n,
        "batch_id": batch_id,
        "upload_s": round(upload_s, 2),
        "run_s": round(run_s, 2),
        "total_s": round(total_s, 2),
        "items_per_s": round(n / run_s, 1),
        "results_download_s": round(download_s, 2),
        "results_per_s": round(n / download_s, 1),
        "finished_at": status["finished_at"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,200000", help="batch sizes, comma-separated")
    parser.add_argument("--rate", type=float, default=20.0, help="online requests per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="online probe length")
    parser.add_argument("--workers", type=int, default=1, help="model worker processes")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    samples = data.generate(UNIQUE, data.HELD_OUT_SEED)
    tokenizer = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    body = demo_v2_body(samples[0], tokenizer)
    tmp = Path(tempfile.mkdtemp(prefix="fusionserve-bulk-"))
    report: dict[str, Any] = {"batches": []}
    with served(
        DEMO.parent, MODEL, workers=args.workers, FUSIONSERVE_DATA_DIR=str(tmp / "data")
    ) as stack:
        bulk = stack.start_bulk_worker()
        api = [p.pid for p in stack.procs if p not in stack.workers and p is not bulk]
        roles = {
            "api": api,
            "model_worker": [p.pid for p in stack.workers],
            "bulk_worker": [bulk.pid],
            "redis": [stack.redis_pid],  # type: ignore[attr-defined]
        }
        online_load(stack.url, body, args.rate, 2)  # warm-up
        report["online_alone"] = online_load(stack.url, body, args.rate, args.seconds)
        for n in sizes:
            path = tmp / f"batch-{n}.jsonl"
            size = write_batch(path, n, samples)
            largest = n == max(sizes)
            probe = DelayedLoad(stack.url, body, args.rate, args.seconds, after_s=5)
            with RssSampler(roles) as rss:
                if largest:  # the online load again, once the batch is under way
                    probe.start()
                result = run_batch(stack.url, path, n)
                if largest:
                    probe.join()
                    finished = result.pop("finished_at")
                    probe.result["overlapped"] = probe.result.pop("ended_at") < finished
                    report["online_during_bulk"] = probe.result
            result.pop("finished_at", None)
            result |= {"file_mib": round(size / 2**20, 1)}
            result |= {f"peak_rss_mib_{k}": round(v, 1) for k, v in rss.peak.items()}
            report["batches"].append(result)
            path.unlink()
        _check_redis_released(stack)

    alone, during = report["online_alone"], report["online_during_bulk"]
    report["online_p99_ratio_during_over_alone"] = round(during["p99_ms"] / alone["p99_ms"], 2)
    small, large = report["batches"][0], report["batches"][-1]
    report["peak_rss_ratio_largest_over_smallest"] = {
        role: round(large[f"peak_rss_mib_{role}"] / max(1e-9, small[f"peak_rss_mib_{role}"]), 2)
        for role in roles
    }
    cols = ["items", "file_mib", "upload_s", "run_s", "items_per_s", "results_per_s"]
    cols += [f"peak_rss_mib_{r}" for r in roles]
    print(table(report["batches"], cols))
    print()
    print(
        table(
            [{"online": "alone", **alone}, {"online": "during bulk", **during}],
            ["online", "requests", "errors", "p50_ms", "p90_ms", "p99_ms", "max_ms"],
        )
    )
    print(f"\nonline p99 during bulk / alone: {report['online_p99_ratio_during_over_alone']}")
    print(
        f"peak RSS {large['items']:,} / {small['items']:,} items:",
        report["peak_rss_ratio_largest_over_smallest"],
    )
    print(write_json("bulk", report))
    return 0


def _check_redis_released(stack: Any) -> None:
    """The bulk lane holds nothing once the batches are done (entries are deleted on ack)."""
    info = httpx.get(f"{stack.url}/metrics", timeout=10).text
    depth = [
        line for line in info.splitlines() if 'priority="bulk"' in line and not line.startswith("#")
    ]
    assert all(line.endswith(" 0.0") for line in depth), depth


if __name__ == "__main__":
    raise SystemExit(main())
