"""One item of work as clients send it, validated at the edge (``/v1`` and bulk batch lines)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Item(BaseModel):
    """One item: named tensors, or raw modalities preprocessed on the server."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] | None = None
    text: str | None = None
    image: str | None = Field(None, description="base64 PNG or JPEG")
    audio: str | None = Field(None, description="base64 WAV (PCM), resampled by the server")

    @model_validator(mode="after")
    def _one_form(self) -> Item:
        raw = any(v is not None for v in (self.text, self.image, self.audio))
        if self.inputs is not None and raw:
            raise ValueError(
                "give either 'inputs' (named tensors) or raw 'text'/'image'/'audio', not both"
            )
        if self.inputs is None and not raw:
            raise ValueError(
                "an item needs 'inputs' (named tensors) or the raw 'text', 'image', 'audio' "
                "its model takes"
            )
        return self


class TooManyItems(ValueError):
    """More items (or ``/v2`` rows) than one request may carry: the API answers 413."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_count(count: int, limit: int, what: str = "items", per: str = "submission") -> None:
    """Refuse ``count`` items over ``limit``: called on the raw count, before any is decoded."""
    if count > limit:
        raise TooManyItems(f"{count} {what} exceed the limit of {limit} per {per}")


def describe_errors(exc: ValidationError, limit: int = 5) -> str:
    """Pydantic's errors as one line a client can act on: ``where: what`` for each."""
    parts = []
    for err in exc.errors()[:limit]:
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
