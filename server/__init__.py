"""The HTTP API: Flask app factory and blueprints over the Redis broker."""

from server.app import create_app

__all__ = ["create_app"]
