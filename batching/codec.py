"""Tensor wire codec: raw little-endian bytes with dtype and shape, framed by msgpack.

Nothing is ever unpickled: a tensor is ``{"dtype": str, "shape": [int], "data": bytes}``
and decoding checks the dtype against an allow-list and the byte count against the
shape before it views the buffer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    )
}
MAX_RANK = 8
MAX_ELEMENTS = 1 << 32


class CodecError(ValueError):
    """A frame that is not a well-formed tensor message."""


def tensor_to_wire(array: np.ndarray) -> dict[str, Any]:
    name = array.dtype.name
    if name not in DTYPES:
        raise CodecError(f"unsupported dtype {name}")
    data = np.asarray(array, dtype=DTYPES[name], order="C")  # keeps 0-d arrays 0-d
    return {"dtype": name, "shape": list(data.shape), "data": data.tobytes()}


def tensor_from_wire(frame: Mapping[str, Any]) -> np.ndarray:
    try:
        dtype = DTYPES[frame["dtype"]]
        shape = tuple(int(d) for d in frame["shape"])
        data = frame["data"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(f"malformed tensor frame: {exc!r}") from None
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CodecError("tensor data must be bytes")
    if len(shape) > MAX_RANK or any(d < 0 for d in shape):
        raise CodecError(f"invalid shape {list(shape)}")
    if math.prod(d for d in shape if d) > MAX_ELEMENTS:  # Python ints: no overflow
        raise CodecError(f"shape {list(shape)} is larger than any tensor accepted")
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(data):
        raise CodecError(
            f"shape {list(shape)} of {dtype.name} needs {expected} bytes, got {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def pack_tensors(tensors: Mapping[str, np.ndarray]) -> bytes:
    """One msgpack frame holding named tensors."""
    return msgpack.packb({k: tensor_to_wire(v) for k, v in tensors.items()}, use_bin_type=True)


def unpack_tensors(blob: bytes) -> dict[str, np.ndarray]:
    try:
        frames = msgpack.unpackb(blob, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CodecError(f"undecodable tensor message: {exc}") from None
    if not isinstance(frames, dict):
        raise CodecError("tensor message must be a map of name to tensor")
    return {str(k): tensor_from_wire(v) for k, v in frames.items()}


def pack(obj: Any) -> bytes:
    """msgpack for plain records (results, signatures) that hold tensors as frames."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(blob: bytes) -> Any:
    try:
        return msgpack.unpackb(blob, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CodecError(f"undecodable message: {exc}") from None
