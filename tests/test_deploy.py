"""The deployment files: the compose file validates and wires what the code expects."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml
from conftest import DEMO, ROOT

from batching import keys
from batching.connection import parse_sentinel_url
from batching.model_config import ModelConfig

COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_SENTINEL = ROOT / "docker-compose.sentinel.yml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
def test_docker_compose_config_validates() -> None:
    sentinel = ["-f", str(COMPOSE_SENTINEL)]
    for profile in ([], ["--profile", "gpu"], sentinel, [*sentinel, "--profile", "gpu"]):
        checked = subprocess.run(
            ["docker-compose", "-f", str(COMPOSE), *profile, "config", "-q"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert checked.returncode == 0, checked.stderr


def test_compose_runs_every_part_with_redis_persistent_and_gpus_reserved() -> None:
    services = compose()["services"]
    assert set(services) == {
        "redis",
        "api",
        "worker",
        "worker-gpu",
        "bulk-worker",
        "prometheus",
        "grafana",
    }
    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--requirepass" in command
    assert "healthcheck" in redis
    for name in ("api", "worker", "worker-gpu", "bulk-worker"):
        env = services[name]["environment"]
        assert env["REDIS_URL"].startswith("redis://:") and "@redis:6379" in env["REDIS_URL"]
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    [device] = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert services["worker-gpu"]["build"]["dockerfile"] == "Dockerfile.gpu"
    assert "batches:/batches" in services["api"]["volumes"]
    assert "batches:/batches" in services["bulk-worker"]["volumes"]
    assert (ROOT / "Dockerfile").is_file() and (ROOT / "Dockerfile.gpu").is_file()
    assert "'.[gpu]'" in (ROOT / "Dockerfile.gpu").read_text()


def test_prometheus_scrapes_the_api_and_grafana_charts_metrics_that_exist() -> None:
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [
        t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    ]
    assert "api:8000" in targets
    exported = set(re.findall(r'"(fusionserve_\w+)"', (ROOT / "server/metrics.py").read_text()))
    assert exported, "server/metrics.py names its metric families"
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/fusionserve.json").read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "percentiles", "queue depth", "batch size", "errors"):
        assert topic in titles
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for metric in re.findall(r"fusionserve_\w+", target["expr"]):
                family = re.sub(r"_(bucket|sum|count|total)$", "", metric)
                assert family in exported, f"{panel['title']}: {metric} is not exported"


def test_keda_scales_workers_on_every_stream_of_the_model() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/fusionserve.yaml").read_text()))
    by_kind = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "fusionserve-worker") in by_kind
    [scaled] = [d for d in docs if d["kind"] == "ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "fusionserve-worker"
    config = ModelConfig.model_validate(tomllib.loads((DEMO / "config.toml").read_text()))
    streams = [t["metadata"]["stream"] for t in scaled["spec"]["triggers"]]
    assert streams == [keys.stream("demo", level) for level in config.batching.all_levels]
    assert {t["metadata"]["consumerGroup"] for t in scaled["spec"]["triggers"]} == {keys.GROUP}
    [worker] = [
        d
        for d in docs
        if (d["kind"], d["metadata"]["name"]) == ("Deployment", "fusionserve-worker")
    ]
    env = {e["name"] for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"REDIS_URL", "REDIS_ADDRESS", "REDIS_PASSWORD"} <= env


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
def test_the_sentinel_override_points_every_process_at_three_sentinels() -> None:
    merged = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "-f", str(COMPOSE_SENTINEL), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    services = yaml.safe_load(merged.stdout)["services"]
    assert {"redis", "redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"} <= set(services)
    for name in ("api", "worker", "bulk-worker"):
        url = parse_sentinel_url(services[name]["environment"]["REDIS_URL"])
        assert url is not None and url.service == "fusionserve", name
        assert {host for host, _ in url.hosts} == {"sentinel-1", "sentinel-2", "sentinel-3"}
    for i in (1, 2, 3):
        command = " ".join(services[f"sentinel-{i}"]["command"])
        assert "sentinel monitor fusionserve redis 6379 2" in command
        assert "--sentinel" in command
    assert "--replicaof" in services["redis-replica"]["command"]
