"""The shipped demo model, and re-training its configuration from scratch.

The shipped-files tests use only onnxruntime, numpy, tokenizers and the config, like a
serving host; the slow test re-runs the demo's training and export end to end.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from fusionserve.zoo.data import (
    HELD_OUT_SEED,
    IMAGE_MEAN,
    IMAGE_STD,
    LABELS,
    Sample,
    generate,
    normalize,
)
from fusionserve.zoo.tokenizer import encode_batch

DEMO = Path(__file__).resolve().parent.parent / "model_repository" / "demo"


@pytest.fixture(scope="module")
def config() -> dict:
    return tomllib.loads((DEMO / "config.toml").read_text())


def _accuracy_through_ort(
    sess: ort.InferenceSession, tokenizer: Tokenizer, config: dict, samples: list[Sample]
) -> float:
    """Preprocess exactly as config.toml says (not via fusionserve.zoo.data.normalize), then run."""
    text, image_cfg = config["preprocessing"]["text"], config["preprocessing"]["image"]
    mean = np.asarray(image_cfg["mean"], np.float32)[:, None, None]
    std = np.asarray(image_cfg["std"], np.float32)[:, None, None]
    correct = 0
    for start in range(0, len(samples), 64):
        chunk = samples[start : start + 64]
        ids, mask = encode_batch(tokenizer, [s.question for s in chunk], text["max_length"])
        images = np.stack([s.image.transpose(2, 0, 1) for s in chunk]).astype(np.float32)
        feeds = {
            text["ids_input"]: ids,
            text["mask_input"]: mask,
            image_cfg["input"]: (images / 255.0 - mean) / std,
        }
        (logits,) = sess.run([config["postprocessing"]["label_output"]], feeds)
        labels = config["postprocessing"]["labels"]
        predicted = [labels[i] for i in logits.argmax(axis=1)]
        correct += sum(p == s.answer for p, s in zip(predicted, chunk, strict=True))
    return correct / len(samples)


def test_shipped_config_matches_the_model_contract(config: dict) -> None:
    assert config["name"] == "demo"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["postprocessing"]["labels"] == LABELS
    image = config["preprocessing"]["image"]
    assert (image["height"], image["width"]) == (64, 64)
    assert image["mean"] == list(IMAGE_MEAN) and image["std"] == list(IMAGE_STD)
    assert config["preprocessing"]["text"]["pad_id"] == 0
    assert config["batching"]["max_batch_size"] >= 1
    assert config["training"]["held_out_accuracy"] >= 0.95


def test_shipped_files_are_small_and_load(config: dict) -> None:
    files = [DEMO / "config.toml", DEMO / "tokenizer.json", DEMO / "1" / "model.onnx"]
    assert sum(f.stat().st_size for f in files) < 10_000_000
    sess = ort.InferenceSession(str(files[2]), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask", "image"]
    assert [o.name for o in sess.get_outputs()] == ["logits"]


def test_shipped_model_accuracy_on_held_out_samples(config: dict) -> None:
    sess = ort.InferenceSession(str(DEMO / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(DEMO / config["preprocessing"]["text"]["tokenizer"]))
    accuracy = _accuracy_through_ort(sess, tokenizer, config, generate(500, HELD_OUT_SEED))
    assert accuracy >= 0.95


@pytest.mark.slow
def test_demo_configuration_retrains_to_95_percent(tmp_path: Path) -> None:
    """The shipped model is reproducible: same recipe, fresh weights, same bar."""
    from fusionserve.zoo import train as training
    from fusionserve.zoo.export import PARITY_TOLERANCE, export_to_repository

    model, accuracy = training.train(log=None)
    assert accuracy >= 0.95
    result = export_to_repository(model, tmp_path, "demo", 1, training.DEMO_STRATEGY, accuracy)
    assert max(result.parity.values()) <= PARITY_TOLERANCE
    assert result.total_bytes < 10_000_000
    config = tomllib.loads(result.config_path.read_text())
    sess = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(result.tokenizer_path))
    assert _accuracy_through_ort(sess, tokenizer, config, generate(500, HELD_OUT_SEED)) >= 0.95


def test_shipped_model_ignores_right_padding(config: dict) -> None:
    sess = ort.InferenceSession(str(DEMO / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    samples = generate(16, [HELD_OUT_SEED, 1])
    ids, mask = encode_batch(tokenizer, [s.question for s in samples], 32)
    image = np.stack([normalize(s.image) for s in samples])
    (base,) = sess.run(None, {"input_ids": ids, "attention_mask": mask, "image": image})
    extra = 32 - ids.shape[1]
    feeds = {
        "input_ids": np.pad(ids, ((0, 0), (0, extra))),
        "attention_mask": np.pad(mask, ((0, 0), (0, extra))),
        "image": image,
    }
    (padded,) = sess.run(None, feeds)
    assert np.abs(padded - base).max() <= 1e-5
