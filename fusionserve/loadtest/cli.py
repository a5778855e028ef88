"""``fusionserve loadtest`` (and ``python -m fusionserve.loadtest``): flags, the sweep, the report.

Exit status: 0 when every request succeeded, 1 when some failed, 2 when the run could not
start (bad flags, server unreachable, unknown model, payload that does not fit).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from fusionserve.client import Client, FusionServeError
from fusionserve.loadtest.payloads import PayloadError, build
from fusionserve.loadtest.runner import RunSettings, run_sweep
from fusionserve.loadtest.stats import format_table, report

DEFAULT_DURATION_S = 10.0


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,4,16, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("values must be >= 1")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 100,200, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError("rates must be > 0")
    return values


def add_loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    """The loadtest flags, for ``fusionserve loadtest`` or a standalone parser."""
    parser.add_argument(
        "--url",
        default="http://127.0.0.1:8000",
        help="the one server to load; nothing else is contacted (default: loopback, port 8000)",
    )
    parser.add_argument("--model", default="demo", help="model to load (default demo)")
    parser.add_argument(
        "--mode",
        choices=("closed", "open"),
        help="closed: N concurrent clients; open: Poisson arrivals at a rate "
        "(default: open if --rates is given, else closed)",
    )
    parser.add_argument(
        "--concurrency", type=_ints, default=[1], help="closed loop clients; a list sweeps: 1,4,16"
    )
    parser.add_argument(
        "--rates",
        "--rate",
        dest="rates",
        type=_floats,
        help="open loop arrivals per second; a list sweeps: 100,200,400",
    )
    parser.add_argument(
        "--duration", type=float, help=f"seconds per sweep point (default {DEFAULT_DURATION_S:g})"
    )
    parser.add_argument("--requests", type=int, help="requests per sweep point (instead of time)")
    parser.add_argument(
        "--api",
        choices=("v1", "v2"),
        default="v1",
        help="v1: submit then long-poll the job; v2: synchronous KServe V2 infer",
    )
    parser.add_argument(
        "--payload",
        default="auto",
        help="synthetic (text+image from the shapes data set), random (tensors from the "
        "model's signature), or a JSONL file of /v1 items (default: synthetic for models "
        "with text/image preprocessing on v1, else random)",
    )
    parser.add_argument(
        "--items-per-request", type=int, default=1, help="items per submission / V2 batch rows"
    )
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--plot", type=Path, help="draw latency vs throughput to this PNG")
    parser.add_argument("--seed", type=int, default=0, help="payload and arrival seed")
    parser.add_argument(
        "--wait", type=float, default=30.0, help="long-poll seconds per GET (v1, default 30)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds one request may take, submit to final result (default 60)",
    )
    parser.add_argument(
        "--max-time",
        type=float,
        default=600.0,
        help="hard cap on one sweep point's wall time, draining included (default 600)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        help="connection pool size (default: the concurrency; 256 for the open loop)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no live status line")


def _check(args: argparse.Namespace) -> str | None:
    """A usage error, or None."""
    if args.mode == "open" and not args.rates:
        return "--mode open needs --rates"
    if args.mode == "closed" and args.rates:
        return "--rates is for --mode open; use --concurrency for the closed loop"
    if args.duration is not None and args.duration <= 0:
        return "--duration must be > 0"
    if args.requests is not None and args.requests < 1:
        return "--requests must be >= 1"
    if args.items_per_request < 1:
        return "--items-per-request must be >= 1"
    if not 0 < args.wait <= 60:
        return "--wait must be in (0, 60] seconds"
    if args.timeout <= 0 or args.max_time <= 0:
        return "--timeout and --max-time must be > 0"
    return None


def _points(args: argparse.Namespace, mode: str, duration: float | None) -> list[RunSettings]:
    common = {
        "url": args.url,
        "model": args.model,
        "api": args.api,
        "mode": mode,
        "duration": duration,
        "requests": args.requests,
        "wait_s": args.wait,
        "timeout_s": args.timeout,
        "max_time_s": args.max_time,
        "connections": args.connections,
        "seed": args.seed,
        "progress": not args.no_progress,
    }
    if mode == "open":
        return [RunSettings(rate=r, **common) for r in args.rates]
    return [RunSettings(concurrency=c, **common) for c in args.concurrency]


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_loadtest(args: argparse.Namespace) -> int:
    """Run the sweep the flags describe, print the table, write ``--json``/``--plot``."""
    problem = _check(args)
    if problem:
        print(f"loadtest: {problem}", file=sys.stderr)
        return 2
    mode = args.mode or ("open" if args.rates else "closed")
    duration = args.duration
    if duration is None and args.requests is None:
        duration = DEFAULT_DURATION_S
    if not is_loopback(args.url):
        print(
            f"loadtest: note: sending load to {args.url}, not a loopback address", file=sys.stderr
        )
    try:
        with Client(args.url, timeout=10, max_retries=2) as client:
            model = client.model(args.model)
        payloads = build(args.payload, args.api, model, args.items_per_request, args.seed)
    except (FusionServeError, PayloadError, OSError) as exc:
        print(f"loadtest: cannot start: {exc}", file=sys.stderr)
        return 2
    if not model.ready:
        print(f"loadtest: warning: model {args.model} has no ready worker", file=sys.stderr)
    points = _points(args, mode, duration)
    summaries = run_sweep(points, payloads)
    print(format_table(summaries))
    config = {
        "url": args.url,
        "model": args.model,
        "api": args.api,
        "mode": mode,
        "sweep": [p.label for p in points],
        "duration_s": duration,
        "requests": args.requests,
        "items_per_request": args.items_per_request,
        "payload": payloads.source,
        "seed": args.seed,
        "wait_s": args.wait,
        "timeout_s": args.timeout,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "generator_cpus": os.cpu_count(),
    }
    if args.json:
        args.json.write_text(json.dumps(report(config, summaries), indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        from fusionserve.loadtest.plot import plot

        try:
            plot(summaries, args.plot, f"{args.model} ({args.api}, {mode} loop)")
        except RuntimeError as exc:
            print(f"loadtest: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {args.plot}")
    return 1 if any(s.failed for s in summaries) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadtest", description=__doc__)
    add_loadtest_arguments(parser)
    return run_loadtest(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
