"""The HTTP layer's floor: what each server choice costs before fusionserve does any work.

One sitting, side by side: a Flask app whose one route answers a ``/v2`` body with an
orjson echo (no Redis, no model), served by each candidate beneath Flask, loaded by wrk
with 32 connections and one sample per request. Prints requests/s and server CPU µs per
request. This is the figure the choice of ``FUSIONSERVE_API_SERVER`` rests on: whatever
the API does beyond it is fusionserve's own cost (``benchmarks/capacity.py``).

    python -m benchmarks.http_floor [--duration 8] [--processes 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.capacity import v2_body
from benchmarks.common import cpu_seconds, descendants, table, write_json
from benchmarks.wrk import V2_SCRIPT, wrk

APP = """
import orjson
from flask import Flask, Response, request

def create_app():
    app = Flask("echo")

    @app.post("/v2/models/<name>/infer")
    def infer(name):
        body = orjson.loads(request.get_data())
        return Response(orjson.dumps({"model_name": name, "outputs": body["inputs"]}),
                        content_type="application/json")

    return app
"""

PYWSGI = """
from gevent import monkey; monkey.patch_all()
from gevent.pywsgi import WSGIServer
from echo_app import create_app
WSGIServer(("127.0.0.1", {port}), create_app(), log=None, backlog=1024).serve_forever()
"""

GUNICORN = """
import sys
from gevent import monkey; monkey.patch_all()
from gunicorn.app.wsgiapp import run
sys.argv = ["gunicorn", "-k", "gevent", "-w", "{processes}", "-b", "127.0.0.1:{port}",
            "--worker-connections", "2000", "echo_app:create_app()"]
run()
"""


def commands(processes: int, port: int) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "gunicorn gevent": [py, "-c", GUNICORN.format(processes=processes, port=port)],
        "gevent pywsgi (1 process)": [py, "-c", PYWSGI.format(port=port)],
        "granian wsgi": [
            *(py, "-m", "granian", "--interface", "wsgi", "--factory", "--workers"),
            *(str(processes), "--blocking-threads", "32", "--port", str(port)),
            *("--log-level", "warning", "echo_app:create_app"),
        ],
        "uwsgi gevent": [
            *(
                str(Path(py).parent / "uwsgi"),
                "--http11-socket",
                f"127.0.0.1:{port}",
                "--gevent",
                "2000",
            ),
            *("--processes", str(processes), "--master", "--wsgi-file", "echo_app.py"),
            *("--callable", "app", "--disable-logging", "--die-on-term"),
        ],
    }


def _installed(name: str) -> bool:
    module = name.split()[0]
    return (
        importlib.util.find_spec(module if module != "uwsgi" else "uwsgidecorators") is not None
        or (Path(sys.executable).parent / module).exists()
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"http-floor-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "echo_app.py").write_text(APP)
    script = V2_SCRIPT.format(body=v2_body(1))
    rows = []
    port = free_port()
    for name, cmd in commands(args.processes, port).items():
        if name.split()[0] not in ("gunicorn", "gevent") and not _installed(name):
            print(f"{name}: not installed, left out")
            continue
        server = subprocess.Popen(cmd, cwd=workdir, start_new_session=True)
        try:
            wait_listening(port)
            url = f"http://127.0.0.1:{port}/v2/models/mlp/infer"
            wrk(url, script, 2, args.connections)  # warm-up
            pids = descendants(server.pid)
            before = cpu_seconds(pids)
            r = wrk(url, script, args.duration, args.connections)
            cpu = cpu_seconds(pids) - before
            us = cpu / max(r["requests_per_s"] * args.duration, 1) * 1e6
            rows.append(
                {
                    "server": name,
                    **r,
                    "cores": round(cpu / args.duration, 2),
                    "cpu_us_per_request": round(us),
                }
            )
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
    print(table(rows, ["server", "requests_per_s", "p50_ms", "cores", "cpu_us_per_request"]))
    print(f"\nwrote {write_json('http_floor', {'args': vars(args), 'rows': rows})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
