"""``fusionserve keys create|list|revoke``: manage API keys in Redis (``REDIS_URL``)."""

from __future__ import annotations

import argparse
import sys

import orjson

from batching.apikeys import ApiKeys
from batching.connection import client_from_url
from batching.settings import Settings


def add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", required=True)
    create = sub.add_parser("create", help="make a key; it is printed once, then only its hash")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--rate", type=float, default=50.0, help="requests per second")
    create.add_argument("--burst", type=int, default=100, help="requests at once")
    create.add_argument("--admin", action="store_true", help="may load and unload models")
    sub.add_parser("list", help="every key (never the secret)")
    revoke = sub.add_parser("revoke", help="stop a key at once (within a second)")
    revoke.add_argument("key_id")


def run_keys(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.redis_url:
        print("error: REDIS_URL is not set", file=sys.stderr)
        return 2
    store = ApiKeys(client_from_url(settings.redis_url, settings, purpose="cli"))
    if args.keys_command == "create":
        if args.rate <= 0 or args.burst < 1:
            print("error: --rate must be > 0 and --burst >= 1", file=sys.stderr)
            return 2
        key, token = store.create(args.name, args.rate, args.burst, args.admin)
        print(orjson.dumps({"key": token, **key.public()}, option=orjson.OPT_INDENT_2).decode())
        return 0
    if args.keys_command == "list":
        rows = [k.public() for k in store.list()]
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not store.revoke(args.key_id):
        print(f"error: no key {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0
