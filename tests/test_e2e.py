"""The whole pipeline through real processes: HTTP API, Redis, two workers, the demo model."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import DEMO
from helpers import b64, demo_item, reference_logits, reference_session, wait_all
from tokenizers import Tokenizer

from fusionserve.zoo import data

MODEL = "demo"
N_ITEMS = 300


@pytest.fixture
def demo_stack(stack_factory):
    stack = stack_factory(DEMO.parent)
    stack.start_api(processes=2)
    stack.start_worker(MODEL)
    stack.start_worker(MODEL)
    stack.wait_ready(MODEL, 2)
    return stack


def test_300_concurrent_items_match_onnxruntime_and_are_accurate(demo_stack) -> None:
    samples = data.generate(N_ITEMS, data.HELD_OUT_SEED)
    tokenizer = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    rng = random.Random(0)
    # Mixed submissions: single items and lists of 2..12; raw text+image and named tensors.
    submissions: list[list[int]] = []
    i = 0
    while i < N_ITEMS:
        size = 1 if rng.random() < 0.5 else rng.randint(2, 12)
        submissions.append(list(range(i, min(i + size, N_ITEMS))))
        i += size
    as_tensors = [rng.random() < 0.3 for _ in range(N_ITEMS)]

    def submit(indices: list[int]) -> list[str]:
        items = [demo_item(samples[k], as_tensors[k], tokenizer) for k in indices]
        with httpx.Client(base_url=demo_stack.url, timeout=60) as http:
            if len(items) == 1:
                response = http.post(f"/v1/models/{MODEL}/infer", json=items[0])
                assert response.status_code == 202, response.text
                return [response.json()["job_id"]]
            response = http.post(f"/v1/models/{MODEL}/infer", json={"items": items})
            assert response.status_code == 202, response.text
            return response.json()["job_ids"]

    with ThreadPoolExecutor(16) as pool:
        id_lists = list(pool.map(submit, submissions))
    job_ids = [job_id for ids in id_lists for job_id in ids]
    assert len(job_ids) == N_ITEMS == len(set(job_ids))

    with httpx.Client(base_url=demo_stack.url, timeout=60) as http:
        results = wait_all(http, job_ids)
    assert {r["status"] for r in results.values()} == {"done"}

    session = reference_session()
    correct, worst, batch_sizes = 0, 0.0, []
    for k, job_id in enumerate(job_ids):
        body = results[job_id]
        expected = reference_logits(session, tokenizer, samples[k])
        served = np.array(body["outputs"]["logits"], dtype=np.float32)
        worst = max(worst, float(np.abs(served - expected).max()))
        correct += body["labels"][0]["label"] == data.LABELS[samples[k].label]
        batch_sizes.append(body["timings"]["batch_size"])
        assert body["timings"]["compute_ms"] > 0 and body["timings"]["worker"]
    assert worst <= 1e-4, f"served vs in-process ORT: max abs diff {worst}"
    assert max(batch_sizes) > 1, "no batch held more than one item"
    assert correct / N_ITEMS >= 0.95, f"accuracy {correct / N_ITEMS:.3f}"
    workers = {results[j]["timings"]["worker"] for j in job_ids}
    assert len(workers) == 2, f"one worker did all the work: {workers}"


def test_the_shipped_demo_answers_a_generated_question(demo_stack) -> None:
    [sample] = data.generate(1, 12345)
    with httpx.Client(base_url=demo_stack.url, timeout=30) as http:
        body = {"text": sample.question, "image": b64(data.png_bytes(sample.image))}
        job_id = http.post(f"/v1/models/{MODEL}/infer", json=body).json()["job_id"]
        result = http.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()
    assert result["status"] == "done"
    assert result["labels"][0]["label"] == data.LABELS[sample.label]
    scores = [lbl["score"] for lbl in result["labels"]]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1


def test_demo_repository_is_complete() -> None:
    assert (DEMO / "config.toml").is_file() and (DEMO / "tokenizer.json").is_file()
    assert sum(f.stat().st_size for f in Path(DEMO).rglob("*") if f.is_file()) < 10 * 2**20
