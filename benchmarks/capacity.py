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
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import orjson

from benchmarks.common import served, table, write_json
from fusion.tiny_models import mlp_model

MODEL = "mlp"

V2_SCRIPT = """
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
"""

# /v1 end to end: each connection submits a list, then long-polls its last job until
# done, then submits the next. Counts finished lists per thread for done().
V1_SCRIPT = """
local submit = [[{body}]]
local threads = {{}}
local pending = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) finished = 0; failed = 0 end
function request()
  local job = table.remove(pending)
  if job then return wrk.format("GET", "/v1/jobs/" .. job .. "?wait=10") end
  local headers = {{["Content-Type"] = "application/json"}}
  return wrk.format("POST", "/v1/models/{model}/infer", headers, submit)
end
function response(status, headers, body)
  if status == 202 then
    local last = body:match('"([%w_-]+%.[%d-]+%.{last_row})"')
    if last then table.insert(pending, last) else failed = failed + 1 end
  elseif status == 200 then
    if body:find('"status":"done"', 1, true) then finished = finished + 1
    elseif body:find('"status":"queued"', 1, true) or body:find('"status":"running"', 1, true) then
      table.insert(pending, body:match('"job_id":"([^"]+)"'))
    else failed = failed + 1 end
  else failed = failed + 1 end
end
function done(summary, latency, requests)
  local f, e = 0, 0
  for _, t in ipairs(threads) do f = f + t:get("finished"); e = e + t:get("failed") end
  io.write(string.format("FINISHED %d FAILED %d\\n", f, e))
end
"""


def wrk(url: str, script: str, duration: int, connections: int, threads: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "-s",
        fh.name,
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])}
    for pct in ("50", "99"):
        match = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match[2]]
        result[f"p{pct}_ms"] = round(float(match[1]) * scale, 3)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non_2xx"] = int(errors[1]) if errors else 0
    socket_errors = re.search(r"Socket errors: (.*)", out)
    result["socket_errors"] = socket_errors[1] if socket_errors else ""
    finished = re.search(r"FINISHED (\d+) FAILED (\d+)", out)
    if finished:
        result["finished"], result["failed"] = int(finished[1]), int(finished[2])
    return result


def v2_body(rows: int) -> str:
    x = np.random.default_rng(0).standard_normal((rows, 64)).astype(np.float32).round(4)
    inputs = [{"name": "x", "shape": [rows, 64], "datatype": "FP32", "data": x.ravel().tolist()}]
    return orjson.dumps({"inputs": inputs}).decode()


def v1_body(rows: int) -> str:
    x = np.random.default_rng(0).standard_normal((rows, 64)).astype(np.float32).round(4)
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
            for name, per_request, script, target in scenarios:
                r = wrk(target, script, args.duration, args.connections, 1)
                if "finished" in r:  # /v1: count lists finished, not HTTP requests
                    items_per_s = r["finished"] * per_request / args.duration
                else:
                    items_per_s = r["requests_per_s"] * per_request
                rows.append({"scenario": name, "items_per_s": round(items_per_s), **r})
    print(
        f"mlp 64-256-256-10, {args.connections} connections, {args.api_processes} API processes "
        f"({args.server}, {args.worker_class}), {args.workers} worker(s), {args.duration}s each\n"
    )
    print(table(rows, ["scenario", "items_per_s", "requests_per_s", "p50_ms", "p99_ms", "non_2xx"]))
    print(f"\nwrote {write_json('capacity', {'args': vars(args), 'rows': rows})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
