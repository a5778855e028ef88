"""`fusionserve export` (fusionserve.zoo.cli): options, the accuracy gate, and what it writes."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from stack import ROOT

from fusionserve.zoo import cli, train
from fusionserve.zoo.models import STRATEGIES


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_export_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_are_the_demo() -> None:
    args = _args()
    assert args.strategy == train.DEMO_STRATEGY == cli.DEFAULT_STRATEGY
    assert (cli.model_name(args), args.version, args.min_accuracy) == ("demo", 1, 0.95)
    assert cli.model_name(_args("--task", "generate")) == "captioner"
    assert cli.model_name(_args("--task", "embedding")) == "clip"  # never the demo classifier
    shipped = {p.parent.name for p in (ROOT / "model_repository").glob("*/config.toml")}
    assert set(cli.DEFAULT_NAMES.values()) <= shipped
    assert args.model_repository == Path("model_repository")
    assert cli.STRATEGY_CHOICES == STRATEGIES


def test_below_min_accuracy_exits_non_zero_and_writes_nothing(tmp_path: Path) -> None:
    args = _args("--steps", "2", "--model-repository", str(tmp_path), "--min-accuracy", "0.99")
    assert cli.run_export(args) == 1
    assert not any(tmp_path.iterdir())


def test_export_writes_the_repository_layout(tmp_path: Path, capsys) -> None:
    argv = ("--strategy", "late", "--name", "m", "--version", "4", "--steps", "2")
    args = _args(*argv, "--model-repository", str(tmp_path), "--min-accuracy", "0")
    assert cli.run_export(args) == 0
    assert (tmp_path / "m" / "4" / "model.onnx").is_file()
    assert (tmp_path / "m" / "tokenizer.json").is_file()
    config = tomllib.loads((tmp_path / "m" / "config.toml").read_text())
    assert config["name"] == "m" and config["training"]["strategy"] == "late"
    out = capsys.readouterr().out
    assert "parity batch 64" in out and "held-out accuracy" in out


def test_three_modalities_export_with_audio_preprocessing(tmp_path: Path, capsys) -> None:
    argv = ("--modalities", "text,image,audio", "--name", "av", "--steps", "2")
    assert (
        cli.run_export(_args(*argv, "--model-repository", str(tmp_path), "--min-accuracy", "0"))
        == 0
    )
    config = tomllib.loads((tmp_path / "av" / "config.toml").read_text())
    assert config["modalities"] == ["text", "image", "audio"]
    assert config["preprocessing"]["audio"]["sample_rate"] == 8000
    assert config["postprocessing"]["labels"][-2:] == ["low", "high"]
    assert "beeps" in capsys.readouterr().out  # accuracy per question kind, audio ones too


def test_variants_compress_a_model_already_in_the_repository(tmp_path: Path, capsys) -> None:
    import shutil

    from conftest import DEMO

    shutil.copytree(DEMO, tmp_path / "demo")
    args = _args("--variants", "int8", "--skip-training", "--model-repository", str(tmp_path))
    assert cli.run_export(args) == 0
    assert (tmp_path / "demo_int8" / "1" / "model.onnx").is_file()
    assert not (tmp_path / "demo_fp16").exists()
    out = capsys.readouterr().out
    assert "fp32" in out and "int8" in out
    bad = _args("--variants", "int4", "--skip-training", "--model-repository", str(tmp_path))
    assert cli.run_export(bad) == 2
    alone = _args("--skip-training", "--model-repository", str(tmp_path))
    assert cli.run_export(alone) == 2


def test_embedding_task_exports_the_dual_encoder(tmp_path: Path, capsys) -> None:
    argv = ("--task", "embedding", "--name", "clip", "--pretrain-steps", "3")
    assert cli.run_export(_args(*argv, "--model-repository", str(tmp_path))) == 0
    config = tomllib.loads((tmp_path / "clip" / "config.toml").read_text())
    assert "postprocessing" not in config
    assert "caption_retrieval_top1_of_256" in config["training"]
    assert "parity: max abs diff" in capsys.readouterr().out
