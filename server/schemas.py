"""Request bodies of the ``/v1`` and ``/v2`` APIs, validated at the edge (and described by
``/openapi.json`` from these very models)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from batching.generation import GenerateItem
from batching.items import Item
from batching.model_config import V2_TO_NUMPY


class Submission(Item):
    """``POST /v1/models/<m>/infer``: one item, or ``items`` (one queue entry for all)."""

    items: list[Item] | None = None
    # strict: true and "1" are not numbers (lax pydantic would read them as 1)
    priority: StrictInt | None = Field(None, ge=1)
    timeout_ms: StrictInt | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _items_alone(cls, data: Any) -> Any:
        if isinstance(data, dict) and "items" in data:
            clash = sorted({"inputs", "text", "image", "audio"} & data.keys())
            if clash:
                raise ValueError(f"'items' cannot be combined with {clash}; put them in the items")
        return data

    @model_validator(mode="after")
    def _one_form(self) -> Submission:
        if self.items is not None:
            if not self.items:
                raise ValueError("'items' is empty")
            return self
        return Item._one_form(self)  # type: ignore[arg-type]

    def all_items(self) -> list[Item]:
        if self.items is not None:
            return self.items
        return [Item(inputs=self.inputs, text=self.text, image=self.image, audio=self.audio)]


class GenerateRequest(GenerateItem):
    """``POST /v1/models/<m>/generate``: one item (text, image, audio) and how to write."""

    stream: StrictBool = False
    priority: StrictInt | None = Field(None, ge=1)
    timeout_ms: StrictInt | None = Field(None, ge=1)


# --- /v2: the KServe V2 inference protocol ------------------------------------------------

MAX_RANK = 8
V2Datatype = Literal[(*V2_TO_NUMPY, "BYTES")]  # type: ignore[valid-type]
Dim = Annotated[int, Field(strict=True, ge=0)]
"""A dimension: a non-negative integer, never true, 1.0 or "1"."""


class V2Tensor(BaseModel):
    """One input: ``data`` is row-major (flat or nested); BYTES carries raw text, images, audio."""

    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[Dim] = Field(max_length=MAX_RANK)
    datatype: V2Datatype
    data: Any = None
    parameters: dict[str, Any] = Field(default_factory=dict)


class V2Output(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class V2Request(BaseModel):
    """``POST /v2/models/<m>/infer``: the rows are the inputs' first dimension."""

    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[V2Tensor] = Field(min_length=1)
    outputs: list[V2Output] | None = None
