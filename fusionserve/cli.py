"""The ``fusionserve`` command: ``up``, ``api``, ``worker``, ``bulk-worker``, ``batch``, ``export``,
``loadtest``, ``bench``."""

from __future__ import annotations

import os
import sys

_GEVENT = (
    os.environ.get("FUSIONSERVE_API_SERVER", "gunicorn") == "gunicorn"
    and os.environ.get("FUSIONSERVE_API_WORKER_CLASS", "gevent") == "gevent"
)
if "api" in sys.argv[1:3] and _GEVENT:  # gevent must patch sockets and ssl before any import
    from gevent import monkey

    monkey.patch_all()

import argparse
import logging
from pathlib import Path
from typing import Any

from batching.settings import Settings
from fusionserve.paths import PACKAGE, shipped_model_repository

BENCHMARKS = (
    "ceiling",
    "overhead",
    "capacity",
    "perf_analyzer",
    "adaptive",
    "bulk",
    "compression",
    "transfer",
    "scaleout",
    "soak",
    "generation",
)


def _settings(args: argparse.Namespace, **fields: Any) -> Settings:
    """Flags override the environment; unset flags leave it alone. With no repository named
    (flag or ``FUSIONSERVE_MODEL_REPOSITORY``) and no ``model_repository/`` in the working
    directory, the models that ship with fusionserve are served."""
    given = {k: v for k, v in fields.items() if v is not None}
    settings = Settings(**given)
    if "model_repository" not in settings.model_fields_set and not (
        settings.model_repository.is_dir()
    ):
        settings.model_repository = shipped_model_repository()
    return settings


def _serving_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 8000)")
    parser.add_argument("--processes", type=int, help="API processes (default 2)")


def _repository_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-repository",
        type=Path,
        help="model repository directory (default: ./model_repository if there is one,"
        " else the models shipped with fusionserve)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionserve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run Redis (embedded unless REDIS_URL is set), API and workers")
    _serving_flags(up)
    _repository_flag(up)
    up.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    up.add_argument(
        "--redis",
        choices=("single", "sentinel"),
        default="single",
        help="without REDIS_URL: one embedded Valkey (default), or sentinel: a master, a "
        "replica and three sentinels, to try failover on one machine",
    )

    api = sub.add_parser("api", help="run the HTTP API under gunicorn (needs REDIS_URL)")
    _serving_flags(api)

    worker = sub.add_parser("worker", help="run a model worker (needs REDIS_URL)")
    _repository_flag(worker)
    worker.add_argument("models", nargs="*", help="models to serve (default: all)")

    bulk = sub.add_parser(
        "bulk-worker", help="run an RQ worker for batch ingest and webhooks (needs REDIS_URL)"
    )
    bulk.add_argument(
        "--queue",
        action="append",
        choices=["fusionserve-bulk", "fusionserve-webhooks"],
        help="RQ queue to serve (repeatable; default: fusionserve-bulk here, and"
        " fusionserve-webhooks in a second process, so a slow webhook never delays an ingest)",
    )

    keys = sub.add_parser("keys", help="create, list and revoke API keys (needs REDIS_URL)")
    from fusionserve.keys import add_keys_arguments

    add_keys_arguments(keys)

    batch = sub.add_parser("batch", help="submit a bulk batch, follow it, fetch its results")
    from fusionserve.client.cli import add_batch_arguments

    add_batch_arguments(batch)

    export = sub.add_parser("export", help="train a fusion model and export it to ONNX")
    from fusionserve.zoo.cli import add_export_arguments

    add_export_arguments(export)

    loadtest = sub.add_parser("loadtest", help="drive a server with closed- or open-loop load")
    from fusionserve.loadtest.cli import add_loadtest_arguments

    add_loadtest_arguments(loadtest)

    bench = sub.add_parser("bench", help="run a benchmark from a checkout's benchmarks/")
    bench.add_argument(
        "--results-dir",
        type=Path,
        help="where its report goes (default: FUSIONSERVE_BENCHMARK_RESULTS, else"
        " ./benchmark-results)",
    )
    bench.add_argument("name", choices=BENCHMARKS, help="which benchmark")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="its own arguments")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    if args.command == "up":
        from fusionserve.up import run_up

        settings = _settings(
            args,
            host=args.host,
            port=args.port,
            api_processes=args.processes,
            model_repository=args.model_repository,
        )
        if args.redis != "single" and settings.redis_url:
            print("error: --redis starts an embedded Redis; REDIS_URL is set", file=sys.stderr)
            return 2
        return run_up(settings, args.workers, args.redis)
    if args.command == "api":
        from server.serve import run_api

        settings = _settings(args, host=args.host, port=args.port, api_processes=args.processes)
        return run_api(settings)
    if args.command == "worker":
        from worker.main import run_worker

        return run_worker(_settings(args, model_repository=args.model_repository), args.models)
    if args.command == "bulk-worker":
        from worker.bulk import run_bulk_worker

        return run_bulk_worker(_settings(args), args.queue)
    if args.command == "keys":
        from fusionserve.keys import run_keys

        return run_keys(args, _settings(args))
    if args.command == "batch":
        from fusionserve.client.cli import run_batch

        return run_batch(args)
    if args.command == "export":
        from fusionserve.zoo.cli import run_export

        return run_export(args)
    if args.command == "loadtest":
        from fusionserve.loadtest.cli import run_loadtest

        return run_loadtest(args)
    if args.command == "bench":
        import importlib

        # benchmarks/ lives in the repository and is not installed: run from a checkout
        checkouts = [Path.cwd(), PACKAGE.parent]
        root = next((d for d in checkouts if (d / "benchmarks" / "__init__.py").is_file()), None)
        if root is None:
            print("fusionserve bench: run it in a checkout of the repository", file=sys.stderr)
            return 2
        sys.path.insert(0, str(root))
        if args.results_dir is not None:
            os.environ["FUSIONSERVE_BENCHMARK_RESULTS"] = str(args.results_dir)
        sys.argv = [f"fusionserve bench {args.name}", *args.args]
        return importlib.import_module(f"benchmarks.{args.name}").main()
    return 2


if __name__ == "__main__":
    sys.exit(main())
