"""The wheel, installed outside the checkout: ``pip install .`` (not editable) into a fresh venv
puts exactly four top-level packages into site-packages, and ``fusionserve up`` run from a
directory of the user's, which holds a ``client.py`` and a ``server/`` package of its own,
serves the shipped models and answers the README's first request.

Slow-ish (a minute or two: pip installs ``.[cpu]`` into the venv, from its cache when warm).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from stack import ROOT

from fusionserve.embedded import free_port

TOP_LEVEL = {"fusionserve", "server", "worker", "batching"}
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "data")
RAISES = "raise ImportError('the user\\'s own {}: fusionserve must never import it')\n"


def _wheel(tmp: Path) -> Path:
    """Build from a copy of the tree (a build writes build/ and *.egg-info where it runs)."""
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE, ".fusionserve"))
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(tmp)]
    subprocess.run(pip, check=True)
    return next(tmp.glob("fusionserve-*.whl"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh venv holding ``fusionserve[cpu]`` from the wheel; returns (venv, wheel)."""
    tmp = tmp_path_factory.mktemp("install")
    wheel = _wheel(tmp)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile"]
    subprocess.run([*pip, f"{wheel}[cpu]"], check=True, env=_clean_env())
    return venv, wheel


def _clean_env(**extra: str) -> dict[str, str]:
    """No checkout on the path and none of the suite's settings: as a user's shell."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "REDIS_URL", "RQ_REDIS_URL", "PYTHONSAFEPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env = {k: v for k, v in env.items() if not k.startswith("FUSIONSERVE_")}
    return {**env, **extra}


def test_wheel_installs_four_top_level_packages_and_all_their_files(installed) -> None:
    venv, wheel = installed
    (site,) = venv.glob("lib/python*/site-packages")
    (info,) = site.glob("fusionserve-*.dist-info")
    assert set((info / "top_level.txt").read_text().split()) == TOP_LEVEL
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
    roots = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert roots == TOP_LEVEL  # benchmarks/, client/, loadtest/, fusion/ are not installed
    for package in TOP_LEVEL:  # the wheel misses no module or data file of the tree
        for path in (ROOT / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                assert str(path.relative_to(ROOT)) in names, path
    for model in (ROOT / "model_repository").rglob("*"):
        if model.is_file():
            shipped = f"fusionserve/model_repository/{model.relative_to(ROOT / 'model_repository')}"
            assert shipped in names, model
    code = (
        "import importlib.util, sys\n"
        "from fusionserve.client import AsyncClient, Client\n"
        "import fusionserve.cli, fusionserve.loadtest.cli, fusionserve.zoo.data\n"
        "assert 'torch' not in sys.modules\n"
        "for name in ('client', 'loadtest', 'fusion', 'benchmarks'):\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
    )
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-c", code], check=True, cwd=venv, env=_clean_env())


def test_up_outside_the_checkout_is_not_shadowed_and_answers_the_first_request(
    installed, tmp_path: Path
) -> None:
    venv, _ = installed
    readme = (ROOT / "README.md").read_text()
    for step in ("fusionserve.zoo.data sample --seed 7 --png", "/v1/models/demo/infer", "wait=5"):
        assert step in readme, f"the README's first request changed: {step}"  # mirrored below
    home = tmp_path / "project"  # the user's directory: shadows ours if it is on the path
    (home / "server").mkdir(parents=True)
    (home / "client.py").write_text(RAISES.format("client.py"))
    (home / "server" / "__init__.py").write_text(RAISES.format("server/"))
    port = free_port()
    env = _clean_env(FUSIONSERVE_DATA_DIR=str(tmp_path / "data"), FUSIONSERVE_ORT_THREADS="1")
    up = subprocess.Popen(
        [str(venv / "bin" / "fusionserve"), "up", "--port", str(port), "--processes", "1"],
        cwd=home,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert up.poll() is None, "fusionserve up exited"
            try:
                if httpx.get(f"{url}/readyz", timeout=1).json().get("workers", {}).get("demo"):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError("fusionserve up never became ready")
        sample = [str(venv / "bin" / "python"), "-m", "fusionserve.zoo.data", "sample"]
        sample += ["--seed", "7", "--png", str(home / "q.png")]
        out = subprocess.run(sample, cwd=home, env=env, check=True, capture_output=True).stdout
        question = json.loads(out)
        image = base64.b64encode((home / "q.png").read_bytes()).decode()
        body = {"text": question["question"], "image": image}
        job = httpx.post(f"{url}/v1/models/demo/infer", json=body, timeout=10)
        assert job.status_code == 202, job.text
        result = httpx.get(f"{url}/v1/jobs/{job.json()['job_id']}?wait=5", timeout=15).json()
        assert result["status"] == "done", result
        assert result["labels"][0]["label"] == question["answer"], result
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            code = up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert code == 0
    assert not (home / ".fusionserve").exists()  # the data went where it was told


def test_the_default_repository_is_the_working_directorys_else_the_shipped_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fusionserve.cli import _settings

    monkeypatch.delenv("FUSIONSERVE_MODEL_REPOSITORY", raising=False)
    monkeypatch.chdir(tmp_path)
    assert _settings(None).model_repository == ROOT / "model_repository"  # a checkout's
    (tmp_path / "model_repository").mkdir()
    assert _settings(None).model_repository == Path("model_repository")
    monkeypatch.setenv("FUSIONSERVE_MODEL_REPOSITORY", "/elsewhere")
    assert _settings(None).model_repository == Path("/elsewhere")
    assert _settings(None, model_repository=Path("flag")).model_repository == Path("flag")
