"""Export of every strategy over two and three modalities: ONNX parity with torch, dynamic
axes, and padding invariance.

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

from fusionserve.zoo.data import ALL_MODALITIES, generate, labels
from fusionserve.zoo.export import (
    PARITY_TOLERANCE,
    check_parity,
    export_to_repository,
    session,
)
from fusionserve.zoo.features import input_names, model_inputs
from fusionserve.zoo.models import STRATEGIES, build_model
from fusionserve.zoo.tokenizer import MAX_LENGTH, PAD_ID, build_tokenizer
from fusionserve.zoo.train import train

TINY = {
    "dim": 16,
    "heads": 2,
    "mlp_ratio": 2,
    "text_layers": 1,
    "image_layers": 1,
    "fusion_layers": 1,
    "stem_channels": 4,
}


MODALITY_SETS = (("text", "image"), ALL_MODALITIES, ("image", "audio"))
CASES = [(s, m) for s in STRATEGIES for m in MODALITY_SETS[:2]]
CASES += [(s, MODALITY_SETS[2]) for s in ("early", "cross_attention")]  # no text at all


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{'+'.join(c[1])}")
def exported(request, tmp_path_factory) -> tuple[str, torch.nn.Module, Path, dict[int, float]]:
    strategy, modalities = request.param
    model, _ = train(strategy, steps=3, held_out=0, size=TINY, log=None, modalities=modalities)
    repository = tmp_path_factory.mktemp(f"repo-{strategy}")
    result = export_to_repository(model, repository, "tiny", 3, strategy, None)
    return strategy, model, result.model_path, result.parity


def feeds_for(model, n: int, seed: int) -> dict[str, np.ndarray]:
    samples = generate(n, seed, ALL_MODALITIES if "audio" in model.modalities else ("text",))
    return model_inputs(build_tokenizer(), samples, model.modalities)


def _right_pad(ids: np.ndarray, mask: np.ndarray, extra: int) -> tuple[np.ndarray, np.ndarray]:
    pad = np.full((ids.shape[0], extra), PAD_ID, dtype=np.int64)
    return np.concatenate([ids, pad], axis=1), np.concatenate([mask, np.zeros_like(pad)], axis=1)


def test_parity_at_batch_1_7_64(exported) -> None:
    _, _, _, parity = exported
    assert set(parity) == {1, 7, 64}
    assert max(parity.values()) <= PARITY_TOLERANCE


def test_repository_layout_and_signature(exported) -> None:
    strategy, model, model_path, _ = exported
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
    assert list(inputs) == input_names(model.modalities)
    assert config["modalities"] == list(model.modalities)
    if "text" in model.modalities:
        assert dims(inputs["input_ids"]) == ["batch", "seq"]
        assert dims(inputs["attention_mask"]) == ["batch", "seq"]
        assert inputs["input_ids"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    if "image" in model.modalities:
        assert dims(inputs["image"]) == ["batch", 3, 64, 64]
        assert inputs["image"].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    if "audio" in model.modalities:
        assert dims(inputs["audio"]) == ["batch", 8000]
        assert config["preprocessing"]["audio"] == {
            "input": "audio",
            "sample_rate": 8000,
            "samples": 8000,
        }
    (output,) = graph.output
    assert output.name == "logits" and dims(output) == ["batch", len(labels(model.modalities))]


def test_right_padding_does_not_change_logits_in_onnx_runtime(exported) -> None:
    _, model, model_path, _ = exported
    if "text" not in model.modalities:
        pytest.skip("no text: nothing is padded")
    sess = session(model_path)
    feeds = feeds_for(model, 9, 42)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    (base,) = sess.run(None, feeds)
    for extra in (1, 7, MAX_LENGTH - ids.shape[1]):
        padded_ids, padded_mask = _right_pad(ids, mask, extra)
        (padded,) = sess.run(None, feeds | {"input_ids": padded_ids, "attention_mask": padded_mask})
        assert np.abs(padded - base).max() <= 1e-5, extra
    # One row alone (no padding at all) equals its row in the padded batch.
    shortest = int(mask.sum(axis=1).argmin())
    n = int(mask[shortest].sum())
    alone_feeds = {k: v[shortest : shortest + 1] for k, v in feeds.items()}
    alone_feeds |= {"input_ids": ids[shortest : shortest + 1, :n]}
    alone_feeds |= {"attention_mask": mask[shortest : shortest + 1, :n]}
    (alone,) = sess.run(None, alone_feeds)
    assert np.abs(alone[0] - base[shortest]).max() <= 1e-5


def test_right_padding_does_not_change_logits_in_torch(exported) -> None:
    _, model, _, _ = exported
    if "text" not in model.modalities:
        pytest.skip("no text: nothing is padded")
    feeds = feeds_for(model, 5, 43)
    padded_ids, padded_mask = _right_pad(feeds["input_ids"], feeds["attention_mask"], 6)
    padded_feeds = feeds | {"input_ids": padded_ids, "attention_mask": padded_mask}
    with torch.no_grad():
        base = model(*(torch.from_numpy(a) for a in feeds.values()))
        padded = model(*(torch.from_numpy(a) for a in padded_feeds.values()))
    assert (padded - base).abs().max().item() <= 1e-5


def test_parity_check_raises_on_a_different_model(exported, tmp_path) -> None:
    strategy, model, model_path, _ = exported
    vocab = build_tokenizer().get_vocab_size()
    other = build_model(strategy, model.num_labels, vocab, model.modalities, **TINY)
    with pytest.raises(AssertionError):
        check_parity(other, model_path, batch_sizes=(7,))


def test_unknown_strategy_and_bad_modalities_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        build_model("mid", 10, 10)
    for bad in (("text",), ("text", "smell"), ("text", "text")):
        with pytest.raises(ValueError, match="modalities"):
            build_model("early", 10, 10, bad)
