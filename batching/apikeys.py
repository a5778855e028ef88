"""API keys: created by ``fusionserve keys``, stored hashed in Redis, checked per request.

A key looks like ``fsk_<id>_<secret>``. Redis keeps its SHA-256 (a lookup key) and a
record with its name, rate limit and whether it is revoked; the raw key is shown once,
at creation, and never stored or logged. The key's id names its tenant: jobs and
batches it creates answer only to it.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict, dataclass

import orjson
import redis

from batching import keys
from batching.broker import load_script


@dataclass
class ApiKey:
    id: str
    name: str
    digest: str
    rate_per_s: float
    burst: int
    admin: bool = False
    created_at: float = 0.0
    revoked: bool = False

    def public(self) -> dict:
        """What ``keys list`` shows: everything but the digest."""
        return {k: v for k, v in asdict(self).items() if k != "digest"}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class ApiKeys:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._bucket = load_script(client, "ratelimit")

    def create(
        self, name: str, rate_per_s: float = 50.0, burst: int = 100, admin: bool = False
    ) -> tuple[ApiKey, str]:
        """A new key and its secret token (shown once: only its digest is kept)."""
        key_id = secrets.token_hex(6)
        token = f"fsk_{key_id}_{secrets.token_urlsafe(24)}"
        record = ApiKey(key_id, name, digest(token), rate_per_s, burst, admin, time.time())
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.API_KEYS, key_id, orjson.dumps(asdict(record)))
            pipe.set(keys.api_key_digest(record.digest), key_id)
            pipe.execute()
        return record, token

    def get(self, key_id: str) -> ApiKey | None:
        raw = self.redis.hget(keys.API_KEYS, key_id)
        return ApiKey(**orjson.loads(raw)) if raw else None

    def list(self) -> list[ApiKey]:
        records = [ApiKey(**orjson.loads(v)) for v in self.redis.hvals(keys.API_KEYS)]
        return sorted(records, key=lambda k: k.created_at)

    def revoke(self, key_id: str) -> bool:
        record = self.get(key_id)
        if record is None:
            return False
        record.revoked = True
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.API_KEYS, key_id, orjson.dumps(asdict(record)))
            pipe.delete(keys.api_key_digest(record.digest))
            pipe.execute()
        return True

    def authenticate(self, token: str) -> ApiKey | None:
        """The live key this token is, or None (unknown, malformed or revoked)."""
        if not token.startswith("fsk_") or len(token) > 200:
            return None
        key_id = self.redis.get(keys.api_key_digest(digest(token)))
        record = self.get(key_id.decode()) if key_id else None
        return record if record is not None and not record.revoked else None

    def throttle(self, key: ApiKey) -> float:
        """0 when the key may make a request now, else the seconds until it may."""
        wait_ms = self._bucket(keys=[keys.rate_bucket(key.id)], args=[key.rate_per_s, key.burst])
        return int(wait_ms) / 1000.0
