"""Request bodies: ``/v1`` items and KServe V2 tensors, encoded with orjson.

orjson writes numpy arrays natively (no ``.tolist()`` round trip), which matters for
image-sized inputs; arrays it cannot take directly (non-contiguous, strings) fall back to
``tolist()``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

# KServe V2 datatype names <-> numpy dtype names (BYTES: strings, as numpy objects).
V2_TO_NUMPY = {
    "BOOL": "bool",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
NUMPY_TO_V2 = {v: k for k, v in V2_TO_NUMPY.items()}


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes | bytearray | memoryview):
        return base64.b64encode(obj).decode()
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def encode_json(body: Any) -> bytes:
    """JSON bytes for a request body; numpy arrays and scalars are written as numbers."""
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY, default=_default)


def image_field(image: bytes | bytearray | memoryview | str) -> str:
    """A PNG/JPEG (or WAV) as the base64 text the API wants; a ``str`` is base64 already."""
    if isinstance(image, str):
        return image
    return base64.b64encode(bytes(image)).decode()


def make_item(
    inputs: Mapping[str, Any] | None = None,
    text: str | None = None,
    image: bytes | str | None = None,
    audio: bytes | str | None = None,
) -> dict[str, Any]:
    """One ``/v1`` item: named tensors (arrays or nested lists), or raw text, image, audio."""
    item: dict[str, Any] = {}
    if inputs is not None:
        item["inputs"] = dict(inputs)
    if text is not None:
        item["text"] = text
    if image is not None:
        item["image"] = image_field(image)
    if audio is not None:
        item["audio"] = image_field(audio)
    return item


def normalize_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """A caller's item dict with image bytes encoded; other keys go to the server as given."""
    out = dict(item)
    if isinstance(out.get("image"), bytes | bytearray | memoryview):
        out["image"] = image_field(out["image"])
    return out


def v1_body(
    item_or_items: dict[str, Any] | list[dict[str, Any]],
    priority: int | None,
    timeout_ms: int | None,
) -> dict[str, Any]:
    """The ``POST /v1/models/<m>/infer`` body: one item's fields, or ``{"items": [...]}``."""
    body = {"items": item_or_items} if isinstance(item_or_items, list) else dict(item_or_items)
    if priority is not None:
        body["priority"] = priority
    if timeout_ms is not None:
        body["timeout_ms"] = timeout_ms
    return body


def generate_body(
    item: dict[str, Any],
    *,
    max_new_tokens: int | None,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    stop: Sequence[str],
    priority: int | None,
    timeout_ms: int | None,
) -> dict[str, Any]:
    """The ``POST /v1/models/<m>/generate`` body, less ``stream`` (the server checks it all)."""
    body = v1_body(item, priority, timeout_ms)
    stop = [stop] if isinstance(stop, str) else list(stop)  # one stop string, not its letters
    body.update(temperature=temperature, top_k=top_k, top_p=top_p, stop=stop)
    if max_new_tokens is not None:
        body["max_new_tokens"] = max_new_tokens
    if seed is not None:
        body["seed"] = seed
    return body


def v2_tensor(name: str, value: Any) -> dict[str, Any]:
    """One V2 input: the array's shape, datatype and flat row-major data."""
    array = np.asarray(value)
    if array.dtype.kind in "USO":
        data: Any = [str(x) for x in array.reshape(-1).tolist()]
        datatype = "BYTES"
    else:
        datatype = NUMPY_TO_V2.get(array.dtype.name, "")
        if not datatype:
            raise TypeError(f"input {name!r}: dtype {array.dtype} has no KServe V2 datatype")
        data = np.ascontiguousarray(array).reshape(-1)
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}


def v2_body(inputs: Mapping[str, Any], outputs: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``POST /v2/models/<m>/infer`` JSON body."""
    body: dict[str, Any] = {"inputs": [v2_tensor(n, v) for n, v in inputs.items()]}
    if outputs is not None:
        body["outputs"] = [{"name": n} for n in outputs]
    return body


def v2_outputs(body: dict[str, Any]) -> dict[str, np.ndarray]:
    """The V2 response's outputs as arrays of their declared datatype and shape."""
    arrays: dict[str, np.ndarray] = {}
    for out in body.get("outputs", []):
        shape = [int(d) for d in out.get("shape", [])]
        datatype = out.get("datatype", "")
        if datatype == "BYTES":
            array = np.array(out["data"], dtype=object)
        else:
            array = np.asarray(out["data"], dtype=V2_TO_NUMPY.get(datatype))
        arrays[out["name"]] = array.reshape(shape)
    return arrays
