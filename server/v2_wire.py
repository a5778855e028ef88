"""The KServe V2 binary tensor data extension: request and response bodies.

A body is a JSON header optionally followed by raw tensor bytes; the header's length
is in ``Inference-Header-Content-Length``. An input with ``parameters.binary_data_size``
takes that many bytes, in order, from what follows the header: row-major
little-endian values, or for BYTES a 4-byte little-endian length before each element.
Every size is checked against the body before anything is allocated.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from batching.model_config import V2_TO_NUMPY
from server.errors import bad_request
from server.jsonio import parse_json
from server.schemas import MAX_RANK

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_BYTES_ELEMENTS = 1 << 20
MAX_ELEMENTS = 1 << 32


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON header and the binary part that follows it."""
    if header_length is None:
        size = len(body)
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise bad_request(f"{HEADER_LENGTH} is not a number: {header_length!r}") from None
        if not 0 <= size <= len(body):
            raise bad_request(f"{HEADER_LENGTH} {size} is outside the body of {len(body)} bytes")
    header = parse_json(body[:size], "the inference request")
    if not isinstance(header, dict):
        raise bad_request("the inference request must be a JSON object")
    return header, memoryview(body)[size:]


def decode_binary_inputs(inputs: list[dict[str, Any]], binary: memoryview) -> None:
    """Replace each binary input's ``data`` with its array, consuming ``binary`` in order."""
    offset = 0
    for tensor in inputs:
        params = tensor.get("parameters") or {}
        size = params.get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise bad_request(
                f"input '{tensor.get('name')}': binary_data_size {size} runs past the body"
            )
        chunk = binary[offset : offset + size]
        offset += size
        tensor["data"] = from_bytes(
            chunk, tensor.get("datatype"), tensor.get("shape"), tensor.get("name")
        )
    if offset != len(binary):
        raise bad_request(f"{len(binary) - offset} bytes after the last binary input")


def check_shape(shape: Any, name: Any) -> None:
    """A shape as the protocol has it, for JSON and binary inputs alike, before any data is
    looked at: a list of non-negative integers (not true, 1.0 or "1"), of bounded size."""
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise bad_request(f"input '{name}': shape must be a list of non-negative integers")
    if len(shape) > MAX_RANK or math.prod(d for d in shape if d) > MAX_ELEMENTS:
        # checked before numpy sees it: [0, 2**40, 2**40] holds nothing but cannot exist
        raise bad_request(f"input '{name}': shape {shape} is larger than any tensor accepted")


def from_bytes(chunk: memoryview, datatype: Any, shape: Any, name: Any) -> np.ndarray:
    check_shape(shape, name)
    count = math.prod(shape)
    if datatype == "BYTES":
        return np.array(bytes_elements(chunk, count, name), dtype=object).reshape(shape)
    if datatype not in V2_TO_NUMPY:
        raise bad_request(f"input '{name}': unknown datatype {datatype!r}")
    dtype = np.dtype(V2_TO_NUMPY[datatype]).newbyteorder("<")
    if count * dtype.itemsize != len(chunk):
        raise bad_request(
            f"input '{name}': {len(chunk)} bytes do not hold {shape} of {datatype} "
            f"({count * dtype.itemsize} bytes)"
        )
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def bytes_elements(chunk: memoryview, count: int, name: Any) -> list[bytes]:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes."""
    if count > MAX_BYTES_ELEMENTS:
        raise bad_request(f"input '{name}': too many BYTES elements ({count})")
    out, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(chunk):
            raise bad_request(f"input '{name}': BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + length > len(chunk):
            raise bad_request(f"input '{name}': a BYTES element runs past its data")
        out.append(bytes(chunk[offset : offset + length]))
        offset += length
    if offset != len(chunk):
        raise bad_request(f"input '{name}': {len(chunk) - offset} bytes after its BYTES elements")
    return out


def encode_bytes(elements: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def response_body(header: dict[str, Any], binary: Sequence[bytes]) -> tuple[bytes, dict[str, str]]:
    """The body and extra headers of a response whose outputs may carry binary data."""
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return head, {"Content-Type": "application/json"}
    headers = {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return b"".join([head, *binary]), headers
