"""The generation engine: one running batch, advanced one token per decoder call.

Contract:
- ``admit(requests)`` takes as many of ``requests`` as there are free slots (in order) and
  returns the rest. The taken ones are encoded together in ONE encoder call (their inputs
  padded to the longest with ``pad_values``) and join the running batch; their first step is
  the next ``step()``. Never more than ``spec.max_active`` rows. With
  ``Admission.REQUEST`` (request-level batching, for comparison) there are free slots only
  while the batch is empty, so a batch runs until its last sequence ends.
- ``step()`` runs ONE decoder call for every active row and returns one :class:`TokenEvent`
  per row, in row order: the token, its text piece and a finish reason or None. A row
  finishes on EOS (``"stop"``, unless the request ignores EOS), on a stop string
  (``"stop"``; the stop string is not in the text), or at its ``max_new_tokens``
  (``"length"``; the EOS token counts), and leaves the batch within the same call: its slot
  is free for the next ``admit``.
- ``cancel(key, reason)`` removes a row at once (``reason`` is the caller's: ``"cancelled"``,
  ``"deadline"``) and returns its last event: no token (None) and any held-back text, so
  the pieces still add up to the final text.
- The concatenation of a request's pieces is its final text (see ``worker.generation.text``).
- A request's tokens do not depend on the other rows: greedy is exact up to the decoder's
  arithmetic (masked columns have no effect), and a sampling request draws from its own
  seeded generator (see ``worker.generation.sampling``).
- A failed encoder or decoder call raises and leaves the batch as it was (nothing admitted,
  nothing advanced); the caller decides whom to cancel.

Not thread-safe: one loop owns an engine.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from batching.assembly import stack
from worker.generation.cache import BatchCache
from worker.generation.sampling import RowSampler, Sampling, sample
from worker.generation.spec import DecoderShape, GenerationSpec, Session
from worker.generation.text import TextStream

log = logging.getLogger(__name__)


class Admission(enum.Enum):
    CONTINUOUS = "continuous"
    """Iteration-level: free slots are filled at every step."""
    REQUEST = "request"
    """Request-level: a new batch is admitted only once the running one has finished."""


@dataclass(frozen=True)
class Request:
    """One generation request: its encoder inputs (batch dim 1, preprocessed) and options."""

    key: Hashable
    inputs: Mapping[str, np.ndarray]
    max_new_tokens: int | None = None
    """None: the model's cap; more than the cap: the cap."""
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    """None: a fresh random seed (not reproducible)."""
    stop: Sequence[str] = ()
    ignore_eos: bool = False
    """Run to ``max_new_tokens`` whatever the model says (benchmarks, as vLLM's)."""
    sampling: Sampling = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sampling", Sampling(self.temperature, self.top_k, self.top_p))
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")


class TokenEvent(NamedTuple):
    key: Hashable
    token_id: int | None
    """None on the event of a cancelled row."""
    piece: str
    finish_reason: str | None
    """None while the sequence runs; ``"stop"``, ``"length"`` or the caller's cancel reason."""


@dataclass
class _Row:
    request: Request
    sampler: RowSampler
    text: TextStream
    limit: int
    token: int
    """The token the next step feeds (bos at first)."""
    generated: int = 0


class Engine:
    """The running batch of one worker over an encoder and a one-step decoder session."""

    def __init__(
        self,
        encoder: Session,
        decoder: Session,
        spec: GenerationSpec,
        *,
        admission: Admission = Admission.CONTINUOUS,
        pad_values: Mapping[str, int | float] | None = None,
    ) -> None:
        self.encoder = encoder
        self.decoder = decoder
        self.spec = spec
        self.admission = admission
        self.pad_values = dict(pad_values or {})
        self.shape = DecoderShape.of(decoder)
        self.encoder_inputs = [i.name for i in encoder.get_inputs()]
        self.outputs = ["logits", *self.shape.present_names()]
        if self.shape.vocab is not None and spec.words and len(spec.words) < self.shape.vocab:
            log.warning(
                "the tokenizer has %d ids and the decoder's logits %d: the others have no text",
                len(spec.words),
                self.shape.vocab,
            )
        self.cache = BatchCache(self.shape)
        self.rows: list[_Row] = []
        self.steps = 0
        """Decoder calls made."""
        self.encoder_passes = 0
        """Encoder calls made."""

    @property
    def active(self) -> list[Hashable]:
        """The keys of the running sequences, in row order."""
        return [r.request.key for r in self.rows]

    @property
    def free_slots(self) -> int:
        """How many requests the next ``admit`` takes."""
        if self.admission is Admission.REQUEST and self.rows:
            return 0
        return self.spec.max_active - len(self.rows)

    @property
    def cache_width(self) -> int:
        """P: the key/value cache's columns (the longest active sequence's past)."""
        return self.cache.width

    def admit(self, requests: Sequence[Request]) -> list[Request]:
        """Encode as many ``requests`` as there are free slots (one encoder call) and add them
        to the batch; returns those not admitted."""
        taken, rest = list(requests[: self.free_slots]), list(requests[self.free_slots :])
        if not taken:
            return rest
        keys = [r.key for r in taken]
        if len(set(keys)) != len(keys) or set(keys) & set(self.active):
            raise ValueError(f"request keys must be unique among the active ones: {keys}")
        parts = []
        for r in taken:
            missing = [n for n in self.encoder_inputs if n not in r.inputs]
            if missing:
                raise ValueError(f"request {r.key!r} lacks encoder inputs {missing}")
            part = {n: r.inputs[n] for n in self.encoder_inputs}
            if any(a.shape[0] != 1 for a in part.values()):
                raise ValueError(f"request {r.key!r}: inputs must have a batch dimension of 1")
            parts.append(part)
        new = [
            _Row(
                request=r,
                sampler=RowSampler(r.sampling, r.seed),
                text=TextStream(self.spec.word, r.stop),
                limit=min(r.max_new_tokens or self.spec.max_new_tokens, self.spec.max_new_tokens),
                token=self.spec.bos_id,
            )
            for r in taken
        ]
        states, mask = self.encoder.run(
            ["encoder_states", "encoder_mask"], stack(parts, self.pad_values)
        )
        self.encoder_passes += 1
        self.cache.add(states, mask)
        self.rows += new
        return rest

    def step(self) -> list[TokenEvent]:
        """One decoder call for every active row: one event per row, finished rows retired."""
        if not self.rows:
            return []
        feeds = self.cache.feeds(np.array([r.token for r in self.rows], dtype=np.int64))
        logits, *presents = self.decoder.run(self.outputs, feeds)
        self.steps += 1
        self.cache.advance(presents)
        tokens = sample(logits, [r.sampler for r in self.rows])
        events, keep = [], []
        eos = self.spec.eos_id
        for i, (row, token) in enumerate(zip(self.rows, tokens.tolist(), strict=True)):
            row.token = token
            row.generated += 1
            piece, stopped = row.text.push(token)
            reason = None
            if stopped or (token == eos and not row.request.ignore_eos):
                reason = "stop"
            elif row.generated >= row.limit:
                reason = "length"
            if reason is None:
                keep.append(i)
            else:
                piece += row.text.flush()
            events.append(TokenEvent(row.request.key, token, piece, reason))
        if len(keep) < len(self.rows):
            self._keep(keep)
        return events

    def cancel(self, key: Hashable, reason: str = "cancelled") -> TokenEvent | None:
        """Retire ``key``'s row now; its last event (None when it is not active)."""
        for i, row in enumerate(self.rows):
            if row.request.key == key:
                self._keep([j for j in range(len(self.rows)) if j != i])
                return TokenEvent(key, None, row.text.flush(), reason)
        return None

    def _keep(self, indices: list[int]) -> None:
        self.cache.keep(np.array(indices, dtype=np.int64))
        self.rows = [self.rows[i] for i in indices]
