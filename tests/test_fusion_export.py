"""Export of every strategy: ONNX parity with torch, dynamic axes, and padding invariance.

Tiny models trained for a few steps keep each strategy to seconds; the real demo
configuration is re-trained in test_fusion_demo.py.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from fusion.data import LABELS, generate
from fusion.export import (
    PARITY_TOLERANCE,
    check_parity,
    export_to_repository,
    session,
)
from fusion.models import STRATEGIES, build_model
from fusion.tokenizer import MAX_LENGTH, PAD_ID, build_tokenizer, encode_samples
from fusion.train import train

TINY = {
    "dim": 16,
    "heads": 2,
    "mlp_ratio": 2,
    "text_layers": 1,
    "image_layers": 1,
    "fusion_layers": 1,
    "stem_channels": 4,
}


@pytest.fixture(scope="module", params=STRATEGIES)
def exported(request, tmp_path_factory) -> tuple[str, torch.nn.Module, Path, dict[int, float]]:
    strategy = request.param
    model, _ = train(strategy, steps=3, held_out=0, size=TINY, log=None)
    repository = tmp_path_factory.mktemp(f"repo-{strategy}")
    result = export_to_repository(model, repository, "tiny", 3, strategy, None)
    return strategy, model, result.model_path, result.parity


def _right_pad(ids: np.ndarray, mask: np.ndarray, extra: int) -> tuple[np.ndarray, np.ndarray]:
    pad = np.full((ids.shape[0], extra), PAD_ID, dtype=np.int64)
    return np.concatenate([ids, pad], axis=1), np.concatenate([mask, np.zeros_like(pad)], axis=1)


def test_parity_at_batch_1_7_64(exported) -> None:
    _, _, _, parity = exported
    assert set(parity) == {1, 7, 64}
    assert max(parity.values()) <= PARITY_TOLERANCE


def test_repository_layout_and_signature(exported) -> None:
    strategy, _, model_path, _ = exported
    assert model_path == model_path.parent.parent / "3" / "model.onnx"
    model_dir = model_path.parent.parent
    config = tomllib.loads((model_dir / "config.toml").read_text())
    assert config["training"]["strategy"] == strategy
    assert "held_out_accuracy" not in config["training"]
    assert (model_dir / "tokenizer.json").is_file()
    graph = onnx.load(str(model_path)).graph
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in graph.initializer)

    def dims(value) -> list[str | int]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {i.name: i for i in graph.input}
    assert list(inputs) == ["input_ids", "attention_mask", "image"]
    assert dims(inputs["input_ids"]) == ["batch", "seq"]
    assert dims(inputs["attention_mask"]) == ["batch", "seq"]
    assert dims(inputs["image"]) == ["batch", 3, 64, 64]
    assert inputs["input_ids"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert inputs["image"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    (output,) = graph.output
    assert output.name == "logits" and dims(output) == ["batch", len(LABELS)]


def test_right_padding_does_not_change_logits_in_onnx_runtime(exported) -> None:
    _, _, model_path, _ = exported
    sess = session(model_path)
    ids, mask, image = encode_samples(build_tokenizer(), generate(9, 42))
    (base,) = sess.run(None, {"input_ids": ids, "attention_mask": mask, "image": image})
    for extra in (1, 7, MAX_LENGTH - ids.shape[1]):
        padded_ids, padded_mask = _right_pad(ids, mask, extra)
        feeds = {"input_ids": padded_ids, "attention_mask": padded_mask, "image": image}
        (padded,) = sess.run(None, feeds)
        assert np.abs(padded - base).max() <= 1e-5, extra
    # One row alone (no padding at all) equals its row in the padded batch.
    shortest = int(mask.sum(axis=1).argmin())
    n = int(mask[shortest].sum())
    feeds = {
        "input_ids": ids[shortest : shortest + 1, :n],
        "attention_mask": mask[shortest : shortest + 1, :n],
        "image": image[shortest : shortest + 1],
    }
    (alone,) = sess.run(None, feeds)
    assert np.abs(alone[0] - base[shortest]).max() <= 1e-5


def test_right_padding_does_not_change_logits_in_torch(exported) -> None:
    _, model, _, _ = exported
    ids, mask, image = encode_samples(build_tokenizer(), generate(5, 43))
    padded_ids, padded_mask = _right_pad(ids, mask, 6)
    with torch.no_grad():
        base = model(*(torch.from_numpy(a) for a in (ids, mask, image)))
        padded = model(*(torch.from_numpy(a) for a in (padded_ids, padded_mask, image)))
    assert (padded - base).abs().max().item() <= 1e-5


def test_parity_check_raises_on_a_different_model(exported, tmp_path) -> None:
    strategy, _, model_path, _ = exported
    other = build_model(strategy, len(LABELS), build_tokenizer().get_vocab_size(), **TINY)
    with pytest.raises(AssertionError):
        check_parity(other, model_path, batch_sizes=(7,))


def test_unknown_strategy_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        build_model("mid", len(LABELS), 10)
