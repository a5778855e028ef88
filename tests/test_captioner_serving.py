"""The shipped captioner through the whole server: what 200 held-out requests get over HTTP
from real worker processes (iteration-level batching, the Valkey queue) is exactly what
the numpy + ONNX Runtime reference decoder writes for them one batch at a time, and it
meets the model's accuracy targets. The reference equals torch's tokens (its own test,
tests/test_captioner_export.py), so the server does too.

The 200 go in as one bulk batch (raw question and PNG per line, preprocessed by the
server like any request) and, to exercise the online path too, 24 of them as streaming
``/v1`` requests sent together.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import orjson
import pytest
from helpers import b64, wait_until

from batching.model_config import ModelConfig
from fusionserve.zoo.data import HELD_OUT_SEED, generation_samples, png_bytes
from fusionserve.zoo.generate_reference import ReferenceGenerator, score

REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
MODEL = "captioner"
HELD_OUT = 200


@pytest.fixture(scope="module")
def samples():
    return generation_samples(HELD_OUT, HELD_OUT_SEED)


@pytest.fixture(scope="module")
def reference(samples) -> list[tuple[list[int], str]]:
    generator = ReferenceGenerator(REPOSITORY / MODEL)
    decoded = generator.generate(samples)
    return [(list(d.ids), generator.text(d)) for d in decoded]


@pytest.fixture(scope="module")
def stack(module_stack_factory, tmp_path_factory):
    stack = module_stack_factory(
        REPOSITORY,
        FUSIONSERVE_DATA_DIR=str(tmp_path_factory.mktemp("data")),
        FUSIONSERVE_SWEEP_INTERVAL_S="0.2",
    )
    stack.start_api()
    stack.start_worker(MODEL)
    stack.wait_ready(MODEL, 1)
    stack.start_bulk_worker()
    return stack


EOS = ModelConfig.load(REPOSITORY / MODEL / "config.toml").generation.eos_id  # type: ignore[union-attr]


def written(row: dict) -> list[int]:
    """The tokens a row wrote, without the end-of-sequence token the reference leaves out."""
    ids = row["tokens"]
    return ids[:-1] if row["finish_reason"] == "stop" and ids and ids[-1] == EOS else ids


def request(sample) -> dict:
    return {"text": sample.question, "image": b64(png_bytes(sample.image))}


def test_held_out_requests_served_equal_the_reference_and_meet_the_targets(
    stack, samples, reference
) -> None:
    body = b"\n".join(
        orjson.dumps({"custom_id": str(i), **request(s)}) for i, s in enumerate(samples)
    )
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        created = http.post("/v1/batches", params={"model": MODEL}, content=body)
        assert created.status_code == 202, created.text
        batch = created.json()["batch_id"]

        def settled() -> bool:
            return http.get(f"/v1/batches/{batch}").json()["status"] in ("completed", "failed")

        wait_until(settled, "the batch never settled", 300)
        results = http.get(f"/v1/batches/{batch}/results").content
    rows = {int(r["custom_id"]): r for r in map(orjson.loads, results.splitlines())}
    assert [rows[i]["status"] for i in range(HELD_OUT)] == ["done"] * HELD_OUT
    mismatched = [i for i in range(HELD_OUT) if written(rows[i]) != reference[i][0]]
    assert not mismatched, f"{len(mismatched)} of {HELD_OUT} differ from the reference"
    texts = [rows[i]["text"] for i in range(HELD_OUT)]
    assert texts == [text for _, text in reference]
    figures = score(texts, samples)
    assert figures["answer_exact"] >= 0.95, figures
    assert figures["describe_objects"] >= 0.90, figures


def test_concurrent_streams_write_the_reference_text(stack, samples, reference) -> None:
    """24 streaming requests at once: they join and leave one running batch mid-flight."""
    got: dict[int, str] = {}

    def ask(i: int) -> None:
        with (
            httpx.Client(base_url=stack.url, timeout=60) as http,
            http.stream(
                "POST",
                f"/v1/models/{MODEL}/generate",
                json={**request(samples[i]), "stream": True},
            ) as response,
        ):
            pieces = []
            for raw in response.iter_lines():
                if raw.startswith("data: ") and '"text"' in raw:
                    event = orjson.loads(raw.removeprefix("data: "))
                    if "index" in event:
                        pieces.append(event["text"])
            got[i] = "".join(pieces)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert {i: got.get(i) for i in range(24)} == {i: reference[i][1] for i in range(24)}
