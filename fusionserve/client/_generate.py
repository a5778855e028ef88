"""A generation's event stream, read and resumed (sans-IO: the clients send and sleep).

The server answers ``POST /v1/models/<m>/generate`` with ``"stream": true`` as
Server-Sent Events: ``token`` pieces, ``restart`` when the request runs again after its
worker was lost, then ``done`` (the whole result) or ``error``. The answer names its job
(``X-Job-Id``), and ``GET /v1/jobs/<id>/events`` with ``Last-Event-ID`` gives the events
after a given one: a connection that drops mid-stream is resumed there, so the caller
sees each event once and the request is never submitted twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import httpx
import orjson

from fusionserve.client import _base, _calls
from fusionserve.client._calls import Call
from fusionserve.client._retry import RetryPolicy
from fusionserve.client.errors import GenerationFailed
from fusionserve.client.types import Generation, GenerationEvent


@dataclass(frozen=True)
class ServerEvent:
    """One Server-Sent Event as sent: its type, its data (lines joined by ``\\n``), its id."""

    event: str
    data: str
    id: str


class SSEParser:
    """Server-Sent Events from the lines of a stream (line ends already stripped).

    The WHATWG rules: ``field: value`` lines (one space after the colon dropped), ``:``
    comments (keep-alives) skipped, ``data`` lines joined, an event dispatched at a blank
    line if it has data, the last ``id`` carried over to the events after it; ``retry``
    and unknown fields ignored.
    """

    def __init__(self) -> None:
        self.last_id = ""
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> ServerEvent | None:
        """The event that ``line`` completes, if it completes one."""
        if not line:
            event, data = self._event or "message", self._data
            self._event, self._data = "", []
            return ServerEvent(event, "\n".join(data), self.last_id) if data else None
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None


def ended(generation: Generation) -> Generation:
    """A final generation, or :class:`GenerationFailed` if it failed (no text to give)."""
    if generation.status == "failed":
        error = generation.error
        code, message = (error.code, error.message) if error else ("failed", "the request failed")
        raise GenerationFailed(code, message, generation.job_id)
    return generation


class Follower:
    """One generation's stream, across reconnections.

    ``open()`` names the request that (re)opens it: the submission, then, once its
    answer named the job, a resumption after the last event read. ``answered()`` and
    ``dropped()`` say whether to read or how long to wait before the next try (the
    client's :class:`RetryPolicy`, whose budget is renewed whenever a connection brought
    new events); ``feed()`` turns lines into events.
    """

    def __init__(self, model: str, body: dict, retry: RetryPolicy) -> None:
        self.model = model
        self.job_id: str | None = None
        self.last_id = "0"
        """The stream id of the last event read ("0": none yet, resume from the start)."""
        self.finished = False
        self._body = body
        self._retry = retry
        self._attempt = 0
        self._read = 0
        self._parser = SSEParser()

    def _request(self) -> Call[str | None]:
        if self.job_id is None:
            return _calls.generate_stream(self.model, self._body)
        return _calls.job_events(self.job_id, self.last_id)

    def open(self) -> Call[str | None]:
        """The request to send now; an event half-read before a drop is read again whole."""
        self._parser = SSEParser()
        self._read = 0
        return self._request()

    def answered(self, call: Call[str | None], response: httpx.Response) -> float | None:
        """None to read the stream; else the delay before trying again (raises to give up).
        An error answer must have been read (``response.read()``)."""
        job_id, delay = _base.outcome(call, response, self._retry, self._attempt)
        if delay is not None:
            self._attempt += 1
            return delay
        self.job_id = job_id or self.job_id
        return None

    def dropped(self, exc: httpx.TransportError | None = None) -> float:
        """The delay before reopening a stream that broke (``exc``) or ended early (None).

        Resuming a known job is a GET, safe to send again; a submission is sent again
        only when it cannot have been sent. Raises the SDK's error to give up.
        """
        if exc is None:
            exc = httpx.RemoteProtocolError("the event stream ended before its last event")
        if self._read:
            self._attempt = 0  # this connection made progress: a fresh budget
        delay = _base.transport_delay(self._request(), exc, self._retry, self._attempt)
        self._attempt += 1
        return delay

    def feed(self, line: str) -> GenerationEvent | None:
        """The event ``line`` completes; raises :class:`GenerationFailed` on ``error``."""
        raw = self._parser.feed(line)
        if raw is None:
            return None
        if raw.id:
            self.last_id = raw.id
        self._read += 1
        data = orjson.loads(raw.data)
        job = self.job_id or str(data.get("job_id", ""))
        if raw.event == "token":
            return GenerationEvent(
                "token",
                raw.id,
                job,
                text=data.get("text", ""),
                index=data.get("index"),
                token_id=data.get("id"),
            )
        if raw.event == "restart":
            return GenerationEvent("restart", raw.id, job)
        if raw.event == "done":
            self.finished = True
            generation = ended(Generation.from_json({"job_id": job, **data}, self.model))
            return GenerationEvent("done", raw.id, generation.job_id, generation=generation)
        if raw.event == "error":
            self.finished = True
            code = str(data.get("code") or "error")
            raise GenerationFailed(code, str(data.get("message", "")), job or None)
        return None  # an event type this client does not know


def text_of(events: Iterable[GenerationEvent]) -> str:
    """The text that ``events`` spell: the token pieces since the last ``restart``, joined;
    the ``done`` event's text once they reach it (the same text, written whole).

    ``text_of(fs.stream(...))`` reads a whole stream; for an async one, collect the events
    first (``text_of([e async for e in fs.stream(...)])``).
    """
    pieces: list[str] = []
    for event in events:
        if event.kind == "token":
            pieces.append(event.text)
        elif event.kind == "restart":
            pieces.clear()
        elif event.generation is not None:
            return event.generation.text
    return "".join(pieces)
