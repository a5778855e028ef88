"""wrk, the C load generator, driven from Python: scripts for /v2 and /v1, output parsed."""

from __future__ import annotations

import re
import subprocess
import tempfile

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


def wrk(url: str, script: str, duration: int, connections: int, threads: int = 1) -> dict:
    """Run wrk with ``script`` against ``url``; requests/s, p50/p99 ms, errors (and /v1 counts)."""
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
