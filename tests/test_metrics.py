"""/metrics: the Prometheus exposition format, with counts that match what happened."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from helpers import wait_all
from onnx_models import scale_model
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_outcomes_batches_and_queues(
    stack_factory, redis_client, tmp_path: Path
) -> None:
    scale_model(tmp_path / "repo", max_queue_size=3)
    stack = stack_factory(tmp_path / "repo")
    stack.start_api(processes=2)
    first = stack.start_worker()
    stack.wait_ready("scale", 1)
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        done = [
            http.post("/v1/models/scale/infer", json={"inputs": {"x": [1, 2, 3, 4]}}).json()[
                "job_id"
            ]
            for _ in range(2)
        ]
        wait_all(http, done)
        stack.stop_worker(first)
        kept = http.post("/v1/models/scale/infer", json={"inputs": {"x": [1, 2, 3, 4]}}).json()[
            "job_id"
        ]
        doomed = http.post(
            "/v1/models/scale/infer", json={"inputs": {"x": [1, 2, 3, 4]}, "timeout_ms": 1}
        ).json()["job_id"]
        dropped = http.post("/v1/models/scale/infer", json={"inputs": {"x": [1, 2, 3, 4]}}).json()[
            "job_id"
        ]
        assert http.delete(f"/v1/jobs/{dropped}").status_code == 200
        http.post("/v1/models/scale/infer", json={"inputs": {"x": [0, 0, 0, 0]}})  # fills it
        assert (
            http.post("/v1/models/scale/infer", json={"inputs": {"x": [0, 0, 0, 0]}}).status_code
            == 429
        )
        waiting = http.get("/metrics")
        stack.start_worker()
        results = wait_all(http, [kept, doomed])
        assert results[doomed]["status"] == "expired"
        final = http.get("/metrics")

    assert waiting.headers["Content-Type"].startswith("text/plain")
    before = samples(waiting.text)
    assert before[("fusionserve_queue_depth", (("model", "scale"), ("priority", "2")))] == 3
    assert before[("fusionserve_ready_workers", (("model", "scale"),))] == 0
    after = samples(final.text)
    outcome = {
        o: after[("fusionserve_requests_total", (("model", "scale"), ("outcome", o)))]
        for o in ("success", "failed", "expired", "cancelled", "rejected")
    }
    assert outcome == {"success": 4, "failed": 0, "expired": 1, "cancelled": 1, "rejected": 1}
    labels = (("model", "scale"), ("version", "1"))
    assert after[("fusionserve_inferences_total", labels)] == 4  # the expired one never ran
    assert after[("fusionserve_queue_seconds_count", labels)] == 4
    assert (
        after[("fusionserve_batch_size_count", labels)]
        == after[("fusionserve_batches_total", labels)]
    )
    assert after[("fusionserve_batch_size_sum", labels)] == 4
    if shutil.which("promtool") is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=final.text, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
