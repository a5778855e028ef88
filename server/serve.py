"""Run the app under gunicorn with gevent workers, or under granian's WSGI mode.

Gevent workers suit the long-polls: a waiting request is a parked greenlet, not a
blocked OS thread (sync workers cap at workers ÷ latency). Granian parses HTTP in
Rust and sends each response in one write; the app runs in a pool of threads, and a
waiting request holds one of them.
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
            # gevent workers bound the wait for a request's headers (and keep-alive idle) by this
            "keepalive": settings.header_timeout_s,
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
        from server import gunicorn_response
        from server.app import create_app

        gunicorn_response.install()
        return create_app(self.settings)


def run_granian(settings: Settings) -> None:
    from granian import Granian
    from granian.constants import Interfaces

    Granian(
        "server.app:create_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.WSGI,
        workers=settings.api_processes,
        blocking_threads=settings.api_threads,
        backlog=2048,
        log_level="warning",
    ).serve()


def run_api(settings: Settings) -> int:
    if settings.api_server == "granian":
        run_granian(settings)
    else:
        GunicornServer(settings).run()
    return 0
