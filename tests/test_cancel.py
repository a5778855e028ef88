"""DELETE /v1/jobs/<id>: queued work is cancelled and never reaches the model."""

from __future__ import annotations

from pathlib import Path

import httpx
from helpers import publish_then_pause, wait_all
from onnx_models import scale_model

from batching import keys


def test_a_cancelled_job_never_runs(stack_factory, redis_client, tmp_path: Path) -> None:
    scale_model(tmp_path / "repo")
    stack = stack_factory(tmp_path / "repo")
    stack.start_api()
    publish_then_pause(stack, "scale")  # work queues until a worker starts
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        jobs = [
            http.post("/v1/models/scale/infer", json={"inputs": {"x": [k, 0, 0, 0]}}).json()[
                "job_id"
            ]
            for k in range(3)
        ]
        waiting = http.get(f"/v1/jobs/{jobs[1]}", params={"wait": 0.2}).json()
        assert waiting["status"] == "queued"
        past_the_entry = jobs[2].rsplit(".", 1)[0] + ".5"  # a row its entry does not have
        assert http.delete(f"/v1/jobs/{past_the_entry}").status_code == 404
        assert http.get(f"/v1/jobs/{jobs[2]}").json()["status"] == "queued"  # not cancelled
        cancelled = http.delete(f"/v1/jobs/{jobs[1]}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["error"]["code"] == "cancelled"
        assert http.delete(f"/v1/jobs/{jobs[1]}").status_code == 200  # idempotent
        assert redis_client.xlen(keys.stream("scale", 2)) == 2  # its slot is free

        stack.start_worker()
        results = wait_all(http, jobs)
        assert [results[j]["status"] for j in jobs] == ["done", "cancelled", "done"]
        assert "outputs" not in results[jobs[1]] and "timings" not in results[jobs[1]]
        stats = http.get("/v2/models/scale/stats").json()["model_stats"][0]
        assert stats["inference_count"] == 2  # the model saw only the other two

        done = http.delete(f"/v1/jobs/{jobs[0]}")
        assert done.status_code == 409
        assert "is done; only queued jobs can be cancelled" in done.json()["error"]["message"]
        assert http.delete("/v1/jobs/scale.1-0-2.0").status_code == 404
