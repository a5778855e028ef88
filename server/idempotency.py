"""The ``Idempotency-Key`` header: a retried request returns what the first one created.

A client that timed out on ``POST /v1/models/<m>/infer`` or ``POST /v1/batches`` cannot
know whether its work was enqueued; sent again with the same key, the request returns
the original job or batch instead of creating a second one, for ``idempotency_ttl_s``.
The key is remembered with a fingerprint of the request: reusing a key for a
different request is an error (422), never a silent replay of the wrong thing.
"""

from __future__ import annotations

import hashlib
import re

from flask import request

from server.errors import invalid

HEADER = "Idempotency-Key"
KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def idempotency_key() -> str | None:
    """The request's key (printable ASCII, at most 255 characters), or None."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not KEY.match(key):
        raise invalid(f"{HEADER} must be 1-255 printable ASCII characters without spaces")
    return key


def fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()
