"""Liveness and readiness: ``/healthz`` (the process answers) and ``/readyz`` (it can serve)."""

from __future__ import annotations

import redis
from flask import Blueprint, jsonify

from server.services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Ready when Redis answers and at least one worker serves some model."""
    svc = services()
    try:
        svc.redis.ping()
        models = {name: svc.registry.get(name) for name in svc.registry.names()}
    except redis.RedisError as exc:
        body = {"status": "unavailable", "redis": False, "reason": f"redis: {exc}"}
        return jsonify(body), 503
    workers = {name: (m.ready_workers if m else 0) for name, m in models.items()}
    ready = any(workers.values())
    body = {"status": "ready" if ready else "no_workers", "redis": True, "workers": workers}
    return jsonify(body), 200 if ready else 503
