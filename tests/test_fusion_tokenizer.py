"""The word-level tokenizer shipped as tokenizer.json."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from fusionserve.zoo.data import generate
from fusionserve.zoo.tokenizer import (
    CLS_ID,
    MAX_LENGTH,
    PAD_ID,
    UNK_ID,
    build_tokenizer,
    encode_batch,
)


def test_special_token_ids() -> None:
    tokenizer = build_tokenizer()
    assert tokenizer.token_to_id("[PAD]") == PAD_ID == 0
    assert tokenizer.token_to_id("[UNK]") == UNK_ID == 1
    assert tokenizer.token_to_id("[CLS]") == CLS_ID == 2


def test_case_and_punctuation_are_normalised() -> None:
    tokenizer = build_tokenizer()
    a = tokenizer.encode("Is there a RED square?")
    b = tokenizer.encode("is there a red square")
    assert a.ids == b.ids
    assert a.tokens == ["[CLS]", "is", "there", "a", "red", "square"]


def test_template_questions_have_no_unknown_words() -> None:
    tokenizer = build_tokenizer()
    for sample in generate(500, 1):
        assert UNK_ID not in tokenizer.encode(sample.question).ids, sample.question


def test_unknown_words_map_to_unk() -> None:
    assert build_tokenizer().encode("purple hexagon").ids == [CLS_ID, UNK_ID, UNK_ID]


def test_save_and_load_round_trip(tmp_path) -> None:
    tokenizer = build_tokenizer()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    for loaded in (Tokenizer.from_file(str(path)), Tokenizer.from_str(path.read_text())):
        for question in ("How many circles are there?", "what COLOUR is the triangle?"):
            assert loaded.encode(question).ids == tokenizer.encode(question).ids


def test_truncation_keeps_cls() -> None:
    ids = build_tokenizer().encode(" ".join(["square"] * 100)).ids
    assert len(ids) == MAX_LENGTH and ids[0] == CLS_ID


def test_encode_batch_pads_to_longest() -> None:
    texts = ["count the circles.", "is there a red square in the image?", ""]
    ids, mask = encode_batch(build_tokenizer(), texts, MAX_LENGTH)
    assert ids.dtype == mask.dtype == np.int64
    assert ids.shape == mask.shape == (3, 9)
    assert mask.sum(axis=1).tolist() == [4, 9, 1]
    assert (ids[mask == 0] == PAD_ID).all()
    assert (ids[:, 0] == CLS_ID).all()
