"""A generation request's parameters: validated at the edge, resolved once, carried in the entry.

The same fields arrive in a ``/v1`` body, in Triton's ``parameters`` and on a bulk batch's
lines. ``resolved`` fills what the client left out against the model's ``[generation]``
(its ``max_new_tokens`` cap) and picks the seed now, not in the worker: a request run
again after its worker was lost writes the same text. The result is what a worker reads
from the entry's ``g`` field (a list of them, one per row, for a bulk entry).
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from batching.items import Item

StopString = Annotated[str, Field(min_length=1, max_length=64)]


class OverCap(ValueError):
    """A request asked for more new tokens than the model allows."""


class GenerationParameters(BaseModel):
    """How to write the text.

    ``temperature`` 0 is greedy; otherwise tokens are sampled (top-k, then top-p) from a
    generator seeded with ``seed``, so a seed gives the same text whatever else runs
    beside it.
    """

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=100.0)
    top_k: StrictInt = Field(0, ge=0, le=100_000, description="0: no top-k cut")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: StrictInt | None = Field(None, ge=0, le=2**63 - 1)
    stop: list[StopString] = Field(default_factory=list, max_length=8)
    ignore_eos: StrictBool = Field(
        False, description="write max_new_tokens tokens whatever the model says (benchmarks)"
    )

    def resolved(self, cap: int) -> dict[str, Any]:
        """Every parameter set, for the worker; OverCap past the model's ``cap``."""
        if self.max_new_tokens is not None and self.max_new_tokens > cap:
            raise OverCap(f"max_new_tokens must be at most {cap} for this model")
        return {
            "max_new_tokens": self.max_new_tokens or cap,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "seed": self.seed if self.seed is not None else secrets.randbits(63),
            "stop": self.stop,
            "ignore_eos": self.ignore_eos,
        }


class GenerateItem(Item, GenerationParameters):
    """One item to write text for, with its parameters (a bulk line; ``/v1`` adds more)."""
