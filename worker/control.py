"""The worker's control thread: heartbeats, and repository orders applied without a restart.

The repository API writes an order (``load``: re-read the model's directory and serve
what its version policy selects; ``unload``: stop serving one version, or all) into
the model's control hash and bumps its generation. Every heartbeat interval, each worker
compares generations, applies a new order, publishes what it now serves (with the
generation, also when it serves nothing: the API answers the order on it), and drops
draining versions no unfinished entry is pinned to. Heartbeats run on a thread of their
own, so a version loading for longer than the staleness window never makes the worker
look gone.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import redis

from batching import keys
from batching.broker import Broker
from batching.model_config import ModelMeta
from worker.versions import ModelVersions

log = logging.getLogger(__name__)


def publish(client: redis.Redis, versions: ModelVersions, generation: int = 0) -> None:
    """Make what this worker serves visible to API processes (which hold no model files).

    Also when it serves nothing (every version unloaded): the API waits for ``generation``
    to be published to answer the order, and readiness follows ``versions`` being empty.
    The signature is then the last one loaded, else the one already published.
    """
    files = versions.files
    runtime = versions.newest() or versions.runtime_for(max(versions.draining, default=0))
    signature = (runtime.inputs, runtime.outputs) if runtime else versions.signature
    if signature is None:
        raw = client.hget(keys.meta(files.name), "json")
        if raw is None:
            log.warning("%s: serves no version and was never published", files.name)
            return
        before = ModelMeta.model_validate_json(raw)
        signature = (before.inputs, before.outputs)
    meta = ModelMeta(
        name=files.name,
        versions=[str(v) for v in versions.serving],
        available=[str(v) for v in files.versions],
        inputs=signature[0],
        outputs=signature[1],
        config=files.config,
        tokenizer_json=files.tokenizer_json(),
        generation=generation,
    )
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(keys.meta(files.name), mapping={"json": meta.model_dump_json()})
        if versions.serving:
            pipe.sadd(keys.accepting(files.name), *versions.serving)
        pipe.sadd(keys.MODELS, files.name)
        pipe.execute()


def target_of(order: dict | None, versions: ModelVersions) -> list[int]:
    """The versions to serve after ``order`` (none yet: the version policy)."""
    if order and order.get("action") == "unload":
        version = order.get("version")
        return [] if version is None else [v for v in versions.serving if v != int(version)]
    return versions.policy_target()


class Control(threading.Thread):
    def __init__(
        self,
        client: redis.Redis,
        broker: Broker,
        worker_id: str,
        models: list[ModelVersions],
        every_s: float,
        done_counters: dict[str, Callable[[], int]] | None = None,
    ) -> None:
        super().__init__(name="control", daemon=True)
        self.client, self.broker, self.worker_id = client, broker, worker_id
        self.models, self.every_s = models, every_s
        self.generations: dict[str, int] = {}
        self.done_counters = done_counters or {}
        self._last_done: dict[str, tuple[float, int]] = {}
        self.stopped = threading.Event()

    def beat(self) -> None:
        """Heartbeat, and this worker's measured drain rate (for 429's Retry-After)."""
        now = time.time()
        with self.client.pipeline(transaction=False) as pipe:
            for model in self.models:
                pipe.zadd(keys.workers(model.name), {self.worker_id: now})
                pipe.zremrangebyscore(keys.workers(model.name), 0, now - 10 * self.every_s)
                counter = self.done_counters.get(model.name)
                if counter is not None:
                    done = counter()
                    before = self._last_done.get(model.name)
                    self._last_done[model.name] = (now, done)
                    if before is not None and now > before[0]:
                        rate = (done - before[1]) / (now - before[0])
                        pipe.hset(
                            keys.drain_rates(model.name), self.worker_id, f"{rate:.3f},{now:.0f}"
                        )
            pipe.execute()

    def sync(self) -> None:
        """Apply new repository orders; drop drained versions; publish any change."""
        for model in self.models:
            raw_generation, order = self.client.hmget(keys.control(model.name), "gen", "order")
            generation = int(raw_generation or 0)
            changed = model.name not in self.generations
            if changed or generation != self.generations[model.name]:
                self.generations[model.name] = generation
                model.apply(target_of(json.loads(order) if order else None, model))
                changed = True
            dropped = model.drop_drained(lambda v, name=model.name: self.broker.pinned(name, v))
            if changed or dropped:
                publish(self.client, model, generation)

    def run(self) -> None:
        """Heartbeats here; orders on a thread of their own, since loading a version takes
        longer than a heartbeat and a silent worker would count as not ready meanwhile."""
        threading.Thread(target=self._apply_orders, name="control-orders", daemon=True).start()
        while not self.stopped.wait(self.every_s):
            try:
                self.beat()
            except Exception:  # a Redis hiccup must not stop heartbeats
                log.exception("heartbeat failed")

    def _apply_orders(self) -> None:
        while not self.stopped.wait(self.every_s):
            try:
                self.sync()
            except Exception:  # a Redis hiccup or a bad model file must not stop the next try
                log.exception("applying repository orders failed")

    def leave(self) -> None:
        self.stopped.set()
        with self.client.pipeline(transaction=False) as pipe:
            for model in self.models:
                pipe.zrem(keys.workers(model.name), self.worker_id)
                pipe.hdel(keys.drain_rates(model.name), self.worker_id)
            pipe.execute()
