import msgpack
import numpy as np
import pytest

from batching import codec


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "int8", "uint8", "bool"])
def test_tensors_round_trip_with_dtype_and_shape(dtype: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.random((3, 5, 2)) * 100).astype(dtype)
    back = codec.unpack_tensors(codec.pack_tensors({"a": array, "b": array[:1]}))
    assert back["a"].dtype == array.dtype and back["a"].shape == (3, 5, 2)
    np.testing.assert_array_equal(back["a"], array)
    np.testing.assert_array_equal(back["b"], array[:1])


def test_big_endian_input_is_sent_little_endian() -> None:
    array = np.arange(4, dtype=">i4")
    frame = codec.tensor_to_wire(array)
    assert frame["data"] == np.arange(4, dtype="<i4").tobytes()
    np.testing.assert_array_equal(codec.tensor_from_wire(frame), np.arange(4))


def test_byte_count_must_match_shape() -> None:
    frame = {"dtype": "float32", "shape": [2, 2], "data": b"\0" * 12}
    with pytest.raises(codec.CodecError, match="needs 16 bytes, got 12"):
        codec.tensor_from_wire(frame)


@pytest.mark.parametrize(
    "frame",
    [
        {"dtype": "object", "shape": [1], "data": b"x"},
        {"dtype": "float32", "shape": [-1], "data": b""},
        {"dtype": "float32", "shape": [1] * 9, "data": b"\0" * 4},
        {"dtype": "float32", "shape": [1], "data": "text"},
        {"shape": [1], "data": b"\0" * 4},
    ],
)
def test_malformed_frames_are_rejected(frame: dict) -> None:
    with pytest.raises(codec.CodecError):
        codec.tensor_from_wire(frame)


def test_garbage_messages_are_rejected_not_unpickled() -> None:
    with pytest.raises(codec.CodecError):
        codec.unpack_tensors(b"\x80\x04garbage")
    with pytest.raises(codec.CodecError):
        codec.unpack_tensors(msgpack.packb([1, 2, 3]))
