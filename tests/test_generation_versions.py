"""A version switch in the middle of a generation: each sequence ends on the version it began on.

The worker's generation loop runs in this process, turn by turn, on the real Redis and real
ONNX Runtime sessions of two versions of the tiny model (different weights); requests
come through the real API over HTTP. Driving the loop by hand puts the switch exactly
between two decoder steps of a running sequence, which no timing could do reliably.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import httpx
import numpy as np
from generation_models import random_inputs, tiny_generator

from batching.broker import Broker
from batching.settings import Settings
from worker.control import publish
from worker.generation import Request
from worker.generation.runtime import GenerationRuntime
from worker.generation.serve import GenerationLoop
from worker.repository import load_model_files
from worker.versions import ModelVersions

MODEL = "tiny_gen_versions"
OPTIONS = {"max_new_tokens": 24, "max_active": 4, "eos_slope": 0.2}


def two_versions(repository: Path) -> Path:
    """The model with version 1 (seed 0) and version 2 (other weights: seed 1)."""
    directory = tiny_generator(repository, MODEL, **OPTIONS)
    other = tiny_generator(repository.parent / "other", MODEL, seed=1, **OPTIONS)
    shutil.copytree(other / "1", directory / "2")
    return directory


def alone(runtime: GenerationRuntime, inputs: dict) -> list[int]:
    """The tokens of one greedy request in an engine of its own."""
    engine = runtime.engine
    engine.admit([Request(key="alone", inputs=inputs)])
    ids: list[int] = []
    while engine.active:
        ids += [event.token_id for event in engine.step() if event.token_id is not None]
    return ids


def inputs_of(seed: int) -> dict[str, np.ndarray]:
    return random_inputs(np.random.default_rng(seed), text_length=4)


def test_a_sequence_ends_on_its_version_while_new_ones_start_on_the_next(
    stack_factory, redis_client, redis_url: str, tmp_path: Path
) -> None:
    directory = two_versions(tmp_path / "repo")
    files = load_model_files(directory)
    one, two = GenerationRuntime(files, 1), GenerationRuntime(files, 2)
    # A request long enough to be caught between steps; one whose tokens tell the versions apart.
    first = next(s for s in range(100) if len(alone(one, inputs_of(s))) >= 4)
    second = next(
        s for s in range(100, 200) if alone(one, inputs_of(s)) != alone(two, inputs_of(s))
    )

    versions = ModelVersions(files)
    versions.apply([1])
    publish(redis_client, versions)
    stack = stack_factory(tmp_path / "repo")
    stack.start_api()
    settings = Settings(redis_url=redis_url, model_repository=tmp_path / "repo")
    loop = GenerationLoop(Broker(redis_client), versions, "in-test", settings, threading.Event())
    loop.broker.ensure_groups(MODEL, loop.batching.all_levels)

    def submit(seed: int) -> str:
        named = {k: v.tolist() for k, v in inputs_of(seed).items()}
        response = http.post(f"/v1/models/{MODEL}/generate", json={"inputs": named})
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    with httpx.Client(base_url=stack.url, timeout=30) as http:
        started = submit(first)
        loop.turn()  # pulls it, starts it on version 1 and runs its first decoder step
        assert [r.runtime.version for r in loop.running.values()] == [1]
        versions.apply([2])  # version 2 loads; version 1 is unloaded and drains
        assert versions.serving == [2] and versions.draining == [1]
        publish(redis_client, versions)
        later = submit(second)
        for _ in range(200):  # both finish in well under 200 steps (24 tokens at most)
            if not loop.holding and http.get(f"/v1/jobs/{later}").json()["status"] == "done":
                break
            loop.turn()
        done_first = http.get(f"/v1/jobs/{started}").json()
        done_second = http.get(f"/v1/jobs/{later}").json()

    assert done_first["status"] == "done", done_first
    assert (done_first["version"], done_first["tokens"]) == ("1", alone(one, inputs_of(first)))
    assert done_second["status"] == "done", done_second
    assert (done_second["version"], done_second["tokens"]) == ("2", alone(two, inputs_of(second)))
    assert versions.drop_drained(lambda version: 0) == [1]  # nothing runs on it any more
