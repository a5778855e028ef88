"""API keys on ``/v1`` and ``/v2`` (``FUSIONSERVE_AUTH=keys``): who is calling, within
what rate, and which jobs and batches are theirs.

Health (``/healthz``, ``/readyz``, ``/v2/health/*``) stays open for load balancers and
orchestrators; ``/metrics`` takes its own token when ``FUSIONSERVE_METRICS_TOKEN`` is
set. A key's id is its tenant: what it creates answers only to it (anyone else gets the
same 404 as for an id that does not exist, so ids reveal nothing).

Operator data counts every tenant's work, so with keys on it needs an admin key (a plain
key gets 403): global statistics (``/v1/stats``, ``/v2/models/<m>[/versions/<v>]/stats``),
``/metrics`` (or its token), and the repository API. ``/console/sample`` (generated
sample data, CPU spent per call) needs a key, any key, and counts against its rate.
"""

from __future__ import annotations

import hmac
import math
import threading
import time

from flask import Flask, g, request
from pydantic import SecretStr

from batching.apikeys import ApiKey, ApiKeys
from server.errors import ApiError
from server.services import services

OPEN = ("/healthz", "/readyz", "/v2/health/", "/openapi.json")
"""Open to all. The console's page and scripts are open too (not under /v1): its data
comes from /v1 calls that carry the key the operator types in."""
KEYED_ENDPOINTS = frozenset({"console.sample", "metrics.metrics"})
"""Outside /v1 and /v2, yet behind a key when keys are on."""
ADMIN_ENDPOINTS = frozenset({"stats.stats", "v2.model_stats", "metrics.metrics"})
"""Operator data (counts across tenants): an admin key, or for /metrics its token."""
CACHE_S = 1.0
"""How long a process trusts a key lookup: a revoked key stops working within this."""


class KeyCache:
    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def lookup(self, store: ApiKeys, token: str) -> ApiKey | None:
        now = time.monotonic()
        hit = self._entries.get(token)
        if hit and now - hit[0] < CACHE_S:
            return hit[1]
        key = store.authenticate(token)
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[token] = (now, key)
        return key


def tenant() -> str:
    """The calling key's id, or "" when keys are off (then everything is everyone's)."""
    return getattr(g, "tenant", "")


def owns(owner: str | None) -> bool:
    return not tenant() or (owner or "") == tenant()


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, www_authenticate="Bearer")


def register(app: Flask) -> None:
    cache = KeyCache()

    @app.before_request
    def _authenticate() -> None:
        svc = services()
        path, endpoint = request.path, request.endpoint or ""
        if endpoint == "metrics.metrics" and _metrics_token_ok(svc.settings.metrics_token):
            return
        if svc.settings.auth == "off" or path.startswith(OPEN):
            if endpoint == "metrics.metrics" and svc.settings.metrics_token is not None:
                raise _unauthorized("/metrics needs Authorization: Bearer <metrics token>")
            return
        if not path.startswith(("/v1/", "/v2")) and endpoint not in KEYED_ENDPOINTS:
            return
        token = _bearer()
        if token is None:
            if endpoint == "metrics.metrics":
                raise _unauthorized("/metrics needs the metrics token or an admin API key")
            raise _unauthorized("this server needs an API key: Authorization: Bearer <key>")
        key = cache.lookup(svc.api_keys, token)
        if key is None:
            raise _unauthorized("unknown or revoked API key")
        if not key.admin:
            if path.startswith("/v2/repository"):
                raise ApiError(403, "forbidden", "loading and unloading models needs an admin key")
            if endpoint in ADMIN_ENDPOINTS:
                raise ApiError(
                    403, "forbidden", f"{path} counts every tenant's work: it needs an admin key"
                )
        wait_s = svc.api_keys.throttle(key)
        if wait_s > 0:
            raise ApiError(
                429,
                "rate_limited",
                f"API key {key.id} is over its rate of {key.rate_per_s:g} requests/s",
                retry_after=max(1, math.ceil(wait_s)),
            )
        g.tenant = key.id


def _metrics_token_ok(expected: SecretStr | None) -> bool:
    """The request carries /metrics' own token (when one is set)."""
    return expected is not None and hmac.compare_digest(
        (_bearer() or "").encode(), expected.get_secret_value().encode()
    )
