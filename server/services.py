"""The per-app objects blueprints share: settings, Redis, broker, registry, reply listener."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import current_app

from batching import tokens
from batching.apikeys import ApiKeys
from batching.broker import Broker
from batching.bulk import BatchStore
from batching.connection import client_from_url, replicas_to_wait
from batching.registry import ModelRegistry
from batching.settings import Settings
from server.notify import ReplyListener
from server.queue import JobQueue


@dataclass
class Services:
    settings: Settings
    redis: redis.Redis
    streams: redis.Redis
    """Blocking reads of token streams (server/generate.py), on a pool of their own."""
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
        # Every call is bounded by settings.redis_timeout_s (a frozen Redis answers 503,
        # never a hang); requests past the pool size wait for a connection, as long.
        client = client_from_url(settings.redis_url, settings, purpose="api")
        listener = ReplyListener(
            client_from_url(settings.redis_url, settings, purpose="listener"),
            settings.redis_timeout_s,
        )
        wait_ms = int(settings.redis_timeout_s * 500)  # half the timeout: the pipeline's reply fits
        broker = Broker(client, replicas_to_wait(settings), wait_ms)
        return cls(
            settings=settings,
            redis=client,
            streams=client_from_url(
                settings.redis_url, settings, purpose="stream", block_s=tokens.READ_BLOCK_MS / 1000
            ),
            broker=broker,
            registry=ModelRegistry(client, settings.heartbeat_s),
            listener=listener,
            queue=JobQueue(broker, listener, settings),
            batches=BatchStore(client),
            api_keys=ApiKeys(client),
        )


def services() -> Services:
    return current_app.extensions["fusionserve"]
