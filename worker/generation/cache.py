"""The running batch's decoder state: one key/value cache per layer, and the encoder states.

Contract (layout):
- Per layer, ``past_key``/``past_value`` are ``[B, H, P, Dh]`` for the whole batch; row ``i``
  has ``lengths[i]`` past entries (its position: 0 before its first step), always the LAST
  ``lengths[i]`` columns. Its ``attention_mask`` row is 1 over those columns and on the new
  column of this step, 0 elsewhere, and the decoder ignores columns with a 0.
- A row admitted mid-flight gets zeros over the existing columns (mask 0); each step
  appends one column for every row (the decoder's ``present_*`` become the next past).
- Removing rows (finished or cancelled) drops them at once, then drops the leading columns
  no remaining row uses, so ``P == max(lengths)``: the cache is never wider than the
  longest active sequence.
- ``encoder_states [B, S, D]`` / ``encoder_mask [B, S]``: rows with a shorter ``S`` are padded
  with zeros and mask 0 when longer rows join; trailing columns no row uses are dropped.
"""

from __future__ import annotations

import numpy as np

from batching.assembly import pad_to
from worker.generation.spec import DecoderShape


class BatchCache:
    def __init__(self, shape: DecoderShape) -> None:
        self.shape = shape
        self.lengths = np.zeros(0, dtype=np.int64)
        self.past: list[np.ndarray] = self._empty_past(0)
        self.states: np.ndarray | None = None
        self.states_mask: np.ndarray | None = None

    def _empty_past(self, rows: int, width: int = 0) -> list[np.ndarray]:
        s = self.shape
        dims = (rows, s.heads, width, s.head_dim)
        return [np.zeros(dims, dtype=s.dtype) for _ in range(2 * s.layers)]

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        """P: the cache's columns."""
        return self.past[0].shape[2]

    @property
    def source_width(self) -> int:
        """S: the encoder states' columns (0 when empty)."""
        return 0 if self.states is None else self.states.shape[1]

    def add(self, states: np.ndarray, mask: np.ndarray) -> None:
        """Append rows with these encoder outputs ([n, S, D], [n, S]) and no past yet."""
        n = len(states)
        if self.states is None or self.states_mask is None:
            self.states, self.states_mask = states, mask.astype(np.int64, copy=False)
        else:
            width = max(self.states.shape[1], states.shape[1])
            self.states = np.concatenate(
                [
                    pad_to(self.states, (self.rows, width, self.states.shape[2]), 0),
                    pad_to(states, (n, width, states.shape[2]), 0),
                ]
            )
            self.states_mask = np.concatenate(
                [
                    pad_to(self.states_mask, (self.rows, width), 0),
                    pad_to(mask.astype(np.int64, copy=False), (n, width), 0),
                ]
            )
        fresh = self._empty_past(n, self.width)
        self.past = [np.concatenate([old, new]) for old, new in zip(self.past, fresh, strict=True)]
        self.lengths = np.concatenate([self.lengths, np.zeros(n, dtype=np.int64)])

    def keep(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` (indices, in order); drop columns no kept row uses."""
        self.lengths = self.lengths[rows]
        if not len(rows):
            self.past, self.states, self.states_mask = self._empty_past(0), None, None
            return
        cut = self.width - int(self.lengths.max())
        self.past = [a[rows, :, cut:, :] for a in self.past]
        assert self.states is not None and self.states_mask is not None
        mask = self.states_mask[rows]
        used = np.flatnonzero(mask.any(axis=0))
        end = int(used[-1]) + 1 if len(used) else mask.shape[1]
        self.states, self.states_mask = self.states[rows, :end], mask[:, :end]

    def attention_mask(self) -> np.ndarray:
        """[B, P + 1]: each row's own past columns (the last ``lengths[i]``) and this step."""
        columns = np.arange(self.width + 1)
        return (columns[None, :] >= (self.width - self.lengths)[:, None]).astype(np.int64)

    def feeds(self, input_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The decoder's inputs for one step of every row, given each row's token [B]."""
        assert self.states is not None and self.states_mask is not None
        return {
            "input_ids": input_ids.reshape(-1, 1).astype(np.int64, copy=False),
            "position_ids": self.lengths.reshape(-1, 1),
            "attention_mask": self.attention_mask(),
            "encoder_states": self.states,
            "encoder_mask": self.states_mask,
            **dict(zip(self.shape.past_names(), self.past, strict=True)),
        }

    def advance(self, presents: list[np.ndarray]) -> None:
        """After a step: the presents (one more column each) are the past; every row grew."""
        self.past = presents
        self.lengths = self.lengths + 1
