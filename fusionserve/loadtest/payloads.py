"""Request bodies for the load generator, encoded once and sent in rotation.

Sources: the synthetic shapes data set (text + PNG image, for models with raw-input
preprocessing such as ``demo``), a JSONL file of ``/v1`` items, or random tensors that
match the model's published signature. Encoding happens before the clock starts, so
the generator spends its CPU on sending, not on JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusionserve.client._codec import V2_TO_NUMPY, encode_json, image_field, v2_body
from fusionserve.client.types import ModelInfo, TensorSpec

POOL_BODIES = 32  # distinct bodies per run: enough to defeat any caching, cheap to build
POOL_BYTES = 64 * 1024 * 1024  # stop adding bodies past this (large tensors x many items)
MAX_UNIQUE_ITEMS = 256
RAGGED_LENGTHS = (8, 16)  # a -1 (variable) dimension gets a length in this range
INT_RANGE = (0, 10)  # integer inputs: a range every vocabulary / index input accepts


@dataclass(frozen=True)
class Payloads:
    """Pre-encoded request bodies; ``items`` rows per request."""

    bodies: list[bytes]
    items: int
    source: str

    def body(self, i: int) -> bytes:
        return self.bodies[i % len(self.bodies)]


class PayloadError(ValueError):
    """The payload source does not fit the model or the API."""


def synthetic_items(n: int, seed: int) -> list[dict[str, Any]]:
    """Text + image items from the synthetic shapes VQA data set (numpy and Pillow only)."""
    from fusionserve.zoo import data

    return [
        {"text": s.question, "image": image_field(data.png_bytes(s.image))}
        for s in data.generate(n, seed)
    ]


def jsonl_items(path: Path) -> list[dict[str, Any]]:
    """One ``/v1`` item (``{"inputs": …}`` or ``{"text", "image"}``) per non-blank line."""
    items = []
    with path.open() as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PayloadError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(item, dict):
                raise PayloadError(f"{path}:{number}: each line must be a JSON object")
            items.append(item)
    if not items:
        raise PayloadError(f"{path}: no items")
    return items


def random_tensor(spec: TensorSpec, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Values every model accepts: masks all ones, small integers, standard normal floats."""
    dtype = np.dtype(V2_TO_NUMPY[spec.datatype])
    if "mask" in spec.name.lower():
        return np.ones(shape, dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(*INT_RANGE, size=shape).astype(dtype)
    return np.ones(shape, dtype)  # BOOL


def random_inputs(
    inputs: Sequence[TensorSpec], rows: int | None, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random named tensors; ``rows=None``: one item (no batch dimension), else a batch.

    Every variable dimension of one call gets the same length, so inputs that share a
    sequence dimension (ids and mask) agree on it.
    """
    length = int(rng.integers(RAGGED_LENGTHS[0], RAGGED_LENGTHS[1] + 1))
    out = {}
    for spec in inputs:
        shape = [length if d < 0 else d for d in spec.shape[1:]]
        out[spec.name] = random_tensor(spec, [rows, *shape] if rows else shape, rng)
    return out


def stack_rows(items: Sequence[dict[str, Any]], inputs: Sequence[TensorSpec]) -> dict[str, Any]:
    """V2 needs one rectangular batch: stack items' named tensors as the model's dtypes."""
    batch = {}
    for spec in inputs:
        rows = []
        for item in items:
            if "inputs" not in item or spec.name not in item["inputs"]:
                raise PayloadError(f"--api v2 needs named tensors; an item lacks {spec.name!r}")
            row = np.asarray(item["inputs"][spec.name], dtype=V2_TO_NUMPY[spec.datatype])
            if row.ndim == len(spec.shape):
                row = row[0]  # the item carried a batch dimension of 1
            rows.append(row)
        if len({r.shape for r in rows}) > 1:
            raise PayloadError(
                f"items differ in the shape of {spec.name!r}: a V2 request is one rectangular "
                "batch; use --items-per-request 1 or equal-length items"
            )
        batch[spec.name] = np.stack(rows)
    return batch


def _pool(make, count: int) -> list[bytes]:
    bodies: list[bytes] = []
    size = 0
    for i in range(count):
        body = make(i)
        bodies.append(body)
        size += len(body)
        if size > POOL_BYTES:
            break
    return bodies


def takes_raw(model: ModelInfo) -> bool:
    pre = model.config.get("preprocessing") or {}
    return bool(pre.get("text") or pre.get("image"))


def build(source: str, api: str, model: ModelInfo, items_per_request: int, seed: int) -> Payloads:
    """Bodies for ``source`` (``auto``, ``synthetic``, ``random`` or a JSONL path)."""
    k = items_per_request
    if k < 1:
        raise PayloadError("--items-per-request must be >= 1")
    if source == "auto":
        source = "synthetic" if takes_raw(model) and api == "v1" else "random"
    rng = np.random.default_rng(seed)
    if source == "random" and api == "v2":
        return Payloads(
            _pool(lambda _: encode_json(v2_body(random_inputs(model.inputs, k, rng))), POOL_BODIES),
            k,
            source,
        )
    if source == "random":
        unique = [
            {"inputs": random_inputs(model.inputs, None, rng)}
            for _ in range(min(POOL_BODIES * k, MAX_UNIQUE_ITEMS))
        ]
    elif source == "synthetic":
        if api == "v2":
            raise PayloadError("synthetic text+image items need --api v1 (V2 takes tensors)")
        unique = synthetic_items(min(POOL_BODIES * k, MAX_UNIQUE_ITEMS), seed)
    else:
        path = Path(source)
        if not path.is_file():
            raise PayloadError(f"--payload: {source!r} is not synthetic, random or a JSONL file")
        unique = jsonl_items(path)

    def group(i: int) -> list[dict[str, Any]]:
        return [unique[(i * k + j) % len(unique)] for j in range(k)]

    def make(i: int) -> bytes:
        rows = group(i)
        if api == "v2":
            return encode_json(v2_body(stack_rows(rows, model.inputs)))
        return encode_json(rows[0] if k == 1 else {"items": rows})

    count = POOL_BODIES if source == "random" else min(POOL_BODIES, -(-len(unique) // k))
    return Payloads(_pool(make, count), k, source)
