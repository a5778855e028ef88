"""What the workers published about each model, cached briefly per API process.

The view already reflects a repository order no worker has applied yet: from the moment
an unload is written, the model (or the version) is no longer served in this view, so
readiness, listings and submissions follow the order at once.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import redis
from tokenizers import Tokenizer

from batching import keys
from batching.model_config import ModelMeta

CACHE_S = 1.0


@dataclass
class PublishedModel:
    meta: ModelMeta
    tokenizer: Tokenizer | None
    workers: int
    """Workers with a fresh heartbeat for the model (they apply repository orders)."""

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def ready_workers(self) -> int:
        """Workers that run new work for it: none while it serves no version (unloaded)."""
        return self.workers if self.meta.versions else 0

    @property
    def unloaded(self) -> bool:
        """Published, but no version is served: the repository API unloaded it."""
        return not self.meta.versions

    def describe(self) -> dict:
        """The ``GET /v1/models/<m>`` body."""
        return {
            "name": self.meta.name,
            "versions": self.meta.versions,
            "ready": self.ready_workers > 0,
            "inputs": [s.model_dump(exclude={"dim_names"}) for s in self.meta.inputs],
            "outputs": [s.model_dump(exclude={"dim_names"}) for s in self.meta.outputs],
            "config": self.meta.config.model_dump(),
            "workers": self.ready_workers,
        }


class ModelRegistry:
    def __init__(self, client: redis.Redis, heartbeat_s: float) -> None:
        self.redis = client
        self.stale_after_s = 3 * heartbeat_s
        self._cache: dict[str, tuple[float, PublishedModel]] = {}
        self._tokenizers: dict[str, tuple[str, Tokenizer]] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(n.decode() for n in self.redis.smembers(keys.MODELS))

    def get(self, name: str) -> PublishedModel | None:
        if not keys.MODEL_NAME.match(name):
            return None
        cached = self._cache.get(name)
        if cached and time.monotonic() - cached[0] < CACHE_S:
            return cached[1]
        return self.fresh(name)

    def fresh(self, name: str) -> PublishedModel | None:
        """Read past the cache (and refresh it): for callers waiting on a change."""
        model = self._load(name)
        if model is not None:  # a miss is not cached: a model a worker just published is served
            with self._lock:
                self._cache[name] = (time.monotonic(), model)
        return model

    def _load(self, name: str) -> PublishedModel | None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.meta(name), "json")
            pipe.zcount(keys.workers(name), time.time() - self.stale_after_s, "+inf")
            pipe.hmget(keys.control(name), "gen", "order")
            raw, ready, (generation, order) = pipe.execute()
        if raw is None:
            return None
        meta = pending_order(ModelMeta.model_validate_json(raw), generation, order)
        return PublishedModel(meta, self._tokenizer(meta), int(ready))

    def _tokenizer(self, meta: ModelMeta) -> Tokenizer | None:
        if meta.tokenizer_json is None:
            return None
        cached = self._tokenizers.get(meta.name)
        if cached and cached[0] == meta.tokenizer_json:
            return cached[1]
        tokenizer = Tokenizer.from_str(meta.tokenizer_json)
        self._tokenizers[meta.name] = (meta.tokenizer_json, tokenizer)
        return tokenizer


def pending_order(meta: ModelMeta, generation: bytes | None, order: bytes | None) -> ModelMeta:
    """``meta`` with an unload no worker has applied yet already taken out of what it serves."""
    if order is None or int(generation or 0) <= meta.generation:
        return meta
    wanted = json.loads(order)
    if wanted.get("action") != "unload":
        return meta  # a load serves only once a worker has loaded it
    version = wanted.get("version")
    served = [] if version is None else [v for v in meta.versions if v != str(version)]
    return meta.model_copy(update={"versions": served})
