"""Generation targets in the synthetic set and the generation tokenizer (numpy, tokenizers)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer

from fusionserve.zoo import data
from fusionserve.zoo.data import COLOURS, Sample, generation_samples
from fusionserve.zoo.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    UNK_ID,
    build_tokenizer,
    decode_text,
    encode_text,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return generation_samples(2000, 31)


def test_same_seed_same_samples() -> None:
    a, b = generation_samples(40, 5), generation_samples(40, 5)
    assert [(s.question, s.target, s.kind) for s in a] == [
        (s.question, s.target, s.kind) for s in b
    ]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert [s.target for s in a] != [s.target for s in generation_samples(40, 6)]


def test_half_answers_half_descriptions(samples: list[Sample]) -> None:
    kinds = Counter(s.kind for s in samples)
    assert set(kinds) == set(data.GENERATION_KINDS)
    assert abs(kinds["answer"] - kinds["describe"]) < 0.1 * len(samples)


def test_answers_are_the_answer_words(samples: list[Sample]) -> None:
    for s in samples:
        if s.kind == "answer":
            assert s.target == s.answer == data.LABELS[s.label]
    assert {s.target for s in samples if s.kind == "answer"} == set(data.LABELS)


def _cell_colours(image: np.ndarray) -> list[str]:
    """An independent oracle: the colour of each occupied grid cell, in reading order."""
    found = []
    half = data.IMAGE_SIZE // 2
    for cell in range(4):
        y, x = (cell // 2) * half, (cell % 2) * half
        pixels = image[y : y + half, x : x + half].reshape(-1, 3).astype(int)
        near = {c: int((np.abs(pixels - v).max(axis=1) <= 20).sum()) for c, v in COLOURS.items()}
        colour, count = max(near.items(), key=lambda kv: kv[1])
        if count > 50:
            found.append(colour)
    return found


def test_descriptions_name_every_object_in_reading_order(samples: list[Sample]) -> None:
    described = [s for s in samples if s.kind == "describe"]
    for s in described:
        named = data.described_objects(s.target)
        assert named == list(s.objects)
        assert s.target == data.describe(s.objects)
        assert [colour for colour, _ in named] == _cell_colours(s.image), s.target
    assert {len(s.objects) for s in described} == {1, 2, 3, 4}
    assert {s.question for s in described} == set(data.DESCRIBE_TEMPLATES)


def test_describe_format() -> None:
    objects = [("red", "square"), ("blue", "circle"), ("green", "triangle")]
    text = data.describe(objects)
    assert text == "a red square and a blue circle and a green triangle"
    assert data.described_objects(text) == objects
    assert data.described_objects("a purple circle and a red") == []


def test_classifier_samples_and_vocabulary_are_unchanged() -> None:
    """Older models' data and ids: generation only appends."""
    old = data.vocabulary()
    new = data.vocabulary(generation=True)
    assert new[: len(old)] == old and len(new) > len(old)
    assert len(old) == 56  # what demo, avqa and clip were exported with (45 + audio words)
    plain = data.generate(30, 9)
    assert all(s.target == "" and s.answer == data.LABELS[s.label] for s in plain)


def test_generation_tokenizer_keeps_the_shipped_ids_and_adds_bos_eos_last() -> None:
    tokenizer = build_tokenizer(generation=True)
    size = tokenizer.get_vocab_size()
    assert tokenizer.token_to_id(BOS_TOKEN) == size - 2
    assert tokenizer.token_to_id(EOS_TOKEN) == size - 1
    questions = [s.question for s in data.generate(300, 2)]
    for model in ("demo", "avqa", "clip"):
        shipped = Tokenizer.from_file(str(ROOT / "model_repository" / model / "tokenizer.json"))
        assert all(shipped.token_to_id(w) == tokenizer.token_to_id(w) for w in shipped.get_vocab())
        assert [shipped.encode(q).ids for q in questions] == [
            tokenizer.encode(q).ids for q in questions
        ]
    assert build_tokenizer().token_to_id(BOS_TOKEN) is None  # the classifiers' is as it was


def test_questions_and_targets_round_trip_through_the_tokenizer(samples: list[Sample]) -> None:
    tokenizer = build_tokenizer(generation=True)
    bos, eos = tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(EOS_TOKEN)
    for s in samples[:500]:
        assert UNK_ID not in tokenizer.encode(s.question).ids, s.question
        ids = encode_text(tokenizer, s.target)
        assert UNK_ID not in ids and len(ids) == len(s.target.split())
        assert decode_text(tokenizer, [bos, *ids, eos]) == s.target


def test_sample_command_prints_the_expected_text(tmp_path: Path, capsys) -> None:
    out = tmp_path / "g.png"
    for seed in (3, 4, 5, 6):
        argv = ["sample", "--seed", str(seed), "--png", str(out), "--task", "generate"]
        assert data.main(argv) == 0
        (expected,) = generation_samples(1, seed)
        line = json.loads(capsys.readouterr().out)
        assert line == {
            "question": expected.question,
            "expected": expected.target,
            "kind": expected.kind,
        }
        assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), expected.image)
