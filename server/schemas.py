"""Request bodies of the ``/v1`` API, validated at the edge."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from batching.items import Item


class Submission(Item):
    """``POST /v1/models/<m>/infer``: one item, or ``items`` (one queue entry for all)."""

    items: list[Item] | None = None
    priority: int | None = Field(None, ge=1)
    timeout_ms: int | None = Field(None, ge=1)

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
