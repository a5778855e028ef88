"""The Flask application factory."""

from __future__ import annotations

from flask import Flask

from batching.settings import Settings, get_settings
from server import (
    auth,
    batches,
    console,
    generate,
    health,
    metrics,
    openapi,
    repository,
    stats,
    v1,
    v2,
)
from server.deadline import BodyDeadline
from server.errors import register_error_handlers
from server.jsonio import OrjsonProvider
from server.services import Services


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask("fusionserve")
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.extensions["fusionserve"] = Services.build(settings)
    register_error_handlers(app)
    auth.register(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(v1.bp)
    app.register_blueprint(batches.bp)
    app.register_blueprint(v2.bp)
    app.register_blueprint(generate.bp)
    app.register_blueprint(repository.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(stats.bp)
    app.register_blueprint(console.bp)
    app.wsgi_app = BodyDeadline(app.wsgi_app, settings.body_timeout_s, settings.min_body_rate)  # type: ignore[method-assign]
    return app
