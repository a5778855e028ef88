"""What the engine needs to know about a model: token ids, limits, words, the cache shape.

:class:`GenerationSpec` is built from plain values (the ``[generation]`` section of the
model's ``config.toml`` and its tokenizer's words); :class:`DecoderShape` is read from the
decoder graph: ``past_key.{l}``/``past_value.{l}`` are ``[B, H, P, Dh]`` with ``H`` and ``Dh``
fixed, ``L`` is how many there are, and ``logits`` is ``[B, V]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class Session(Protocol):
    """What the engine uses of an ``onnxruntime.InferenceSession``."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]: ...
    def get_inputs(self) -> list[Any]: ...
    def get_outputs(self) -> list[Any]: ...


@dataclass(frozen=True)
class GenerationSpec:
    """The model's generation settings (the contract's ``[generation]`` section).

    ``words[i]`` is the text of token id ``i``, or None for a special token (no text); ids
    past the end of ``words`` have no text either. ``max_new_tokens`` is the cap (a request
    asking for more gets the cap) and the default; ``max_active`` bounds the running batch.
    """

    bos_id: int
    eos_id: int
    pad_id: int = 0
    max_new_tokens: int = 32
    max_active: int = 32
    words: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.max_active < 1:
            raise ValueError("max_new_tokens and max_active must be at least 1")

    def word(self, token_id: int) -> str | None:
        return self.words[token_id] if 0 <= token_id < len(self.words) else None


def words_of(tokenizer: Any, special_ids: Iterable[int] = ()) -> tuple[str | None, ...]:
    """Each id's word from a ``tokenizers.Tokenizer``: None for its special tokens (added
    tokens marked special) and for ``special_ids`` (bos, eos, pad)."""
    special = set(special_ids)
    special |= {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    return tuple(None if i in special else tokenizer.id_to_token(i) for i in range(size))


_PAST = re.compile(r"past_(key|value)\.(\d+)$")
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class DecoderShape:
    """The decoder's cache geometry, read from its graph."""

    layers: int
    heads: int
    head_dim: int
    vocab: int | None
    """``logits``' last dim when the graph fixes it."""
    dtype: type = np.float32
    """The cache's element type (``past_key.0``'s)."""

    @classmethod
    def of(cls, decoder: Session) -> DecoderShape:
        inputs = {i.name: i for i in decoder.get_inputs()}
        found: dict[tuple[str, int], Any] = {}
        for name, node in inputs.items():
            match = _PAST.match(name)
            if match:
                found[(match.group(1), int(match.group(2)))] = node
        layers = len(found) // 2
        expected = {(kv, i) for i in range(layers) for kv in ("key", "value")}
        if layers == 0 or set(found) != expected:
            raise ValueError(
                f"decoder inputs {sorted(inputs)}: expected past_key.l and past_value.l "
                "for l = 0..L-1"
            )
        shapes = {tuple(n.shape[1::2]) for n in found.values()}  # (H, Dh) of [B,H,P,Dh]
        if len(shapes) != 1 or not all(isinstance(d, int) for d in next(iter(shapes))):
            raise ValueError(f"decoder caches must share fixed H and Dh, found {shapes}")
        (heads, head_dim) = next(iter(shapes))
        missing = {
            "input_ids",
            "position_ids",
            "attention_mask",
            "encoder_states",
            "encoder_mask",
        } - set(inputs)
        if missing:
            raise ValueError(f"decoder lacks inputs {sorted(missing)}")
        outputs = {o.name: o for o in decoder.get_outputs()}
        if "logits" not in outputs:
            raise ValueError("decoder has no logits output")
        vocab = outputs["logits"].shape[-1]
        dtype = _ORT_TYPES.get(found[("key", 0)].type, np.float32)
        return cls(layers, heads, head_dim, vocab if isinstance(vocab, int) else None, dtype)

    def present_names(self) -> list[str]:
        return [f"present_{kv}.{i}" for i in range(self.layers) for kv in ("key", "value")]

    def past_names(self) -> list[str]:
        return [f"past_{kv}.{i}" for i in range(self.layers) for kv in ("key", "value")]
