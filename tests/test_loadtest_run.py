"""``fusionserve loadtest`` end to end: short closed, open and V2 runs against a real stack."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from onnx_models import scale_model

from fusionserve.embedded import free_port
from fusionserve.loadtest.cli import is_loopback, main

MODEL = "scale"


@pytest.fixture
def scale_url(stack_factory, tmp_path: Path) -> str:
    scale_model(tmp_path / "repo", MODEL)
    stack = stack_factory(tmp_path / "repo")
    stack.start_api()
    stack.start_worker()
    stack.wait_ready(MODEL, 1)
    return stack.url


def loadtest(url: str, *args: str) -> int:
    return main(["--url", url, "--model", MODEL, "--no-progress", *args])


def test_closed_and_open_loops_finish_every_request(scale_url: str, tmp_path: Path, capsys) -> None:
    out, png = tmp_path / "closed.json", tmp_path / "closed.png"
    rc = loadtest(
        scale_url,
        "--concurrency",
        "1,4",
        "--requests",
        "100",
        "--json",
        str(out),
        "--plot",
        str(png),
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "c=1" in printed and "c=4" in printed and "p99 ms" in printed
    doc = json.loads(out.read_text())
    assert doc["loadtest"]["mode"] == "closed" and doc["loadtest"]["sweep"] == ["c=1", "c=4"]
    assert doc["loadtest"]["payload"] == "random"  # scale takes tensors, not text+image
    for run in doc["runs"]:
        assert (run["sent"], run["ok"], run["failed"], run["errors"]) == (100, 100, 0, {})
        assert run["throughput_rps"] > 0 and run["latency_ms"]["p50"] > 0
        assert sum(run["batch_sizes"].values()) == 100 and run["compute_ms_mean"] is not None
        assert run["generator_cpu"] > 0
    assert png.read_bytes().startswith(b"\x89PNG")

    out = tmp_path / "open.json"
    rc = loadtest(scale_url, "--rates", "40,80", "--duration", "1.5", "--items-per-request", "3")
    assert rc == 0, capsys.readouterr()
    rc = loadtest(scale_url, "--rates", "60", "--requests", "50", "--json", str(out))
    assert rc == 0, capsys.readouterr()
    [run] = json.loads(out.read_text())["runs"]
    assert (run["mode"], run["target_rate"], run["sent"], run["ok"]) == ("open", 60.0, 50, 50)
    assert run["send_lag_ms"]["max"] is not None


def test_v2_and_multi_item_runs(scale_url: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "many.json"
    rc = loadtest(
        scale_url, "--concurrency", "2", "--requests", "40", "--items-per-request", "4",
        "--json", str(out),
    )  # fmt: skip
    assert rc == 0, capsys.readouterr()
    [run] = json.loads(out.read_text())["runs"]
    assert run["ok"] == 40 and run["throughput_items_ps"] == pytest.approx(
        4 * run["throughput_rps"], rel=1e-3
    )
    assert min(int(size) for size in run["batch_sizes"]) >= 4

    probe = httpx.post(f"{scale_url}/v2/models/{MODEL}/infer", json={"inputs": []})
    if probe.status_code == 404 and isinstance(probe.json().get("error"), dict):
        pytest.skip("the server has no /v2 route yet")
    out = tmp_path / "v2.json"
    rc = loadtest(scale_url, "--api", "v2", "--concurrency", "4", "--requests", "60",
                  "--items-per-request", "2", "--json", str(out))  # fmt: skip
    assert rc == 0, capsys.readouterr()
    [run] = json.loads(out.read_text())["runs"]
    assert (run["api"], run["ok"], run["errors"]) == ("v2", 60, {})
    assert run["batch_sizes"] == {} and run["mean_batch_size"] is None  # V2 reports no timings


def test_refusals_are_counted_by_type(scale_url: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "bad.json"
    # text+image items for a tensor model: every submission is a 422
    rc = loadtest(scale_url, "--payload", "synthetic", "--requests", "10", "--json", str(out))
    assert rc == 1
    [run] = json.loads(out.read_text())["runs"]
    assert run["errors"] == {"422 invalid_input": 10} and run["ok"] == 0
    assert run["latency_ms"]["p50"] is None
    assert "c=1 errors: 422 invalid_input x10" in capsys.readouterr().out


def test_it_will_not_start_against_nothing_or_with_bad_flags(capsys) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert loadtest(nowhere, "--requests", "5") == 2
    assert "cannot start" in capsys.readouterr().err
    assert loadtest(nowhere, "--mode", "open") == 2
    assert "--mode open needs --rates" in capsys.readouterr().err
    assert loadtest(nowhere, "--wait", "0") == 2
    with pytest.raises(SystemExit):
        loadtest(nowhere, "--concurrency", "0")
    assert is_loopback("http://127.0.0.1:8000") and is_loopback("http://localhost:1")
    assert is_loopback("http://[::1]:8000") and not is_loopback("http://10.0.0.1:8000")
