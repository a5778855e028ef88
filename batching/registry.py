"""What the workers published about each model, cached briefly per API process."""

from __future__ import annotations

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
    ready_workers: int

    @property
    def name(self) -> str:
        return self.meta.name

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
            raw, ready = pipe.execute()
        if raw is None:
            return None
        meta = ModelMeta.model_validate_json(raw)
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
