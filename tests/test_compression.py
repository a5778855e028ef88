"""Compressed variants of the shipped demo: int8 and fp16, written beside it, served by name."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import DEMO
from helpers import demo_item
from tokenizers import Tokenizer

from fusionserve.zoo import data
from fusionserve.zoo.compress import _scratch, compress, evaluate_onnx, quantize_int8

SAMPLES = 1000


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(DEMO, repo / "demo")
    rows = {r.variant: r for r in compress(repo, "demo", samples=SAMPLES)}
    return repo, rows


def test_int8_and_fp16_keep_accuracy_within_a_point(repository) -> None:
    _, rows = repository
    fp32 = rows["fp32"].accuracy
    assert fp32 >= 0.95
    assert abs(rows["int8"].accuracy - fp32) <= 0.01
    assert abs(rows["fp16"].accuracy - fp32) <= 0.01
    assert rows["int8"].megabytes < 0.6 * rows["fp32"].megabytes  # weights in one byte


def test_variants_are_models_of_their_own_with_their_figures(repository) -> None:
    repo, rows = repository
    for variant in ("int8", "fp16"):
        directory = repo / f"demo_{variant}"
        config = tomllib.loads((directory / "config.toml").read_text())
        assert config["name"] == f"demo_{variant}"
        assert config["compression"]["variant"] == variant
        assert config["compression"]["held_out_accuracy"] == round(rows[variant].accuracy, 4)
        assert config["postprocessing"]["labels"] == data.LABELS
        assert (directory / "tokenizer.json").read_text() == (DEMO / "tokenizer.json").read_text()
        assert (directory / "1" / "model.onnx").is_file()


def test_int8_model_quantizes_matmuls_only(tmp_path) -> None:
    import onnx

    path = quantize_int8(next(DEMO.glob("[0-9]*")) / "model.onnx", tmp_path / "int8.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert "ConvInteger" not in ops and "Conv" in ops
    accuracy, speed = evaluate_onnx(path, DEMO, samples=256)
    assert accuracy >= 0.94 and speed > 0


def test_the_server_serves_a_variant_like_any_model(stack_factory, repository) -> None:
    repo, _ = repository
    stack = stack_factory(repo)
    stack.start_api()
    stack.start_worker("demo_int8")
    stack.wait_ready("demo_int8", 1)
    tokenizer = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    samples = data.generate(40, data.HELD_OUT_SEED)
    items = [demo_item(s, False, tokenizer) for s in samples]
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        ids = http.post("/v1/models/demo_int8/infer", json={"items": items}).json()["job_ids"]
        answers = [http.get(f"/v1/jobs/{i}", params={"wait": 20}).json() for i in ids]
    right = [a["labels"][0]["label"] == s.answer for a, s in zip(answers, samples, strict=True)]
    assert np.mean(right) >= 0.9


def test_three_modality_int8_keeps_the_spectrogram_in_fp32(tmp_path) -> None:
    import onnx

    from fusionserve.zoo.compress import spectrogram_matmuls

    avqa = DEMO.parent / "avqa"
    source = avqa / "1" / "model.onnx"
    assert spectrogram_matmuls(onnx.load(str(source)).graph) == ["/audio/MatMul"]
    path = quantize_int8(source, tmp_path / "int8.onnx")
    fp32, _ = evaluate_onnx(source, avqa, samples=SAMPLES)
    int8, _ = evaluate_onnx(path, avqa, samples=SAMPLES)
    assert fp32 >= 0.9 and abs(int8 - fp32) <= 0.01


def test_ort_scratch_files_never_land_in_the_working_directory(tmp_path, monkeypatch) -> None:
    """ORT's symbolic shape inference saves sym_shape_infer_temp.onnx (and a .data file) into
    the current directory when it gives up: compression runs ORT's tools in a temporary one."""
    work = tmp_path / "work"
    shutil.copytree(DEMO / "1", work / "src")
    monkeypatch.chdir(work)
    with _scratch() as scratch:
        Path("sym_shape_infer_temp.onnx").write_bytes(b"what ORT leaves behind")
    assert not scratch.exists()
    target = quantize_int8(Path("src/model.onnx"), Path("out/model.onnx"))  # relative paths
    assert target == work / "out" / "model.onnx"
    assert sorted(p.name for p in work.iterdir()) == ["out", "src"]
    assert [p.name for p in (work / "out").iterdir()] == ["model.onnx"]
