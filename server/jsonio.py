"""orjson for Flask's JSON, and the one reader of request bodies (bounded, chunked too)."""

from __future__ import annotations

from typing import Any

import orjson
from flask import request
from flask.json.provider import JSONProvider
from werkzeug.exceptions import RequestEntityTooLarge

from server.errors import bad_request


class OrjsonProvider(JSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)


def read_body() -> bytes:
    """The request body, refused (413) past ``max_content_length``.

    Werkzeug refuses a too-large Content-Length up front, but silently cuts a chunked body
    (no Content-Length) at the limit, which then reads as malformed JSON: here such a body
    is read to one byte past the limit, so an overrun is told apart from a body that fits.
    """
    limit = request.max_content_length
    if request.content_length is not None or limit is None:
        return request.get_data()
    data = request.input_stream.read(limit + 1)  # the server de-chunks and ends the stream
    if len(data) > limit:
        raise RequestEntityTooLarge()
    return data


def parse_json(raw: bytes, what: str = "the body") -> Any:
    """``raw`` as JSON; a 400 that says it is not valid JSON (and where) otherwise."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"{what} is not valid JSON (malformed JSON: {exc})") from None


def json_object(raw: bytes, what: str = "the body") -> dict[str, Any]:
    """``raw`` as a JSON object: invalid JSON and other JSON values are 400s."""
    body = parse_json(raw, what)
    if not isinstance(body, dict):
        raise bad_request(f"{what} must be a JSON object, got {type(body).__name__}")
    return body
