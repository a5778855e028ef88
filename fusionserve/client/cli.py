"""``fusionserve batch submit|status|results|cancel``: bulk batches from the shell."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import orjson
from tqdm import tqdm

from fusionserve.client.errors import FusionServeError
from fusionserve.client.sync import Client

FINAL = frozenset({"completed", "failed", "cancelled"})


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("FUSIONSERVE_URL", "http://127.0.0.1:8000"),
        help="server (default $FUSIONSERVE_URL or http://127.0.0.1:8000)",
    )
    sub = parser.add_subparsers(dest="batch_command", required=True)
    submit = sub.add_parser("submit", help="upload a JSONL file of items as a batch")
    submit.add_argument("file", type=Path, help="one JSON item per line (optional custom_id)")
    submit.add_argument("--model", required=True)
    submit.add_argument("--webhook-url", help="POSTed a signed summary when the batch ends")
    submit.add_argument("--priority", type=int, help="default: the bulk lane")
    submit.add_argument("--idempotency-key", help="a retry with the same key makes no new batch")
    submit.add_argument("--wait", action="store_true", help="show progress until it ends")
    status = sub.add_parser("status", help="a batch's status and counts (JSON)")
    status.add_argument("batch_id")
    results = sub.add_parser("results", help="download a batch's results (JSONL)")
    results.add_argument("batch_id")
    results.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    cancel = sub.add_parser("cancel", help="cancel a batch: queued items never run")
    cancel.add_argument("batch_id")


def run_batch(args: argparse.Namespace) -> int:
    try:
        with Client(args.url, timeout=60) as client:
            return COMMANDS[args.batch_command](client, args)
    except FusionServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _submit(client: Client, args: argparse.Namespace) -> int:
    size = args.file.stat().st_size
    with tqdm(total=size, unit="B", unit_scale=True, desc="upload", disable=None) as bar:
        created = client.submit_batch(
            args.model,
            args.file,
            webhook_url=args.webhook_url,
            priority=args.priority,
            idempotency_key=args.idempotency_key,
            on_bytes=bar.update,
        )
    print(created["batch_id"])
    if not args.wait:
        return 0
    status = _follow(client, created["batch_id"])
    print(orjson.dumps(status["counts"]).decode(), file=sys.stderr)
    return 0 if status["status"] == "completed" else 1


def _follow(client: Client, batch_id: str, every_s: float = 0.5) -> dict:
    """Poll the batch's counters into a progress bar until it ends."""
    status = client.batch(batch_id)
    with tqdm(total=status["counts"]["total"], unit="item", desc=batch_id, disable=None) as bar:
        while True:
            counts = status["counts"]
            bar.n = counts["total"] - counts["queued"]
            bar.set_postfix(status=status["status"], failed=counts["failed"], refresh=False)
            bar.refresh()
            if status["status"] in FINAL and counts["queued"] == 0:
                return status
            time.sleep(every_s)
            status = client.batch(batch_id)


def _status(client: Client, args: argparse.Namespace) -> int:
    print(orjson.dumps(client.batch(args.batch_id), option=orjson.OPT_INDENT_2).decode())
    return 0


def _results(client: Client, args: argparse.Namespace) -> int:
    out = args.output.open("wb") if args.output else sys.stdout.buffer
    try:
        for row in client.batch_results(args.batch_id):
            out.write(orjson.dumps(row) + b"\n")
    finally:
        if args.output:
            out.close()
    return 0


def _cancel(client: Client, args: argparse.Namespace) -> int:
    print(orjson.dumps(client.cancel_batch(args.batch_id), option=orjson.OPT_INDENT_2).decode())
    return 0


COMMANDS = {"submit": _submit, "status": _status, "results": _results, "cancel": _cancel}
