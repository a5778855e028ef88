"""The serving path's own ceiling, with a model whose compute is negligible.

One run, side by side: items/s through ``/v2`` with one item per request (the
competitors' figure: wrk, 32 connections), through ``/v2`` with 64 rows per request,
and through ``/v1`` list submissions of 64 items, counted end to end (submitted, then
long-polled until finished). The load comes from wrk on loopback (a C generator, so
the client is not what saturates); gunicorn's process count and worker class are
parameters.

    python -m benchmarks.capacity [--duration 10] [--connections 32] [--api-processes 2]
                                  [--server gunicorn|granian] [--worker-class gevent] [--workers 1]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import orjson

from benchmarks.common import CpuMeter, served, table, write_json
from benchmarks.wrk import V1_SCRIPT, V2_SCRIPT, wrk
from fusionserve.zoo.tiny_models import mlp_model

MODEL = "mlp"


def v2_body(rows: int) -> str:
    x = np.random.default_rng(0).standard_normal((rows, 64)).round(3)
    inputs = [{"name": "x", "shape": [rows, 64], "datatype": "FP32", "data": x.ravel().tolist()}]
    return orjson.dumps({"inputs": inputs}).decode()


def v1_body(rows: int) -> str:
    x = np.random.default_rng(0).standard_normal((rows, 64)).round(3)
    return orjson.dumps({"items": [{"inputs": {"x": r.tolist()}} for r in x]}).decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--api-processes", type=int, default=2)
    parser.add_argument("--server", choices=["gunicorn", "granian"], default="gunicorn")
    parser.add_argument("--worker-class", default="gevent", help="gunicorn's worker class")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=32)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        parser.error("needs wrk on PATH (Debian package: wrk)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mlp_model(Path(tmp), MODEL, max_batch_size=args.max_batch_size, delay_ms=5.0)
        env = {
            "FUSIONSERVE_API_WORKER_CLASS": args.worker_class,
            "FUSIONSERVE_API_SERVER": args.server,
        }
        with served(
            Path(tmp), MODEL, workers=args.workers, api_processes=args.api_processes, **env
        ) as stack:
            url = f"{stack.url}/v2/models/{MODEL}/infer"
            wrk(url, V2_SCRIPT.format(body=v2_body(1)), 2, args.connections, 1)  # warm-up
            scenarios = [
                ("/v2 single item", 1, V2_SCRIPT.format(body=v2_body(1)), url),
                ("/v2 64 rows per request", 64, V2_SCRIPT.format(body=v2_body(64)), url),
                (
                    "/v1 lists of 64, end to end",
                    64,
                    V1_SCRIPT.format(body=v1_body(64), model=MODEL, last_row=63),
                    stack.url,
                ),
            ]
            meter = CpuMeter(stack)
            for name, per_request, script, target in scenarios:
                meter.start()
                r = wrk(target, script, args.duration, args.connections, 1)
                cpu = meter.stop()
                if "finished" in r:  # /v1: count lists finished, not HTTP requests
                    items_per_s = r["finished"] * per_request / args.duration
                else:
                    items_per_s = r["requests_per_s"] * per_request
                items = items_per_s * args.duration
                for part, seconds in cpu.items():  # where the time goes, per item
                    r[f"{part}_us_per_item"] = round(seconds / max(items, 1) * 1e6, 1)
                    r[f"{part}_cores"] = round(seconds / args.duration, 2)
                rows.append({"scenario": name, "items_per_s": round(items_per_s), **r})
    print(
        f"mlp 64-256-256-10, {args.connections} connections, {args.api_processes} API processes "
        f"({args.server}, {args.worker_class}), {args.workers} worker(s), {args.duration}s each\n"
    )
    print(table(rows, ["scenario", "items_per_s", "requests_per_s", "p50_ms", "p99_ms", "non_2xx"]))
    print("\nCPU per item (µs) and cores used, by process group:\n")
    parts = [f"{p}_{k}" for p in ("api", "worker", "redis") for k in ("us_per_item", "cores")]
    print(table(rows, ["scenario", *parts]))
    print(f"\nwrote {write_json('capacity', {'args': vars(args), 'rows': rows})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
