"""Run the app under gunicorn with gevent workers (one cooperative process per core).

Gevent workers suit the long-polls: a waiting request is a parked greenlet, not a
blocked OS thread (sync workers cap at workers ÷ latency).
"""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from batching.settings import Settings


class GunicornServer(BaseApplication):
    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self.settings = settings
        self.options = {
            "bind": f"{settings.host}:{settings.port}",
            "workers": settings.api_processes,
            "worker_class": settings.api_worker_class,
            "worker_connections": 2000,
            "keepalive": 75,
            "graceful_timeout": 30,
            "accesslog": None,
            "loglevel": "warning",
            **overrides,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from server.app import create_app

        return create_app(self.settings)


def run_api(settings: Settings) -> int:
    GunicornServer(settings).run()
    return 0
