"""Batch assembly: stack entries into one input batch, pad ragged dims, split outputs back.

An input whose signature has a variable non-batch dimension (text length) is padded
to the longest entry in the batch with that input's pad value (0 for token ids and
for the attention mask), so models must mask padding: their outputs do not depend on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def pad_to(array: np.ndarray, shape: Sequence[int], value: int | float) -> np.ndarray:
    """``array`` padded at the end of each axis up to ``shape``."""
    if tuple(array.shape) == tuple(shape):
        return array
    widths = [(0, target - have) for have, target in zip(array.shape, shape, strict=True)]
    return np.pad(array, widths, mode="constant", constant_values=value)


def stack(
    parts: Sequence[Mapping[str, np.ndarray]], pad_values: Mapping[str, int | float] | None = None
) -> dict[str, np.ndarray]:
    """Concatenate each input along the batch axis, padding the other axes to the longest."""
    pad_values = pad_values or {}
    batch: dict[str, np.ndarray] = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        if len(arrays) == 1:
            batch[name] = arrays[0]
            continue
        longest = np.max([a.shape for a in arrays], axis=0)
        padded = [pad_to(a, (a.shape[0], *longest[1:]), pad_values.get(name, 0)) for a in arrays]
        batch[name] = np.concatenate(padded, axis=0)
    return batch


def split(outputs: Mapping[str, np.ndarray], rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Cut each output along the batch axis into consecutive parts of ``rows`` rows."""
    bounds = np.cumsum([0, *rows])
    return [
        {name: out[bounds[i] : bounds[i + 1]] for name, out in outputs.items()}
        for i in range(len(rows))
    ]


def chunks(tensors: Mapping[str, np.ndarray], rows: int, size: int) -> list[dict[str, np.ndarray]]:
    """Slices of at most ``size`` rows of one oversized entry."""
    return [{k: v[i : i + size] for k, v in tensors.items()} for i in range(0, rows, size)]


def concat(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join per-chunk outputs back into one entry's outputs."""
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}
