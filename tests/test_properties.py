"""Property tests (hypothesis) of what parses bytes from outside: the tensor codec and
the KServe V2 binary-extension parser. Valid inputs round-trip; anything else is a clear
client error (CodecError, or a 400 ApiError), never a crash or a huge allocation."""

from __future__ import annotations

import contextlib
import math
import struct

import httpx
import msgpack
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from batching import codec
from batching.model_config import V2_TO_NUMPY
from server.errors import ApiError
from server.v2_wire import decode_binary_inputs, encode_bytes, split_body

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
dtypes = st.sampled_from(sorted(codec.DTYPES))
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)
huge = st.integers(min_value=-(2**63), max_value=2**63 - 1)  # what JSON can carry


@SETTINGS
@given(st.data())
def test_every_supported_array_round_trips(data) -> None:
    dtype = codec.DTYPES[data.draw(dtypes)]
    array = data.draw(hnp.arrays(dtype, data.draw(shapes)))
    back = codec.tensor_from_wire(codec.tensor_to_wire(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()  # bit for bit, NaNs included


@SETTINGS
@given(st.dictionaries(st.text(max_size=8), st.integers(0, 5), max_size=4), st.data())
def test_named_tensor_messages_round_trip(names, data) -> None:
    tensors = {n: data.draw(hnp.arrays(np.float32, (rows, 3))) for n, rows in names.items()}
    back = codec.unpack_tensors(codec.pack_tensors(tensors))
    assert back.keys() == tensors.keys()
    for name, array in tensors.items():
        assert back[name].tobytes() == array.tobytes() and back[name].shape == array.shape


@SETTINGS
@given(
    dtype=st.one_of(dtypes, st.text(max_size=10), st.integers(), st.none()),
    shape=st.one_of(
        st.lists(st.integers(-(2**70), 2**70), max_size=10),
        st.lists(st.sampled_from([0, 1, 2**31, 2**40, 2**63]), max_size=6),
        st.text(max_size=5),
        st.none(),
    ),
    payload=st.one_of(st.binary(max_size=64), st.text(max_size=8), st.integers()),
)
def test_malformed_frames_are_codec_errors(dtype, shape, payload) -> None:
    frame = {"dtype": dtype, "shape": shape, "data": payload}
    try:
        array = codec.tensor_from_wire(frame)
    except codec.CodecError:
        return
    assert array.nbytes == len(payload)  # accepted only when it is exactly what it says


@SETTINGS
@given(st.binary(max_size=256))
def test_garbage_messages_are_codec_errors(blob: bytes) -> None:
    for unpack in (codec.unpack_tensors, codec.unpack):
        with contextlib.suppress(codec.CodecError):
            unpack(blob)


@SETTINGS
@given(
    st.dictionaries(
        st.text(max_size=4),
        st.recursive(
            st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=8) | st.text(max_size=4),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
            max_leaves=8,
        ),
        max_size=3,
    )
)
def test_wellformed_msgpack_of_the_wrong_shape_is_a_codec_error(message) -> None:
    with contextlib.suppress(codec.CodecError):
        codec.unpack_tensors(msgpack.packb(message, use_bin_type=True))


v2_datatypes = st.sampled_from([*sorted(V2_TO_NUMPY), "BYTES", "FP8", "", "fp32"])


@SETTINGS
@given(
    datatype=v2_datatypes,
    shape=st.one_of(
        st.lists(huge, max_size=5), st.lists(st.integers(0, 4), max_size=3), st.text(max_size=3)
    ),
    size=st.one_of(st.integers(-5, 80), huge, st.text(max_size=3), st.none()),
    binary=st.binary(max_size=80),
    header_length=st.one_of(st.none(), st.integers(-10, 200).map(str), st.text(max_size=4)),
)
def test_v2_binary_bodies_parse_or_fail_with_a_400(datatype, shape, size, binary, header_length):
    tensor = {"name": "x", "datatype": datatype, "shape": shape}
    if size is not None:
        tensor["parameters"] = {"binary_data_size": size}
    body = orjson.dumps({"inputs": [tensor]}) + binary
    if header_length is None and binary:
        header_length = str(len(body) - len(binary))
    try:
        header, rest = split_body(body, header_length)
        decode_binary_inputs(header["inputs"], rest)
    except ApiError as exc:
        assert exc.status == 400 and exc.message
        return
    data = header["inputs"][0].get("data")
    if isinstance(data, np.ndarray):
        assert data.size <= max(len(binary), 1) * 2  # no allocation beyond what was sent


@SETTINGS
@given(st.lists(st.binary(max_size=20), max_size=6), st.binary(max_size=6))
def test_bytes_elements_round_trip_and_trailing_junk_is_refused(elements, junk) -> None:
    encoded = encode_bytes(elements)
    inputs = [
        {
            "name": "t",
            "datatype": "BYTES",
            "shape": [len(elements)],
            "parameters": {"binary_data_size": len(encoded)},
        }
    ]
    decode_binary_inputs(inputs, memoryview(encoded))
    assert list(inputs[0]["data"]) == elements
    if junk:
        cut = [{**inputs[0], "parameters": {"binary_data_size": len(encoded) + len(junk)}}]
        try:
            decode_binary_inputs(cut, memoryview(encoded + junk))
        except ApiError as exc:
            assert exc.status == 400
        else:  # the junk happened to be a valid element: then the count was off by one
            raise AssertionError("trailing bytes were accepted")


def test_a_length_prefix_claiming_gigabytes_allocates_nothing() -> None:
    chunk = struct.pack("<I", 2**31) + b"abc"
    inputs = [
        {
            "name": "t",
            "datatype": "BYTES",
            "shape": [1],
            "parameters": {"binary_data_size": len(chunk)},
        }
    ]
    try:
        decode_binary_inputs(inputs, memoryview(chunk))
    except ApiError as exc:
        assert "runs past its data" in exc.message
    else:
        raise AssertionError("accepted a 2 GiB element from 7 bytes")


# --- /v2 JSON inference against the served demo model ----------------------------------

V2_INPUTS = [
    ("input_ids", "INT64"),
    ("attention_mask", "INT64"),
    ("image", "FP32"),
    ("text", "BYTES"),
    ("image", "BYTES"),
]
"""The demo's named inputs, and the raw text and image it takes as BYTES."""
TYPED = {
    "INT64": st.one_of(st.integers(-2, 60), huge),
    "FP32": st.one_of(st.floats(-2, 2), st.floats(allow_nan=False, allow_infinity=False)),
    "BYTES": st.text(max_size=6),
}
ODD = st.one_of(
    st.booleans(), st.none(), st.text(max_size=3), huge, st.lists(st.integers(0, 3), max_size=2)
)
dims = st.one_of(st.integers(-3, 4), st.sampled_from(["1", 1.0, True, None, 2**63]))


@st.composite
def v2_tensors(draw) -> dict:
    """A tensor aimed at a real input: its shape small, odd or negative, its data often
    exactly as long as the shape's product says (so the checks past the count are reached)."""
    name, datatype = draw(st.sampled_from(V2_INPUTS))
    shape = draw(st.lists(dims, max_size=4))
    count = 0
    if all(type(d) is int for d in shape):
        count = abs(math.prod(shape))
    value = st.one_of(TYPED[datatype], ODD) if draw(st.booleans()) else TYPED[datatype]
    sized = st.lists(value, min_size=count, max_size=count) if count <= 64 else st.nothing()
    data = draw(st.one_of(sized, st.lists(value, max_size=6), ODD))
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


@pytest.fixture(scope="module")
def demo_url(served_demo) -> str:
    return served_demo.url


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    inputs=st.lists(v2_tensors(), min_size=1, max_size=4),
    parameters=st.dictionaries(st.sampled_from(["priority", "timeout"]), ODD, max_size=2),
)
def test_v2_json_inference_never_answers_5xx(demo_url, inputs, parameters) -> None:
    body = orjson.dumps({"inputs": inputs, "parameters": parameters})
    response = httpx.post(f"{demo_url}/v2/models/demo/infer", content=body, timeout=60)
    assert response.status_code < 500, (inputs, parameters, response.text[:300])
    if response.status_code >= 400:
        assert isinstance(response.json()["error"], str)
    else:
        logits = response.json()["outputs"][0]["data"]
        assert all(isinstance(x, float) for x in logits)  # never null: NaN/inf are refused
