"""The shipped generation model ``captioner``: its config and graphs hold the generation
contract, its held-out accuracy through ONNX Runtime, and continuous batching (a row's
output does not depend on masked cache columns, other rows or encoder padding).

ONNX Runtime, numpy and tokenizers only, like a serving host (no torch).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from batching.model_config import ModelConfig
from fusionserve.zoo.data import HELD_OUT_SEED, generation_samples
from fusionserve.zoo.generate_reference import (
    ReferenceGenerator,
    cache_shape,
    greedy,
    ort_step,
    pad_encoder,
    past_names,
    present_names,
    score,
)
from fusionserve.zoo.tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_ID

REPOSITORY = Path(__file__).resolve().parent.parent / "model_repository"
CAPTIONER = REPOSITORY / "captioner"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def generator() -> ReferenceGenerator:
    return ReferenceGenerator(CAPTIONER)


def test_shipped_config_holds_the_contract(generator: ReferenceGenerator) -> None:
    config = tomllib.loads((CAPTIONER / "config.toml").read_text())
    assert config["name"] == "captioner" and config["task"] == "generate"
    assert config["platform"] == "onnxruntime_onnx"
    assert "postprocessing" not in config
    generation = config["generation"]
    assert generation["encoder"] == "encoder.onnx" and generation["decoder"] == "decoder.onnx"
    assert generation["tokenizer"] == config["preprocessing"]["text"]["tokenizer"]
    tokenizer = generator.tokenizer
    assert generation["bos_id"] == tokenizer.token_to_id(BOS_TOKEN)
    assert generation["eos_id"] == tokenizer.token_to_id(EOS_TOKEN)
    assert generation["pad_id"] == PAD_ID == config["preprocessing"]["text"]["pad_id"]
    assert generation["max_new_tokens"] == 32 and generation["max_active"] >= 1
    training = config["training"]
    assert training["held_out_answer_exact"] >= 0.95
    assert training["held_out_describe_objects"] >= 0.90
    files = [p for p in CAPTIONER.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 10_000_000
    assert {p.relative_to(CAPTIONER).as_posix() for p in files} == {
        "config.toml",
        "tokenizer.json",
        "1/encoder.onnx",
        "1/decoder.onnx",
    }


def test_every_shipped_config_loads() -> None:
    """The server's config model reads every shipped config, the generation keys typed."""
    for directory in sorted(p for p in REPOSITORY.iterdir() if (p / "config.toml").is_file()):
        config = ModelConfig.load(directory / "config.toml")
        assert config.name == directory.name
    captioner = ModelConfig.load(CAPTIONER / "config.toml")
    assert captioner.task == "generate" and captioner.generation is not None
    assert captioner.generation.max_active >= 1
    assert captioner.graph_files == ("encoder.onnx", "decoder.onnx")
    assert captioner.postprocessing.labels == []


def test_graph_signatures(generator: ReferenceGenerator) -> None:
    encoder = {i.name: i for i in generator.encoder.get_inputs()}
    assert list(encoder) == ["input_ids", "attention_mask", "image"]
    assert encoder["input_ids"].type == encoder["attention_mask"].type == "tensor(int64)"
    assert encoder["image"].type == "tensor(float)" and encoder["image"].shape[1:] == [3, 64, 64]
    assert all(isinstance(encoder[n].shape[0], str) for n in encoder)  # dynamic B
    assert isinstance(encoder["input_ids"].shape[1], str)  # dynamic T
    outputs = {o.name: o for o in generator.encoder.get_outputs()}
    assert list(outputs) == ["encoder_states", "encoder_mask"]
    assert outputs["encoder_states"].type == "tensor(float)"
    assert outputs["encoder_mask"].type == "tensor(int64)"

    layers, heads, head_dim = cache_shape(generator.decoder)
    assert layers >= 1 and heads >= 1 and head_dim >= 1
    inputs = {i.name: i for i in generator.decoder.get_inputs()}
    base = ["input_ids", "position_ids", "attention_mask", "encoder_states", "encoder_mask"]
    assert list(inputs) == base + past_names(layers)
    for name in ("input_ids", "position_ids", "attention_mask", "encoder_mask"):
        assert inputs[name].type == "tensor(int64)", name
    assert inputs["input_ids"].shape[1] == inputs["position_ids"].shape[1] == 1
    dim = inputs["encoder_states"].shape[2]
    assert heads * head_dim == dim
    for name in past_names(layers):
        batch, h, past, d = inputs[name].shape
        assert (h, d) == (heads, head_dim) and isinstance(past, str) and isinstance(batch, str)
    outputs = {o.name: o for o in generator.decoder.get_outputs()}
    assert list(outputs) == ["logits", *present_names(layers)]
    assert outputs["logits"].shape[1] == generator.tokenizer.get_vocab_size()


def test_held_out_accuracy_through_onnx_runtime(generator: ReferenceGenerator) -> None:
    samples = generation_samples(1000, HELD_OUT_SEED)
    decoded = generator.generate(samples)
    figures = score([generator.text(d) for d in decoded], samples)
    assert figures["answer_exact"] >= 0.95, figures
    assert figures["describe_objects"] >= 0.90, figures
    assert all(d.stopped for d in decoded)  # every output ends with eos, none runs out


def test_first_step_with_an_empty_cache(generator: ReferenceGenerator) -> None:
    """P = 0: arrays of shape [B, H, 0, Dh] are a valid first step in ORT."""
    states, mask = generator.encode(generation_samples(3, [HELD_OUT_SEED, 1]))
    layers, heads, head_dim = cache_shape(generator.decoder)
    bos = generator.generation["bos_id"]
    feeds = {
        "input_ids": np.full((3, 1), bos, np.int64),
        "position_ids": np.zeros((3, 1), np.int64),
        "attention_mask": np.ones((3, 1), np.int64),
        "encoder_states": states,
        "encoder_mask": mask,
        **{n: np.zeros((3, heads, 0, head_dim), np.float32) for n in past_names(layers)},
    }
    logits, *present = generator.decoder.run(None, feeds)
    assert logits.shape == (3, generator.tokenizer.get_vocab_size())
    assert all(p.shape == (3, heads, 1, head_dim) for p in present)
    assert len(present) == 2 * layers and np.isfinite(logits).all()


def _compare(expected, actual) -> float:
    worst = 0.0
    for e, a in zip(expected, actual, strict=True):
        assert (e.ids, e.stopped) == (a.ids, a.stopped)
        for x, y in zip(e.logits, a.logits, strict=True):
            worst = max(worst, float(np.abs(x - y).max()))
    return worst


def test_rows_joining_late_decode_as_alone(generator: ReferenceGenerator) -> None:
    """Continuous batching: each row encoded alone, the encoder states padded to the
    longest, rows joining at steps 0, 3, 6, ... of one running batch whose foreign and
    empty cache columns are masked (and filled with noise): every row writes the same
    tokens as when decoded alone, logits within 1e-4 at every step."""
    samples = generation_samples(12, [HELD_OUT_SEED, 2])
    encoded = [generator.encode([s]) for s in samples]
    alone = [generator.decode(states, mask)[0] for states, mask in encoded]
    states, mask = pad_encoder([s[0] for s, _ in encoded], [m[0] for _, m in encoded])
    assert mask.min() == 0  # some rows really carry encoder padding
    joined = generator.decode(
        states, mask, starts=[3 * i for i in range(12)], noise=np.random.default_rng(1)
    )
    assert _compare(alone, joined) <= TOLERANCE
    texts = [generator.text(d) for d in alone]
    assert any(len(t.split()) > 3 for t in texts) and any(len(t.split()) == 1 for t in texts)


def test_rows_of_different_past_lengths_in_one_step(generator: ReferenceGenerator) -> None:
    """One decoder call, three rows with 0, 2 and 5 own columns among 5 (left-masked):
    each row's logits equal those of the row stepped alone with only its own columns."""
    samples = generation_samples(3, [HELD_OUT_SEED, 3])
    states, mask = generator.encode(samples)
    layers, heads, head_dim = cache_shape(generator.decoder)
    rng = np.random.default_rng(2)
    own = [0, 2, 5]
    past = {
        n: rng.normal(size=(3, heads, 5, head_dim)).astype(np.float32) for n in past_names(layers)
    }
    batch_mask = np.array([[0] * (5 - k) + [1] * k + [1] for k in own], np.int64)
    feeds = {
        "input_ids": np.array([[5], [9], [30]], np.int64),
        "position_ids": np.array([[k] for k in own], np.int64),
        "attention_mask": batch_mask,
        "encoder_states": states,
        "encoder_mask": mask,
        **past,
    }
    logits, *_ = generator.decoder.run(None, feeds)
    for row, k in enumerate(own):
        alone = {
            "input_ids": feeds["input_ids"][row : row + 1],
            "position_ids": feeds["position_ids"][row : row + 1],
            "attention_mask": np.ones((1, k + 1), np.int64),
            "encoder_states": states[row : row + 1],
            "encoder_mask": mask[row : row + 1],
            **{n: p[row : row + 1, :, 5 - k :] for n, p in past.items()},
        }
        (single, *_) = generator.decoder.run(None, alone)
        assert np.abs(single[0] - logits[row]).max() <= TOLERANCE


def test_reference_greedy_matches_a_batch_from_the_start(generator: ReferenceGenerator) -> None:
    """greedy with every row starting at once = the same rows decoded one by one."""
    samples = generation_samples(16, [HELD_OUT_SEED, 4])
    batched = generator.generate(samples)
    one_by_one = [generator.generate([s])[0] for s in samples]
    assert _compare(one_by_one, batched) <= TOLERANCE
    capped = greedy(
        ort_step(generator.decoder),
        *generator.encode(samples),
        cache_shape(generator.decoder),
        generator.generation["bos_id"],
        generator.generation["eos_id"],
        max_new_tokens=2,
    )
    for short, full in zip(capped, batched, strict=True):
        assert short.ids == full.ids[:2]
        assert short.finish_reason == ("stop" if len(full.ids) < 2 else "length")


def test_the_reference_decoder_does_not_import_torch() -> None:
    code = (
        "import sys, fusionserve.zoo.generate_reference; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPOSITORY.parent)
