"""Signed webhooks: ``Fusionserve-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>``.

The MAC covers ``"<t>." + body`` under the shared secret, so a receiver can check both
who sent a delivery and when: one replayed later than ``tolerance_s`` is refused (the
same scheme as Stripe's, so receivers know it).
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Fusionserve-Signature"


def sign(secret: bytes, body: bytes, at: int | None = None) -> str:
    """The signature header value for ``body`` sent at unix time ``at`` (now by default)."""
    at = int(time.time()) if at is None else at
    return f"t={at},v1={_mac(secret, body, at)}"


def verify(secret: bytes, body: bytes, header: str, tolerance_s: float = 300.0) -> bool:
    """True when ``header`` signs exactly ``body`` under ``secret`` within ``tolerance_s``."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        at = int(parts["t"])
        given = parts["v1"]
    except (KeyError, ValueError):
        return False
    if abs(time.time() - at) > tolerance_s:
        return False
    return hmac.compare_digest(given, _mac(secret, body, at))


def _mac(secret: bytes, body: bytes, at: int) -> str:
    return hmac.new(secret, f"{at}.".encode() + body, hashlib.sha256).hexdigest()
