"""What the benchmark scripts share: a served stack on loopback, timing, tables and JSON."""

from __future__ import annotations

import http.client
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from fusionserve.embedded import EmbeddedRedis
from fusionserve.launch import LocalStack

ROOT = Path(__file__).resolve().parent.parent
# Where results go: a directory the user names (`fusionserve bench --results-dir`, or the
# variable), default ./benchmark-results. benchmarks/results holds the reports the docs quote.
RESULTS = Path(os.environ.get("FUSIONSERVE_BENCHMARK_RESULTS", "benchmark-results"))


def machine() -> dict[str, Any]:
    import onnxruntime

    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }


@contextmanager
def served(
    repository: Path,
    model: str,
    *,
    workers: int = 1,
    api_processes: int = 2,
    ort_threads: int = 1,
    **env: str,
) -> Iterator[LocalStack]:
    """Embedded Valkey, the API and ``workers`` workers, all on loopback, stopped afterwards."""
    with EmbeddedRedis(
        Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{os.getpid()}", appendonly=False
    ) as redis:
        stack = LocalStack(redis.url, repository, FUSIONSERVE_ORT_THREADS=str(ort_threads), **env)
        stack.redis_pid = redis.process.pid  # type: ignore[attr-defined]
        try:
            stack.start_api(processes=api_processes)
            for _ in range(workers):
                stack.start_worker(model)
            stack.wait_ready(model, workers)
            yield stack
        finally:
            stack.stop()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (gunicorn's and granian's workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time used so far by ``pids`` (from /proc, in seconds)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


class CpuMeter:
    """CPU seconds spent by the API, the workers and Redis between ``start`` and ``stop``."""

    def __init__(self, stack: LocalStack) -> None:
        api = [p.pid for p in stack.procs if p not in stack.workers]
        self.groups = {
            "api": [d for pid in api for d in descendants(pid)],
            "worker": [p.pid for p in stack.workers],
            "redis": [stack.redis_pid],  # type: ignore[attr-defined]
        }
        self.before: dict[str, float] = {}

    def start(self) -> None:
        self.before = {k: cpu_seconds(v) for k, v in self.groups.items()}

    def stop(self) -> dict[str, float]:
        return {k: cpu_seconds(v) - self.before[k] for k, v in self.groups.items()}


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p90_ms": round(float(np.percentile(ms, 90)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
    }


class Connection:
    """One keep-alive HTTP/1.1 connection with as little client overhead as the stdlib allows."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port))

    def post(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        self.conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        return response.status, orjson.loads(response.read())

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        return response.status, orjson.loads(response.read())


def timed(fn, *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths, strict=True))
        )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return "" if value is None else str(value)


def _portable(value: Any) -> Any:
    """No machine paths in a report: a file's absolute path (not a name like "/v2 single item")
    becomes relative to the repository, or its bare name outside it."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_portable(v) for v in value]
    if isinstance(value, Path | str) and os.path.isabs(value) and os.path.exists(value):
        path = Path(value)
        return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name)
    return str(value) if isinstance(value, Path) else value


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), "argv": sys.argv, **payload}
    path.write_text(json.dumps(_portable(payload), indent=2))
    return path


def v2_body(tensors: dict[str, np.ndarray]) -> bytes:
    """A KServe V2 JSON request body holding ``tensors`` (batch dimension included)."""
    from batching.model_config import NUMPY_TO_V2

    inputs = [
        {
            "name": k,
            "shape": list(v.shape),
            "datatype": NUMPY_TO_V2[v.dtype.name],
            "data": v.ravel().tolist(),
        }
        for k, v in tensors.items()
    ]
    return orjson.dumps({"inputs": inputs})
