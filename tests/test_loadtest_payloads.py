"""Payload sources, and the generator's HTTP/1.1 client against a real local socket server."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import numpy as np
import orjson
import pytest

from fusionserve.client.types import ModelInfo, TensorSpec
from fusionserve.loadtest.http import HttpError, Pool
from fusionserve.loadtest.payloads import (
    PayloadError,
    build,
    jsonl_items,
    random_inputs,
    stack_rows,
    synthetic_items,
)

TEXT_MODEL = [
    TensorSpec("input_ids", "INT64", [-1, -1]),
    TensorSpec("attention_mask", "INT64", [-1, -1]),
    TensorSpec("image", "FP32", [-1, 3, 8, 8]),
]


def model(inputs: list[TensorSpec], preprocessing: dict | None = None) -> ModelInfo:
    config = {"preprocessing": preprocessing or {"text": None, "image": None}}
    return ModelInfo("m", ["1"], True, 1, inputs, [], config)


def test_random_inputs_follow_the_signature() -> None:
    rng = np.random.default_rng(0)
    one = random_inputs(TEXT_MODEL, None, rng)
    length = one["input_ids"].shape[0]
    assert 8 <= length <= 16 and one["attention_mask"].shape == (length,)
    assert (one["attention_mask"] == 1).all() and one["input_ids"].dtype == np.int64
    assert one["input_ids"].min() >= 0 and one["input_ids"].max() <= 9
    assert one["image"].shape == (3, 8, 8) and one["image"].dtype == np.float32
    batch = random_inputs(TEXT_MODEL, 5, rng)
    assert batch["input_ids"].shape[0] == 5 and batch["image"].shape == (5, 3, 8, 8)
    assert batch["input_ids"].shape == batch["attention_mask"].shape


def test_synthetic_items_are_text_and_a_png() -> None:
    items = synthetic_items(3, seed=7)
    assert len(items) == 3 and all(isinstance(item["text"], str) and item["text"] for item in items)
    assert base64.b64decode(items[0]["image"]).startswith(b"\x89PNG")
    assert items == synthetic_items(3, seed=7)


def test_bodies_for_v1_and_v2() -> None:
    m = model([TensorSpec("x", "FP32", [-1, 4])])
    single = build("random", "v1", m, 1, seed=0)
    assert single.source == "random" and len(single.bodies) == 32
    assert len(orjson.loads(single.body(0))["inputs"]["x"]) == 4
    listed = orjson.loads(build("random", "v1", m, 3, seed=0).body(5))
    assert len(listed["items"]) == 3
    v2 = orjson.loads(build("auto", "v2", m, 3, seed=0).body(0))
    [tensor] = v2["inputs"]
    assert (tensor["name"], tensor["shape"], tensor["datatype"]) == ("x", [3, 4], "FP32")
    assert len(tensor["data"]) == 12


def test_auto_picks_synthetic_for_raw_input_models() -> None:
    m = model(TEXT_MODEL, {"text": {"tokenizer": "t.json"}, "image": {"height": 64}})
    payloads = build("auto", "v1", m, 2, seed=1)
    assert payloads.source == "synthetic"
    assert set(orjson.loads(payloads.body(0))["items"][0]) == {"text", "image"}
    with pytest.raises(PayloadError, match="need --api v1"):
        build("synthetic", "v2", m, 1, seed=1)


def test_jsonl_items_and_their_v2_batches(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    rows = [{"inputs": {"x": [float(i)] * 4}} for i in range(5)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert jsonl_items(path) == rows
    m = model([TensorSpec("x", "FP32", [-1, 4])])
    payloads = build(str(path), "v2", m, 2, seed=0)
    assert len(payloads.bodies) == 3  # 5 items in pairs, rotating
    assert orjson.loads(payloads.body(1))["inputs"][0]["data"] == [2.0] * 4 + [3.0] * 4
    path.write_text('{"inputs": {"x": [1, 2, 3, 4]}}\nnot json\n')
    with pytest.raises(PayloadError, match=":2: not JSON"):
        jsonl_items(path)
    with pytest.raises(PayloadError, match="not synthetic, random or a JSONL file"):
        build(str(tmp_path / "missing.jsonl"), "v1", m, 1, seed=0)


def test_ragged_items_cannot_form_one_v2_batch() -> None:
    items = [{"inputs": {"input_ids": [1, 2], "attention_mask": [1, 1], "image": []}}] * 2
    items.append({"inputs": {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "image": []}})
    with pytest.raises(PayloadError, match="differ in the shape of 'input_ids'"):
        stack_rows(items, TEXT_MODEL[:2])


async def _serve(answers: list[bytes]) -> tuple[asyncio.base_events.Server, str, list[bytes]]:
    """A socket server that answers each request with the next canned response."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            head = await reader.readuntil(b"\r\n\r\n")
            length = [
                int(h.split(b":")[1])
                for h in head.split(b"\r\n")
                if h.startswith(b"Content-Length")
            ]
            body = await reader.readexactly(length[-1]) if length else b""
            seen.append(head + body)
            answer = answers.pop(0)
            writer.write(answer)
            await writer.drain()
            if b"close" in answer.split(b"\r\n\r\n")[0]:
                break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/base", seen


def test_the_generator_http_client_reads_lengths_chunks_and_closes() -> None:
    async def main() -> None:
        answers = [
            b"HTTP/1.1 202 ACCEPTED\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 429 TOO MANY\r\nConnection: close\r\nContent-Length: 4\r\n\r\nfull",
            b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
        ]
        server, url, seen = await _serve(answers)
        pool = Pool(url, 1)
        first = await pool.request("POST", "/v1/x", b'{"a": 1}', timeout=5)
        assert (first.status, first.body) == (202, b"{}")
        chunked = await pool.request("GET", "/v1/y?wait=1", timeout=5)
        assert (chunked.status, chunked.body) == (200, b"abcde")
        refused = await pool.request("GET", "/v1/z", timeout=5)
        assert (refused.status, refused.headers["connection"], refused.body) == (
            429,
            "close",
            b"full",
        )
        until_eof = await pool.request("GET", "/v1/w", timeout=5)
        assert until_eof.body == b"until the end"
        assert seen[0].startswith(b"POST /base/v1/x HTTP/1.1\r\n") and seen[0].endswith(b'{"a": 1}')
        assert b"Content-Length: 8\r\n" in seen[0] and b"Content-Length" not in seen[1]
        await pool.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


def test_the_generator_http_client_times_out_and_reports_bad_answers() -> None:
    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # never answers

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        pool = Pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", 2)
        with pytest.raises(TimeoutError):
            await pool.request("GET", "/", timeout=0.2)
        server.close()
        bad, url, _ = await _serve([b"SMTP ready\r\n\r\n"])
        with pytest.raises(HttpError, match=r"not an HTTP/1\.x status line"):
            await Pool(url, 1).request("GET", "/", timeout=5)
        bad.close()

    asyncio.run(main())
