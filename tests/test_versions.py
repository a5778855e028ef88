"""Model versions under load: load version 2 through the repository API, then unload version 1.

No request fails; version-less requests reach version 2 once it is loaded; requests
pinned to version 1 that are in flight when it is unloaded still finish on it (it
drains), and afterwards version 1 answers 404.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import DEMO
from helpers import wait_until
from stack import ROOT

from batching import keys
from fusionserve.zoo import data

MODEL = "demo"
POLICY = "\n[version_policy]\nlatest = 2\n"


@pytest.fixture(scope="module")
def exported_version_2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`fusionserve export` of the demo's architecture as version 2 (a short training).

    Exported beside the served repository, before any load: the export (half a minute of
    torch) need not compete with the load for the CPU. Its version directory is copied
    into the served repository while the load runs.
    """
    repository = tmp_path_factory.mktemp("export")
    shutil.copytree(DEMO, repository / MODEL)
    cmd = [sys.executable, "-m", "fusionserve.cli", "export", "--name", MODEL, "--version", "2"]
    cmd += ["--steps", "20", "--min-accuracy", "0", "--model-repository", str(repository)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, timeout=300)
    assert (repository / MODEL / "2" / "model.onnx").is_file()
    return repository / MODEL / "2"


def add_version_2(repository: Path, exported: Path) -> None:
    """What the export wrote, less its config (ours has the version policy), in the served
    repository: the tokenizer it wrote, then the version directory, whole, at once."""
    shutil.copyfile(exported.parent / "tokenizer.json", repository / MODEL / "tokenizer.json")
    staging = repository / ".version-2"
    shutil.copytree(exported, staging)
    staging.rename(repository / MODEL / "2")


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    shutil.copytree(DEMO, tmp_path / MODEL)
    with (tmp_path / MODEL / "config.toml").open("a") as fh:
        fh.write(POLICY)
    return tmp_path


def v1_item(sample: data.Sample) -> dict:
    return {
        "text": sample.question,
        "image": base64.b64encode(data.png_bytes(sample.image)).decode(),
    }


def v2_body(sample: data.Sample, rows: int = 1) -> dict:
    image = np.repeat(data.normalize(sample.image)[None], rows, axis=0)
    text = {"name": "text", "shape": [rows], "datatype": "BYTES", "data": [sample.question] * rows}
    pixels = {
        "name": "image",
        "shape": list(image.shape),
        "datatype": "FP32",
        "data": image.ravel().tolist(),
    }
    return {"inputs": [text, pixels]}


def test_load_v2_then_unload_v1_under_load(
    stack_factory, redis_client, repository: Path, exported_version_2: Path
) -> None:
    stack = stack_factory(repository)
    stack.start_api()
    stack.start_worker()
    stack.wait_ready(MODEL, 1)
    samples = data.generate(16, 5)
    outcomes: list[tuple[float, str, str]] = []  # (submitted at, status, version)
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=stack.url, timeout=30) as http:
            deadline = time.monotonic() + 900  # a bound only: a loaded machine is slow
            k = 0
            while not stop.is_set() and time.monotonic() < deadline:
                at = time.monotonic()
                job = http.post(f"/v1/models/{MODEL}/infer", json=v1_item(samples[k % 16])).json()
                result = http.get(f"/v1/jobs/{job['job_id']}", params={"wait": 20}).json()
                outcomes.append((at, result["status"], result.get("version", "")))
                k += 1

    runner = threading.Thread(target=load)
    runner.start()
    try:
        with httpx.Client(base_url=stack.url, timeout=60) as http:
            assert http.get(f"/v2/models/{MODEL}").json()["versions"] == ["1"]
            add_version_2(repository, exported_version_2)
            assert http.post(f"/v2/repository/models/{MODEL}/load").status_code == 200
            loaded_at = time.monotonic()
            assert http.get(f"/v2/models/{MODEL}").json()["versions"] == ["1", "2"]
            index = http.post("/v2/repository/index").json()
            states = {(m["version"], m["state"]) for m in index}
            assert states == {("1", "READY"), ("2", "READY")}, index

            # Requests pinned to version 1, in flight while version 1 is unloaded.
            def pinned(sample: data.Sample) -> httpx.Response:
                with httpx.Client(base_url=stack.url, timeout=60) as c:
                    body = v2_body(sample, rows=64)
                    return c.post(f"/v2/models/{MODEL}/versions/1/infer", json=body)

            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(pinned, s) for s in samples[:8]]
                while not int(redis_client.get(keys.pinned(MODEL, 1)) or 0):
                    assert not all(f.done() for f in futures), "nothing was ever in flight"
                unload = http.post(
                    f"/v2/repository/models/{MODEL}/unload", json={"parameters": {"version": "1"}}
                )
                answers = [f.result() for f in futures]
            assert unload.status_code == 200
            # What was submitted before the unload finished on version 1 (it drained); what
            # came after was refused at once, with nothing enqueued.
            finished = [a for a in answers if a.status_code == 200]
            refused = [a for a in answers if a.status_code != 200]
            assert finished, (
                f"no pinned request was in flight: {[(a.status_code, a.text) for a in answers]}"
            )
            assert {a.json()["model_version"] for a in finished} == {"1"}
            for a in refused:
                error = a.json()["error"]
                assert a.status_code == 404, a.text
                assert "not available" in error or "unknown version '1'" in error, error

            assert http.get(f"/v2/models/{MODEL}").json()["versions"] == ["2"]
            gone = http.post(f"/v2/models/{MODEL}/versions/1/infer", json=v2_body(samples[0]))
            assert gone.status_code == 404 and "unknown version '1'" in gone.json()["error"]
            latest = http.post(f"/v2/models/{MODEL}/infer", json=v2_body(samples[0]))
            assert latest.json()["model_version"] == "2"
            unload_done = time.monotonic()  # the load now runs on version 2 alone
            wait_until(
                lambda: (
                    sum(at > unload_done for at, _, _ in outcomes) >= 3 or not runner.is_alive()
                ),  # the load's own bound ran out (a slow machine)
                "no request ran after version 1 was unloaded",
            )
    finally:
        stop.set()
        runner.join()

    assert outcomes and {status for _, status, _ in outcomes} == {"done"}, "a request failed"
    assert {v for at, _, v in outcomes if at > loaded_at} == {"2"}
    assert "1" in {v for _, _, v in outcomes}
    wait_until(
        lambda: int(redis_client.get(keys.pinned(MODEL, 1)) or 0) == 0, "version 1 never drained"
    )
    log = "".join(p.read_text() for p in stack.logs.glob("worker-*.log"))
    assert log.index("draining [1]") < log.index("version 1 drained and dropped")
