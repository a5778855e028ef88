"""Hostile input through a real API and worker: every one answers its 4xx, enqueues nothing,
and the big ones are refused before they are decoded (the API's peak memory barely moves)."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from conftest import DEMO
from helpers import b64, children, entries_added
from PIL import Image

from fusionserve.zoo import data

MODEL = "demo"
VOCAB = 45
"""Rows of the demo model's token embedding (its tokenizer's vocabulary)."""


@pytest.fixture(scope="module")
def api(served_demo, module_redis) -> Iterator[tuple[httpx.Client, object]]:
    with httpx.Client(base_url=served_demo.url, timeout=60) as http:
        yield http, module_redis


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def sample_item() -> dict:
    [s] = data.generate(1, 7)
    return {"text": s.question, "image": b64(data.png_bytes(s.image))}


def tensor_item(**inputs) -> dict:
    [s] = data.generate(1, 7)
    given = {
        "input_ids": [2, 5, 6],
        "attention_mask": [1, 1, 1],
        "image": data.normalize(s.image).tolist(),
    }
    return {"inputs": given | inputs}


def v2_tensors(**changes) -> dict:
    """A /v2 JSON request for one row of the demo model; ``changes`` replace whole tensors."""
    [s] = data.generate(1, 7)
    image = data.normalize(s.image)[None]
    inputs = {
        "input_ids": {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [2, 5, 6]},
        "attention_mask": {
            "name": "attention_mask",
            "shape": [1, 3],
            "datatype": "INT64",
            "data": [1, 1, 1],
        },
        "image": {
            "name": "image",
            "shape": list(image.shape),
            "datatype": "FP32",
            "data": image.ravel().tolist(),
        },
    }
    for name, tensor in changes.items():
        inputs[name] = tensor
    return {"inputs": list(inputs.values())}


def binary_request(tensors: list[tuple[dict, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A /v2 body with the binary tensor data extension: each (tensor header, raw bytes)."""
    inputs = [t | {"parameters": {"binary_data_size": len(raw)}} for t, raw in tensors]
    head = orjson.dumps({"inputs": inputs})
    headers = {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }
    return head + b"".join(raw for _, raw in tensors), headers


def encode_bytes(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def text_and_png_rows(rows: int, text: bytes = b"is there a red square?") -> tuple[bytes, dict]:
    tiny = png(1, 1)
    return binary_request(
        [
            ({"name": "text", "shape": [rows], "datatype": "BYTES"}, encode_bytes([text] * rows)),
            ({"name": "image", "shape": [rows], "datatype": "BYTES"}, encode_bytes([tiny] * rows)),
        ]
    )


def assert_refused(api, response: httpx.Response, status: int, message: str, before: int) -> None:
    _, client = api
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    text = error if isinstance(error, str) else error["message"]
    assert message in text, text
    assert entries_added(client, MODEL) == before


# --- /v1 ----------------------------------------------------------------------------------

V1_BAD = {
    "4 MB of text": ({**sample_item(), "text": "x" * 4_000_000}, 422, "longer than 65536"),
    "a 5792x5792 PNG": (
        {"text": "what colour?", "image": b64(png(5792, 5792))},
        422,
        "5792x5792 pixels",
    ),
    "a token id of 10**12": (tensor_item(input_ids=[2, 10**12, 6]), 422, "token ids"),
    "a token id past the vocabulary": (tensor_item(input_ids=[2, VOCAB, 6]), 422, "token ids"),
    "a negative token id": (tensor_item(input_ids=[2, -1, 6]), 422, "token ids"),
    "booleans as INT64": (tensor_item(input_ids=[True, False, True]), 422, "not booleans"),
    "a boolean among INT64": (tensor_item(input_ids=[True, 3, 4]), 422, "not booleans"),
    "a float32 overflow": (
        tensor_item(image=np.full((3, 64, 64), 1e39).tolist()),
        422,
        "NaN or infinity",
    ),
    "priority true": ({**sample_item(), "priority": True}, 422, "priority"),
    'priority "1"': ({**sample_item(), "priority": "1"}, 422, "priority"),
    'timeout_ms "5"': ({**sample_item(), "timeout_ms": "5"}, 422, "timeout_ms"),
}


@pytest.mark.parametrize("case", V1_BAD)
def test_v1_hostile_inputs_are_refused_and_enqueue_nothing(api, case: str) -> None:
    http, client = api
    body, status, message = V1_BAD[case]
    before = entries_added(client, MODEL)
    response = http.post(f"/v1/models/{MODEL}/infer", json=body)
    assert_refused(api, response, status, message, before)


def test_v1_invalid_json_is_called_invalid_json(api) -> None:
    http, client = api
    before = entries_added(client, MODEL)
    response = http.post(f"/v1/models/{MODEL}/infer", content=b'{"text": "hi",')
    assert_refused(api, response, 400, "not valid JSON", before)
    array = http.post(f"/v1/models/{MODEL}/infer", content=b"[1, 2]")
    assert_refused(api, array, 400, "must be a JSON object", before)


def chunks(total: int, piece: int = 1 << 20) -> Iterator[bytes]:
    """A body of ``total`` bytes sent with chunked transfer encoding (no Content-Length)."""
    yield b'{"text": "'
    sent = 10
    while sent < total:
        yield b"x" * piece
        sent += piece
    yield b'"}'


@pytest.mark.parametrize("path", [f"/v1/models/{MODEL}/infer", f"/v2/models/{MODEL}/infer"])
def test_a_chunked_body_over_the_limit_is_413(api, path: str) -> None:
    http, client = api
    before = entries_added(client, MODEL)
    response = http.post(path, content=chunks(33 * 1024 * 1024))
    assert_refused(api, response, 413, "exceeds the limit of 33554432 bytes", before)


def test_a_job_id_with_a_non_canonical_row_is_404(api) -> None:
    http, _ = api
    job_id = http.post(f"/v1/models/{MODEL}/infer", json=sample_item()).json()["job_id"]
    assert http.get(f"/v1/jobs/{job_id}", params={"wait": 10}).json()["status"] == "done"
    assert job_id.endswith(".0")
    for alias in (job_id + "0", job_id[:-1] + "00", job_id[:-1] + "000000"):
        response = http.get(f"/v1/jobs/{alias}")
        assert response.status_code == 404, alias
    many = http.post(f"/v1/models/{MODEL}/infer", json={"items": [sample_item()] * 3}).json()
    third = many["job_ids"][2]
    assert http.get(f"/v1/jobs/{third}", params={"wait": 10}).json()["status"] == "done"
    assert http.get(f"/v1/jobs/{third[:-1]}02").status_code == 404


# --- /v2 ----------------------------------------------------------------------------------


def ids(values: list, shape: list | None = None) -> dict:
    return {
        "name": "input_ids",
        "shape": shape or [1, len(values)],
        "datatype": "INT64",
        "data": values,
    }


V2_BAD = {
    "negative shape [-2, -2]": (
        v2_tensors(input_ids=ids([2, 5, 6, 7], [-2, -2])),
        400,
        "non-negative integers",
    ),
    "negative shape [0, -1]": (v2_tensors(input_ids=ids([], [0, -1])), 400, "non-negative"),
    'shape ["1", "3"]': (v2_tensors(input_ids=ids([2, 5, 6], ["1", "3"])), 400, "shape"),
    "shape [1.0, 3.0]": (v2_tensors(input_ids=ids([2, 5, 6], [1.0, 3.0])), 400, "shape"),
    "shape [true, 3]": (v2_tensors(input_ids=ids([2, 5, 6], [True, 3])), 400, "shape"),
    "a token id of 10**12": (v2_tensors(input_ids=ids([2, 10**12, 6])), 422, "token ids"),
    "a token id past the vocabulary": (v2_tensors(input_ids=ids([2, VOCAB, 6])), 422, "token ids"),
    "a negative token id": (v2_tensors(input_ids=ids([2, -5, 6])), 422, "token ids"),
    "booleans as INT64": (v2_tensors(input_ids=ids([True, 3, 4])), 422, "not booleans"),
    "a float32 overflow": (
        v2_tensors(
            image={
                "name": "image",
                "shape": [1, 3, 64, 64],
                "datatype": "FP32",
                "data": [1e39] * (3 * 64 * 64),
            }
        ),
        422,
        "NaN or infinity",
    ),
    "BYTES text of shape [0]": (
        {
            "inputs": [
                {"name": "text", "shape": [0], "datatype": "BYTES", "data": []},
                {"name": "image", "shape": [0], "datatype": "BYTES", "data": []},
            ]
        },
        422,
        "at least one row",
    ),
    "BYTES data nested 500 deep": (
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": json.loads("[" * 500 + '"hi"' + "]" * 500),
                },
                {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]},
            ]
        },
        422,
        "nested deeper than its shape",
    ),
    "text over the character limit": (
        {
            "inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["y" * 70_000]},
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [png(8, 8).decode("latin-1")],
                },
            ]
        },
        422,
        "longer than 65536",
    ),
    "priority true": (v2_tensors() | {"parameters": {"priority": True}}, 400, "priority"),
    "timeout true": (v2_tensors() | {"parameters": {"timeout": True}}, 400, "timeout"),
}


@pytest.mark.parametrize("case", V2_BAD)
def test_v2_json_hostile_inputs_are_refused_and_enqueue_nothing(api, case: str) -> None:
    http, client = api
    body, status, message = V2_BAD[case]
    before = entries_added(client, MODEL)
    response = http.post(f"/v2/models/{MODEL}/infer", content=json.dumps(body))  # 500 deep
    assert_refused(api, response, status, message, before)


def test_v2_binary_non_finite_floats_are_422(api) -> None:
    http, client = api
    before = entries_added(client, MODEL)
    image = np.zeros((1, 3, 64, 64), "<f4")
    image[0, 1, 2, 3] = np.nan
    body, headers = binary_request(
        [
            (
                {"name": "input_ids", "shape": [1, 3], "datatype": "INT64"},
                np.array([[2, 5, 6]], "<i8").tobytes(),
            ),
            (
                {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64"},
                np.ones((1, 3), "<i8").tobytes(),
            ),
            ({"name": "image", "shape": [1, 3, 64, 64], "datatype": "FP32"}, image.tobytes()),
        ]
    )
    response = http.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert_refused(api, response, 422, "NaN or infinity", before)


def test_v2_rows_over_the_item_limit_are_413(api) -> None:
    http, client = api
    before = entries_added(client, MODEL)
    body, headers = text_and_png_rows(1025)
    response = http.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert_refused(api, response, 413, "1025 rows exceed the limit of 1024", before)
    assert response.headers["content-type"].startswith("application/json")


def test_v2_a_5792_square_png_is_422(api) -> None:
    http, client = api
    before = entries_added(client, MODEL)
    body, headers = binary_request(
        [
            ({"name": "text", "shape": [1], "datatype": "BYTES"}, encode_bytes([b"colour?"])),
            ({"name": "image", "shape": [1], "datatype": "BYTES"}, encode_bytes([png(5792, 5792)])),
        ]
    )
    response = http.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert_refused(api, response, 422, "5792x5792 pixels", before)


def test_good_requests_still_run(api) -> None:
    http, _ = api
    response = http.post(f"/v2/models/{MODEL}/infer", json=v2_tensors())
    assert response.status_code == 200, response.text
    body, headers = text_and_png_rows(4)
    response = http.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [4, 10]


# --- memory -------------------------------------------------------------------------------


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for {pid}")


def _api_pids(stack) -> list[int]:
    """The API's processes: what the stack started and the (gunicorn) workers they forked."""
    pids = set(stack.pids())
    for pid in stack.pids():
        pids.update(children(pid))
    return sorted(pids)


PEAK_GROWTH_MIB = 200
"""Generous: the refused inputs below took 700+ MB each before they were bounded."""


def test_big_inputs_are_refused_before_they_cost_memory(stack_factory, redis_client) -> None:
    stack = stack_factory(DEMO.parent)
    stack.start_api()
    stack.start_worker(MODEL)
    stack.wait_ready(MODEL, 1)
    worker_pids = {p.pid for p in stack.workers}
    with httpx.Client(base_url=stack.url, timeout=120) as http:
        assert http.post(f"/v1/models/{MODEL}/infer", json=sample_item()).status_code == 202
        body, headers = text_and_png_rows(4)
        assert http.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers).is_success
        pids = [p for p in _api_pids(stack) if p not in worker_pids]
        before = {pid: _peak_kib(pid) for pid in pids}
        big_text = {**sample_item(), "text": "x" * 4_000_000}
        assert http.post(f"/v1/models/{MODEL}/infer", json=big_text).status_code == 422
        big_png = {"text": "what colour?", "image": b64(png(5792, 5792))}
        assert http.post(f"/v1/models/{MODEL}/infer", json=big_png).status_code == 422
        body, headers = text_and_png_rows(4000)
        rows = http.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
        assert rows.status_code == 413
        after = {pid: _peak_kib(pid) for pid in pids}
    growth = {pid: (after[pid] - before[pid]) / 1024 for pid in pids}
    print(f"API peak RSS (VmHWM, KiB) before {before}, after {after}; growth MiB {growth}")
    assert max(growth.values()) < PEAK_GROWTH_MIB, growth


# --- bulk batches -------------------------------------------------------------------------


def test_bulk_lines_with_hostile_input_fail_alone(stack_factory) -> None:
    """Bulk ingest runs the same checks: the bad lines fail with the reason, the rest run."""
    from helpers import wait_settled

    stack = stack_factory(DEMO.parent)
    stack.start_api()
    stack.start_worker(MODEL)
    stack.wait_ready(MODEL, 1)
    stack.start_bulk_worker()
    lines = [
        sample_item(),
        {**sample_item(), "text": "z" * 1_000_000},
        tensor_item(input_ids=[2, 10**12, 6]),
        tensor_item(image=np.full((3, 64, 64), 1e39).tolist()),
        {"text": "what colour?", "image": b64(png(5792, 5792))},
        sample_item(),
    ]
    body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        created = http.post("/v1/batches", params={"model": MODEL}, content=body)
        assert created.status_code == 202, created.text
        batch_id = created.json()["batch_id"]
        status = wait_settled(http, batch_id)
        assert status["counts"]["done"] == 2 and status["counts"]["failed"] == 4, status
        rows = [
            orjson.loads(r)
            for r in http.get(f"/v1/batches/{batch_id}/results").content.splitlines()
        ]
    errors = {r["line"]: r["error"]["message"] for r in rows if r["status"] == "failed"}
    assert "longer than 65536" in errors[2]
    assert "token ids" in errors[3]
    assert "NaN or infinity" in errors[4]
    assert "5792x5792 pixels" in errors[5]
