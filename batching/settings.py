"""Runtime settings from flags and the environment (``FUSIONSERVE_*``, plus plain ``REDIS_URL``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SECRETS_DIR = "/run/secrets"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FUSIONSERVE_",
        extra="ignore",
        # Docker and Kubernetes secrets: /run/secrets/fusionserve_metrics_token and the like
        secrets_dir=SECRETS_DIR if Path(SECRETS_DIR).is_dir() else None,
    )

    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "FUSIONSERVE_REDIS_URL")
    )
    model_repository: Path = Path("model_repository")
    data_dir: Path = Path(".fusionserve")

    # API
    host: str = "127.0.0.1"
    port: int = 8000
    api_processes: int = Field(2, ge=1)
    api_server: Literal["gunicorn", "granian"] = Field(
        "gunicorn", description="gunicorn (gevent workers) or granian (Rust HTTP, WSGI threads)"
    )
    api_threads: int = Field(
        128, ge=1, description="granian: WSGI threads per process (each waiting request holds one)"
    )
    api_worker_class: str = Field(
        "gevent", description="gunicorn worker class; gevent parks long-polls as greenlets"
    )
    redis_max_connections: int = Field(256, ge=2, description="per API process")
    max_wait_s: float = Field(60.0, gt=0, description="longest ?wait= a client may ask for")

    # Slow clients (gunicorn): a stalled request never holds a connection for long
    header_timeout_s: int = Field(
        75,
        ge=1,
        description="a connection whose next request's headers have not arrived this long "
        "after the last response (or after it opened) is closed; also the keep-alive idle time",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a request whose body has not fully arrived this long after its headers "
        "(plus a second per min_body_rate bytes received) is answered 408 and closed",
    )
    min_body_rate: float = Field(
        65_536,
        gt=0,
        description="bytes a second a body must keep arriving at to earn more time than "
        "body_timeout_s (a big upload on a slow link is served; a trickle is not)",
    )

    # Input limits: each is checked before any work is done on what it bounds
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="request body cap")
    max_items: int = Field(
        1024, ge=1, description="most items in one /v1 submission, rows in one /v2 request"
    )
    max_text_chars: int = Field(
        65_536, ge=1, description="longest raw text, in characters, checked before tokenizing"
    )
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="largest raw image (width x height, from its header)"
    )
    max_audio_seconds: float = Field(600.0, gt=0, description="longest raw audio clip")

    # Generation
    max_streams: int = Field(
        256, ge=1, description="token streams (Server-Sent Events) one API process serves at once"
    )

    # Redis faults (a server that stops answering without closing connections)
    redis_min_replicas: int | None = Field(
        None,
        ge=0,
        description="replicas a submission must reach (WAIT) before it is acknowledged; "
        "default: 1 with a redis+sentinel:// URL, else 0",
    )
    redis_timeout_s: float = Field(
        2.0,
        gt=0,
        description="the longest any Redis call waits for an answer (connect, read, a free "
        "pooled connection); past it the API answers 503 with Retry-After, workers retry",
    )

    # Access control
    auth: Literal["off", "keys"] = Field(
        "off", description="keys: every /v1 and /v2 call needs Authorization: Bearer <api key>"
    )
    metrics_token: SecretStr | None = Field(
        None, description="when set, /metrics needs Authorization: Bearer <this token>"
    )

    # Jobs
    result_ttl_s: int = Field(3600, ge=1, description="how long finished results stay readable")
    visibility_timeout_s: float = Field(
        30.0, gt=0, description="an unacked entry idle this long is reclaimed by another worker"
    )
    max_deliveries: int = Field(3, ge=1, description="deliveries before an entry is dead-lettered")
    heartbeat_s: float = Field(2.0, gt=0)
    idempotency_ttl_s: int = Field(
        86_400, ge=1, description="how long an Idempotency-Key returns what it first created"
    )

    # Bulk batches
    batch_dir: Path | None = Field(
        None, description="where batch input files are stored (default: <data_dir>/batches)"
    )
    max_batch_bytes: int = Field(4 * 1024**3, ge=1024, description="largest batch file")
    batch_retention_s: int = Field(
        7 * 86_400, ge=60, description="how long a settled batch's status and results stay"
    )
    batch_window_s: int = Field(
        86_400, ge=1, description="items not run this long after the batch was created expire"
    )
    bulk_window: int = Field(
        8, ge=1, description="most entries a batch keeps queued in the bulk lane at once"
    )
    bulk_nice: int = Field(
        10, ge=0, le=19, description="bulk workers lower their CPU priority by this much"
    )
    ingest_lease_s: float = Field(
        10.0, gt=0, description="an ingest silent this long is presumed dead and restarted"
    )
    sweep_interval_s: float = Field(1.0, gt=0)
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key that signs batch webhooks (required to use them)"
    )
    webhook_max_retries: int = Field(6, ge=0)
    webhook_backoff_s: int = Field(1, ge=1, description="first retry delay; doubles each time")
    webhook_timeout_s: float = Field(
        10.0, gt=0, description="total deadline of one delivery attempt (connect to last byte)"
    )

    # Bulk batches: ingest retries and where webhooks may go
    ingest_max_restarts: int = Field(
        5, ge=0, description="ingests of a batch the sweeper restarts before failing the batch"
    )
    webhook_allow_private: bool = Field(
        False, description="let webhooks reach loopback, private and link-local addresses"
    )
    webhook_allow: str = Field(
        "", description="hosts or host:port, comma-separated, webhooks may reach though not public"
    )

    def batch_path(self) -> Path:
        return self.batch_dir or self.data_dir / "batches"


@lru_cache
def get_settings() -> Settings:
    return Settings()
