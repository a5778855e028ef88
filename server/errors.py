"""One error shape per API for every failure: ``{"error": {"code": …, "message": …}}``, and
KServe V2's ``{"error": "<message>"}`` under ``/v2``."""

from __future__ import annotations

from typing import Any

import redis
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from batching.broker import NotReplicated
from batching.inputs import InvalidInput
from batching.items import TooManyItems
from server.coalesce import OutcomeUnknown


class ApiError(Exception):
    """An error the client can act on; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


def from_invalid_input(exc: InvalidInput) -> ApiError:
    return ApiError(422, "invalid_input", exc.message, **exc.extra)


def from_too_many(exc: TooManyItems) -> ApiError:
    return ApiError(413, "too_many_items", exc.message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_input", message)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)


def _body(status: int, code: str, message: str, **extra: Any):
    response = jsonify({"error": {"code": code, "message": message, **extra}})
    response.status_code = status
    return response


def _path_body(status: int, code: str, message: str, **extra: Any):
    """An error body in the shape of the request's API: KServe V2's ``{"error": "<message>"}``
    under ``/v2``, else ``{"error": {"code", "message", ...}}``."""
    if request.path.startswith("/v2"):
        response = jsonify({"error": message})
        response.status_code = status
        return response
    return _body(status, code, message, **extra)


HEADER_FIELDS = ("retry_after", "www_authenticate")


def _fields(exc: ApiError) -> dict[str, Any]:
    return {k: v for k, v in exc.extra.items() if k not in HEADER_FIELDS}


def with_headers(response, exc: ApiError):
    """Retry-After on 429 and 503, WWW-Authenticate on 401: the headers clients act on."""
    if exc.status in (429, 503):
        response.headers["Retry-After"] = str(exc.extra.get("retry_after", 1))
    if "www_authenticate" in exc.extra:
        response.headers["WWW-Authenticate"] = exc.extra["www_authenticate"]
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return with_headers(_path_body(exc.status, exc.code, exc.message, **_fields(exc)), exc)

    @app.errorhandler(InvalidInput)
    def _invalid_input(exc: InvalidInput):
        return _api_error(from_invalid_input(exc))

    @app.errorhandler(TooManyItems)
    def _too_many(exc: TooManyItems):
        return _api_error(from_too_many(exc))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if exc.code == 413:
            limit = request.max_content_length
            message = f"request body exceeds the limit of {limit} bytes"
        return _path_body(exc.code or 500, code, message)

    @app.errorhandler(redis.RedisError)
    def _redis_down(exc: redis.RedisError):
        app.logger.warning("redis unavailable: %s", exc)
        if isinstance(exc, (OutcomeUnknown, NotReplicated)):
            code, message = (
                "outcome_unknown",
                "the queue (Redis) did not confirm the submission in time: it may have been "
                "queued; retry with the same Idempotency-Key so it is not added twice",
            )
        else:
            code, message = "unavailable", "the queue (Redis) is unreachable; retry shortly"
        response = _path_body(503, code, message)
        response.headers["Retry-After"] = "1"
        return response
