"""The binary tensor data extension: round trips, and clear 400s for truncated or garbage bodies."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from server import v2_wire
from server.errors import ApiError


def body(header: dict, *chunks: bytes) -> tuple[bytes, str]:
    head = orjson.dumps(header)
    return head + b"".join(chunks), str(len(head))


def test_binary_inputs_round_trip_with_bytes_elements() -> None:
    x = np.arange(6, dtype="<f4").reshape(2, 3)
    words = [b"is there a red square?", b""]
    inputs = [
        {"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
        {"name": "t", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 30}},
    ]
    raw, length = body({"inputs": inputs}, x.tobytes(), v2_wire.encode_bytes(words))
    header, binary = v2_wire.split_body(raw, length)
    v2_wire.decode_binary_inputs(header["inputs"], binary)
    np.testing.assert_array_equal(header["inputs"][0]["data"], x)
    assert list(header["inputs"][1]["data"]) == words


@pytest.mark.parametrize(
    ("size", "payload", "message"),
    [
        (24, b"\0" * 20, "runs past the body"),
        (20, b"\0" * 20, r"do not hold \[2, 3\] of FP32"),
        (24, b"\0" * 28, "4 bytes after the last binary input"),
        (-1, b"", "runs past the body"),
    ],
)
def test_truncated_or_oversized_binary_data_is_a_400(size, payload, message) -> None:
    inputs = [
        {"name": "x", "shape": [2, 3], "datatype": "FP32", "parameters": {"binary_data_size": size}}
    ]
    raw, length = body({"inputs": inputs}, payload)
    header, binary = v2_wire.split_body(raw, length)
    with pytest.raises(ApiError, match=message) as info:
        v2_wire.decode_binary_inputs(header["inputs"], binary)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("chunk", "message"),
    [
        (b"\x05\0\0\0abc", "runs past its data"),
        (b"\x01\0", "inside an element's length"),
        (b"\x01\0\0\0ab", "after its BYTES elements"),
    ],
)
def test_malformed_bytes_elements_are_a_400(chunk: bytes, message: str) -> None:
    with pytest.raises(ApiError, match=message):
        v2_wire.bytes_elements(memoryview(chunk), 1, "t")


@pytest.mark.parametrize(
    ("raw", "length", "message"),
    [
        (b"{}", "x", "not a number"),
        (b"{}", "99", "outside the body"),
        (b"{not json", None, "malformed JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
    ],
)
def test_malformed_headers_are_a_400(raw: bytes, length, message: str) -> None:
    with pytest.raises(ApiError, match=message):
        v2_wire.split_body(raw, length)


def test_a_huge_bytes_count_is_refused_before_allocating() -> None:
    with pytest.raises(ApiError, match="too many BYTES elements"):
        v2_wire.bytes_elements(memoryview(b""), 10**12, "t")


def test_binary_responses_carry_the_header_length() -> None:
    data, headers = v2_wire.response_body({"outputs": []}, [b"\1\2\3\4"])
    length = int(headers[v2_wire.HEADER_LENGTH])
    assert orjson.loads(data[:length]) == {"outputs": []} and data[length:] == b"\1\2\3\4"
    assert headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize(
    "datatype",
    [
        "BOOL",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "FP16",
        "FP32",
        "FP64",
    ],
)
def test_every_numeric_datatype_decodes_from_binary(datatype: str) -> None:
    from batching.model_config import V2_TO_NUMPY

    array = (np.arange(6) % 2 == 0) if datatype == "BOOL" else np.arange(6)
    array = array.astype(np.dtype(V2_TO_NUMPY[datatype]).newbyteorder("<")).reshape(2, 3)
    decoded = v2_wire.from_bytes(memoryview(array.tobytes()), datatype, [2, 3], "x")
    np.testing.assert_array_equal(decoded, array)
