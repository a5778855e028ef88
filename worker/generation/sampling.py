"""The next token of each row from its logits: greedy, or sampled with temperature/top-k/top-p.

Contract:
- ``temperature == 0`` is greedy: the first index of the largest logit (``numpy.argmax``).
- Otherwise the logits are divided by the temperature and softmaxed; ``top_k > 0`` keeps the
  ``k`` most likely tokens, then ``top_p < 1`` keeps the smallest most-likely-first prefix
  whose probability (renormalised after top-k) reaches ``top_p`` (at least one token). Ties
  keep the lower id first, so ``top_k = 1`` and a tiny ``top_p`` are both exactly greedy.
- A row draws ``u`` in [0, 1) from ITS OWN generator, exactly one number per step whether or
  not it samples, and takes the first token (most likely first) whose cumulative probability
  exceeds ``u``. A request's tokens therefore depend only on its seed and its logits, never
  on which other rows share the batch.

Rows are computed together (one sort over the batch); each row's arithmetic is the same as
it would be alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Sampling:
    """One request's sampling parameters."""

    temperature: float = 0.0
    top_k: int = 0
    """0: no top-k cut."""
    top_p: float = 1.0
    """1: no nucleus cut."""

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number >= 0, not {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, not {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class RowSampler:
    """A request's sampling parameters and its own random stream (seeded when ``seed`` is)."""

    params: Sampling
    seed: int | None = None
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def draw(self) -> float:
        return float(self.rng.random())


def sample(logits: np.ndarray, rows: list[RowSampler]) -> np.ndarray:
    """The next token id of each row of ``logits`` [B, V]; draws one number per row."""
    uniforms = np.array([r.draw() for r in rows], dtype=np.float64)
    tokens = np.argmax(logits, axis=1).astype(np.int64)
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    if sampled:
        params = [rows[i].params for i in sampled]
        tokens[sampled] = sample_rows(
            logits[sampled],
            np.array([p.temperature for p in params]),
            np.array([p.top_k for p in params]),
            np.array([p.top_p for p in params]),
            uniforms[sampled],
        )
    return tokens


def sample_rows(
    logits: np.ndarray,
    temperature: np.ndarray,
    top_k: np.ndarray,
    top_p: np.ndarray,
    uniforms: np.ndarray,
) -> np.ndarray:
    """Inverse-CDF sampling of each row of ``logits`` [N, V] (temperatures > 0) after the
    top-k and top-p cuts, with ``uniforms`` [N] in [0, 1)."""
    z = logits.astype(np.float64) / temperature[:, None]
    order = np.argsort(-z, axis=1, kind="stable")  # most likely first, lower id on ties
    z = np.take_along_axis(z, order, axis=1)
    p = np.exp(z - z[:, :1])
    rank = np.arange(z.shape[1])
    k = np.where(top_k > 0, top_k, z.shape[1])
    p = np.where(rank[None, :] < k[:, None], p, 0.0)
    cumulative = np.cumsum(p, axis=1)
    before = cumulative - p  # the mass of the more likely tokens
    p = np.where(before < top_p[:, None] * cumulative[:, -1:], p, 0.0)
    cumulative = np.cumsum(p, axis=1)
    threshold = uniforms[:, None] * cumulative[:, -1:]
    kept = np.count_nonzero(p, axis=1)  # a prefix: the order is most likely first
    index = np.minimum(np.sum(cumulative <= threshold, axis=1), kept - 1)
    return order[np.arange(len(order)), index]
