"""What the repository holds: a short README that links every docs page, links that resolve, no
stray ONNX files outside the model repository, and benchmark reports without machine paths."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from stack import ROOT

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
MACHINE_PATH = re.compile(r"(/work/|/tmp/|/root/|/home/|/Users/|[A-Z]:\\\\)")


def test_readme_is_short_and_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 8 * 1024
    linked = set(LINK.findall(readme))
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in linked, f"README does not link docs/{page.name}"


def test_every_relative_link_in_readme_and_docs_resolves() -> None:
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in LINK.findall(doc.read_text()):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name}: {target}"


def test_no_onnx_or_data_files_outside_the_model_repository() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.onnx", "*.data"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert [f for f in files if not f.startswith("model_repository/")] == []


def test_benchmark_reports_hold_no_machine_paths() -> None:
    for report in (ROOT / "benchmarks" / "results").iterdir():
        found = MACHINE_PATH.findall(report.read_text())
        assert not found, f"{report.name}: {found}"


def test_benchmark_reports_are_written_where_the_user_says_without_machine_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))  # benchmarks/ is not installed
    from benchmarks import common

    monkeypatch.setattr(common, "RESULTS", tmp_path / "out")
    monkeypatch.setattr("sys.argv", [str(ROOT / "benchmarks" / "overhead.py"), "--x"])
    path = common.write_json("t", {"repo": str(ROOT / "model_repository"), "s": "/v2 single"})
    text = path.read_text()
    assert path.parent == tmp_path / "out"
    assert not MACHINE_PATH.findall(text), text
    assert '"benchmarks/overhead.py"' in text and '"/v2 single"' in text
