"""The captioner in torch and its export: teacher forcing and the cached step agree, ONNX
Runtime decodes 200 held-out samples exactly as torch (logits within 1e-4 at every step),
rows joining a running batch late decode as alone, and the repository entry is complete.

A small model trained for a few steps keeps this to seconds; the slow test re-trains the
shipped recipe end to end.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from batching.model_config import ModelConfig
from fusionserve.zoo import captioner, cli
from fusionserve.zoo.data import HELD_OUT_SEED, generation_samples
from fusionserve.zoo.generate_reference import ReferenceGenerator, score
from fusionserve.zoo.tokenizer import build_tokenizer

SMALL = {"dim": 32, "heads": 2, "image_layers": 1, "fusion_layers": 1, "stem_channels": 8}


@pytest.fixture(scope="module")
def trained() -> captioner.Captioner:
    model, figures = captioner.train_captioner(steps=40, size=SMALL, held_out=0, log=None)
    assert figures == {}
    return model


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> captioner.CaptionerExport:
    repository = tmp_path_factory.mktemp("repo")
    return captioner.export_captioner(trained, repository, "gen", 2, {"answer_exact": 0.5})


def test_teacher_forcing_equals_the_cached_step(trained: captioner.Captioner) -> None:
    tokenizer = build_tokenizer(generation=True)
    specials = captioner.Specials.of(tokenizer)
    samples = generation_samples(6, [HELD_OUT_SEED, 9])
    inputs = captioner.encoder_tensors(tokenizer, samples, trained.modalities)
    ids, _ = captioner.teacher_batch(tokenizer, samples, specials)
    step = captioner.DecoderGraph(trained).eval()
    with torch.no_grad():
        forced = trained(*inputs, ids)
        states, mask = trained.encode(*inputs)
        past = [t for pair in trained.empty_cache(len(samples)) for t in pair]
        for t in range(ids.shape[1]):
            attention = torch.ones(len(samples), t + 1, dtype=torch.int64)
            positions = torch.full((len(samples), 1), t)
            logits, *past = step(
                ids[:, t : t + 1], positions, attention, states, mask.long(), *past
            )
            assert (logits - forced[:, t]).abs().max().item() <= 1e-5


def test_onnx_runtime_decodes_exactly_as_torch(exported: captioner.CaptionerExport) -> None:
    """check_parity ran inside the export: 200 held-out samples and the late joiners."""
    parity = exported.parity
    assert parity["token_mismatches"] == 0 and parity["joined_token_mismatches"] == 0
    assert parity["max_logit_diff"] <= captioner.PARITY_TOLERANCE
    assert parity["joined_max_logit_diff"] <= captioner.PARITY_TOLERANCE


def test_parity_check_compares_tokens_and_logits_of_200_samples(trained, exported) -> None:
    """Re-done here by hand: torch's greedy decoding vs the reference decoder on ORT."""
    tokenizer = build_tokenizer(generation=True)
    samples = generation_samples(captioner.PARITY_SAMPLES, HELD_OUT_SEED)
    expected = captioner.generate_torch(trained, tokenizer, samples)
    actual = ReferenceGenerator(exported.directory).generate(samples, batch_size=37)
    steps = 0
    for e, a in zip(expected, actual, strict=True):
        assert (e.ids, e.stopped) == (a.ids, a.stopped)
        assert len(e.logits) == len(a.logits) == len(e.ids) + int(e.stopped)
        steps += len(e.logits)
        worst = max(float(np.abs(x - y).max()) for x, y in zip(e.logits, a.logits, strict=True))
        assert worst <= captioner.PARITY_TOLERANCE
    assert steps > captioner.PARITY_SAMPLES


def test_repository_entry(exported: captioner.CaptionerExport) -> None:
    directory = exported.directory
    assert exported.encoder_path == directory / "2" / "encoder.onnx"
    assert exported.decoder_path == directory / "2" / "decoder.onnx"
    config = tomllib.loads((directory / "config.toml").read_text())
    assert config["task"] == "generate" and "postprocessing" not in config
    assert config["generation"]["eos_id"] == config["generation"]["bos_id"] + 1
    assert config["training"]["held_out_answer_exact"] == 0.5
    assert config["training"]["parameters"] == exported.parameters
    assert ModelConfig.load(directory / "config.toml").name == "gen"
    generator = ReferenceGenerator(directory)
    samples = generation_samples(20, 1)
    texts = [generator.text(d) for d in generator.generate(samples)]
    assert set(score(texts, samples)) == {"answer_exact", "describe_objects", "describe_exact"}


def test_cli_generate_rejects_what_it_cannot_do(tmp_path: Path) -> None:
    parser = cli.argparse.ArgumentParser()
    cli.add_export_arguments(parser)
    for extra in (["--variants", "int8"], ["--modalities", "text,image,audio"], ["--pretrained"]):
        args = parser.parse_args(
            ["--task", "generate", "--model-repository", str(tmp_path), *extra]
        )
        assert cli.run_export(args) == 2
    assert not any(tmp_path.iterdir())


@pytest.fixture
def quick_held_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """An untrained model writes max_new_tokens every time: score 50 samples, not 1000."""
    monkeypatch.setattr(captioner, "HELD_OUT_SAMPLES", 50)


def test_cli_below_the_bar_writes_nothing(tmp_path: Path, capsys, quick_held_out) -> None:
    parser = cli.argparse.ArgumentParser()
    cli.add_export_arguments(parser)
    argv = ["--task", "generate", "--steps", "2", "--model-repository", str(tmp_path)]
    assert cli.run_export(parser.parse_args(argv)) == 1
    assert not any(tmp_path.iterdir())
    assert "answers exact" in capsys.readouterr().out


def test_cli_writes_the_repository_entry(tmp_path: Path, capsys, quick_held_out) -> None:
    parser = cli.argparse.ArgumentParser()
    cli.add_export_arguments(parser)
    argv = ["--task", "generate", "--steps", "2", "--version", "3"]
    argv += ["--min-accuracy", "0", "--min-describe", "0", "--model-repository", str(tmp_path)]
    assert cli.run_export(parser.parse_args(argv)) == 0
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert files == {
        "captioner/config.toml",
        "captioner/tokenizer.json",
        "captioner/3/encoder.onnx",
        "captioner/3/decoder.onnx",
    }
    training = tomllib.loads((tmp_path / "captioner" / "config.toml").read_text())["training"]
    assert training["steps"] == 2 and training["seed"] == 0
    out = capsys.readouterr().out
    assert "parity on 200 held-out samples" in out and "0 token mismatches" in out


@pytest.mark.slow
def test_captioner_recipe_retrains_to_the_targets(tmp_path: Path) -> None:
    """The shipped model is reproducible: same recipe, fresh weights, same bars."""
    model, figures = captioner.train_captioner(log=None)
    assert figures["answer_exact"] >= captioner.ANSWER_TARGET, figures
    assert figures["describe_objects"] >= captioner.DESCRIBE_TARGET, figures
    result = captioner.export_captioner(model, tmp_path, "captioner", 1, figures)
    assert result.total_bytes < 10_000_000
    generator = ReferenceGenerator(result.directory)
    samples = generation_samples(1000, HELD_OUT_SEED)
    texts = [generator.text(d) for d in generator.generate(samples)]
    assert score(texts, samples) == pytest.approx(figures, abs=0.005)
