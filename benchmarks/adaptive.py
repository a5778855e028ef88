"""Adaptive batching against fixed queue delays, simulated and then for real, side by side.

1. Calibrate: time the demo model in ONNX Runtime (one thread, as a served worker runs
   it) at batch sizes 1-64 (the controller's own execution model, interpolated).
2. Simulate (discrete events, Poisson arrivals, one worker): fixed delays 0, 2 and 10 ms
   with the full batch cap, against the SLO controller, at 10 %, 50 % and 90 % of the
   worker's capacity. Prints throughput and p99 for each.
3. Real run: the served demo model (embedded Valkey, API, one worker) under open-loop
   Poisson load from the project's load generator at the same three fractions of the
   served capacity (measured first), once per setting.

    python -m benchmarks.adaptive [--slo-ms 50] [--seconds 6] [--skip-real]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson

from batching.adaptive import ExecutionModel, SloController
from benchmarks.common import served, table, write_json
from fusionserve.loadtest.payloads import Payloads, synthetic_items
from fusionserve.loadtest.runner import RunSettings, run_point

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "model_repository" / "demo"
SIZES = (1, 2, 4, 8, 16, 32, 64)
FIXED_MS = (0.0, 2.0, 10.0)
LOADS = (0.1, 0.5, 0.9)
CAP = 64


def calibrate() -> ExecutionModel:
    from tokenizers import Tokenizer

    from fusionserve.zoo import data
    from fusionserve.zoo.tokenizer import encode_batch

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(DEMO / "1" / "model.onnx"), options)
    samples = data.generate(CAP, 1)
    ids, mask = encode_batch(
        Tokenizer.from_file(str(DEMO / "tokenizer.json")), [s.question for s in samples]
    )
    images = data.normalize(np.stack([s.image for s in samples]))
    model = ExecutionModel()
    for size in SIZES:
        feeds = {"input_ids": ids[:size], "attention_mask": mask[:size], "image": images[:size]}
        session.run(None, feeds)
        for _ in range(20):
            start = time.perf_counter()
            session.run(None, feeds)
            model.add(size, time.perf_counter() - start)
    return model


Policy = Callable[[float], tuple[int, float]]  # arrival rate -> (cap, delay s)


def simulate(
    rate: float, exec_s: Callable[[int], float], policy: Policy, n: int, seed: int
) -> dict:
    """One worker; a batch opens when the worker is free and work waits, and starts when
    it is full or its delay has passed (no delay: at once)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    queue: deque[float] = deque()
    latencies, i, free_at, last = [], 0, 0.0, 0.0
    while len(latencies) < n:
        if not queue:
            free_at = max(free_at, arrivals[i])
        while i < n and arrivals[i] <= free_at:
            queue.append(arrivals[i])
            i += 1
        cap, delay = policy(rate)
        start = free_at
        if len(queue) < cap and delay > 0:
            deadline = free_at + delay
            while i < n and len(queue) < cap and arrivals[i] <= deadline:
                queue.append(arrivals[i])
                i += 1
            start = arrivals[i - 1] if len(queue) >= cap else deadline
            start = max(start, free_at)
        batch = [queue.popleft() for _ in range(min(cap, len(queue)))]
        last = start + exec_s(len(batch))
        latencies += [last - t for t in batch]
        free_at = last
    p99 = float(np.percentile(latencies, 99)) * 1000
    return {"throughput": n / (last - arrivals[0]), "p99_ms": round(p99, 2)}


def policies(slo_s: float, execution: ExecutionModel) -> dict[str, Policy]:
    controller = SloController(slo_s, CAP)
    out: dict[str, Policy] = {
        f"fixed {d:g} ms": (lambda _r, d=d: (CAP, d / 1000)) for d in FIXED_MS
    }
    out["adaptive"] = lambda r: (lambda s: (s.max_batch_size, s.max_queue_delay_s))(
        controller.decide(r, execution)
    )
    return out


def real_runs(slo_ms: float, seconds: float) -> tuple[float, list[dict]]:
    bodies = [orjson.dumps(item) for item in synthetic_items(64, 3)]
    payloads = Payloads(bodies, 1, "synthetic")
    rows: list[dict] = []
    capacity = 0.0
    settings = {f"fixed {d:g} ms": f"max_queue_delay_ms = {d}" for d in FIXED_MS}
    settings["adaptive"] = f"max_queue_delay_ms = 2.0\nlatency_slo_ms = {slo_ms}"
    for name, batching in settings.items():
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copytree(DEMO, Path(tmp) / "demo")
            config = Path(tmp) / "demo" / "config.toml"
            text = re.sub(r"max_queue_delay_ms = [\d.]+", batching, config.read_text())
            config.write_text(text)
            with served(Path(tmp), "demo") as stack:
                if not capacity:  # the served capacity, once, with the first setting
                    probe = RunSettings(
                        stack.url, "demo", concurrency=32, duration=seconds, progress=False
                    )
                    capacity = asyncio.run(run_point(probe, payloads)).throughput_rps
                for load in LOADS:
                    point = RunSettings(
                        stack.url,
                        "demo",
                        mode="open",
                        rate=load * capacity,
                        duration=seconds,
                        progress=False,
                    )
                    summary = asyncio.run(run_point(point, payloads))
                    rows.append(
                        {
                            "setting": name,
                            "load": f"{load:.0%}",
                            "offered_rps": round(load * capacity),
                            "throughput_rps": round(summary.throughput_rps, 1),
                            "p99_ms": summary.latency_ms.get("p99"),
                            "failed": summary.failed,
                            "mean_batch": summary.mean_batch_size,
                        }
                    )
    return capacity, rows


def verdict(rows: list[dict], slo_ms: float, key: str) -> list[dict]:
    """For each load: does adaptive meet the SLO, and its throughput over the best fixed."""
    out = []
    for load in sorted({r["load"] for r in rows}):
        at = [r for r in rows if r["load"] == load]
        adaptive = next(r for r in at if r["setting"] == "adaptive")
        best = max(r[key] for r in at if r["setting"] != "adaptive")
        out.append(
            {
                "load": load,
                "adaptive_p99_ms": adaptive["p99_ms"],
                "meets_slo": adaptive["p99_ms"] is not None and adaptive["p99_ms"] <= slo_ms,
                "throughput_vs_best_fixed": round(adaptive[key] / best, 3) if best else None,
            }
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slo-ms", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--requests", type=int, default=20_000, help="per simulated point")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    execution = calibrate()
    exec_s = lambda b: execution.predict(b) or 0.0  # noqa: E731
    capacity = CAP / exec_s(CAP)
    print(
        f"calibrated exec(B) ≈ {exec_s(1) * 1000:.2f} ms at 1, "
        f"{exec_s(CAP) * 1000:.2f} ms at {CAP}; capacity {capacity:.0f}/s\n"
    )
    sim = []
    for load in LOADS:
        for name, policy in policies(args.slo_ms / 1000, execution).items():
            r = simulate(load * capacity, exec_s, policy, args.requests, seed=1)
            sim.append(
                {
                    "setting": name,
                    "load": f"{load:.0%}",
                    "throughput_rps": round(r["throughput"], 1),
                    "p99_ms": r["p99_ms"],
                }
            )
    print("simulation (one worker, Poisson arrivals):\n")
    print(table(sim, ["setting", "load", "throughput_rps", "p99_ms"]))
    print()
    print(
        table(
            verdict(sim, args.slo_ms, "throughput_rps"),
            ["load", "adaptive_p99_ms", "meets_slo", "throughput_vs_best_fixed"],
        )
    )
    real, served_capacity = [], None
    if not args.skip_real:
        served_capacity, real = real_runs(args.slo_ms, args.seconds)
        print(
            f"\nreal runs (served demo, /v1 raw text + PNG, "
            f"capacity {served_capacity:.0f} req/s):\n"
        )
        print(
            table(
                real,
                [
                    "setting",
                    "load",
                    "offered_rps",
                    "throughput_rps",
                    "p99_ms",
                    "mean_batch",
                    "failed",
                ],
            )
        )
        print()
        print(
            table(
                verdict(real, args.slo_ms, "throughput_rps"),
                ["load", "adaptive_p99_ms", "meets_slo", "throughput_vs_best_fixed"],
            )
        )
    payload = {
        "slo_ms": args.slo_ms,
        "capacity_sim": capacity,
        "simulation": sim,
        "served_capacity": served_capacity,
        "real": real,
    }
    print(f"\nwrote {write_json('adaptive', payload)}")
    return 0 if not math.isnan(capacity) else 1


if __name__ == "__main__":
    raise SystemExit(main())
