"""The per-app objects blueprints share: settings, Redis, broker, registry, reply listener."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import current_app

from batching.apikeys import ApiKeys
from batching.broker import Broker
from batching.bulk import BatchStore
from batching.registry import ModelRegistry
from batching.settings import Settings
from server.notify import ReplyListener
from server.queue import JobQueue


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    broker: Broker
    registry: ModelRegistry
    listener: ReplyListener
    queue: JobQueue
    batches: BatchStore
    api_keys: ApiKeys

    @classmethod
    def build(cls, settings: Settings) -> Services:
        if not settings.redis_url:
            raise RuntimeError("REDIS_URL is not set (fusionserve up starts an embedded server)")
        # Requests beyond the pool size wait for a connection (gevent parks them) instead
        # of failing: redis-py's default pool raises past its cap, which looks like an outage.
        pool = redis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.redis_max_connections,
            timeout=5,
            socket_connect_timeout=2,
            health_check_interval=30,
        )
        client = redis.Redis(connection_pool=pool)
        broker, listener = Broker(client), ReplyListener(client)
        return cls(
            settings=settings,
            redis=client,
            broker=broker,
            registry=ModelRegistry(client, settings.heartbeat_s),
            listener=listener,
            queue=JobQueue(broker, listener, settings),
            batches=BatchStore(client),
            api_keys=ApiKeys(client),
        )


def services() -> Services:
    return current_app.extensions["fusionserve"]
