"""Contrastive pre-training: the loss, captions, transfer of encoders, the served dual encoder."""

from __future__ import annotations

import tomllib

import httpx
import numpy as np
import torch
from helpers import b64
from tokenizers import Tokenizer

from fusionserve.zoo import data
from fusionserve.zoo.models import ModelSize
from fusionserve.zoo.pretrain import (
    DualEncoder,
    caption_batch,
    export_embedding_model,
    info_nce,
    pretrain,
    retrieval_accuracy,
    transfer_model,
)
from fusionserve.zoo.tokenizer import UNK_ID, build_tokenizer

TINY = {"dim": 32, "heads": 2, "text_layers": 1, "image_layers": 1, "stem_channels": 8}


def test_captions_name_every_object_in_known_words() -> None:
    captions, images = caption_batch(200, [5, 5])
    samples = data.generate(200, [5, 5])
    tokenizer = build_tokenizer()
    assert images.shape == (200, 64, 64, 3)
    for text, sample in zip(captions, samples, strict=True):
        assert UNK_ID not in tokenizer.encode(text).ids, text
        for colour, shape in sample.objects:
            assert f"{colour} {shape}" in text


def test_info_nce_rewards_matching_pairs() -> None:
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(16, 8), dim=-1)
    scale = torch.tensor(np.log(10.0))
    matched = info_nce(x, x, scale)
    shuffled = info_nce(x, x[torch.randperm(16)], scale)
    assert matched < shuffled
    assert matched < np.log(16)  # below chance


def test_short_pretraining_retrieves_captions_far_above_chance() -> None:
    model = pretrain(200, size=TINY, log=None)
    assert retrieval_accuracy(model, n=64) > 8 / 64  # chance is 1/64


def test_transfer_starts_the_fusion_encoders_from_the_dual_encoder() -> None:
    encoders = DualEncoder(build_tokenizer().get_vocab_size(), DualEncoder_size())
    model = transfer_model(encoders)
    for mine, theirs in ((model.text, encoders.text), (model.image, encoders.image)):
        for (k, a), (_, b) in zip(
            mine.state_dict().items(), theirs.state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), k
    assert model.num_labels == len(data.LABELS)


def DualEncoder_size():

    return ModelSize(**TINY)


def test_the_dual_encoder_is_served_as_an_embedding_model(stack_factory, tmp_path) -> None:
    model = pretrain(60, size=TINY, log=None)
    _, worst = export_embedding_model(model, tmp_path, "clip")
    assert worst <= 1e-4
    config = tomllib.loads((tmp_path / "clip" / "config.toml").read_text())
    assert "postprocessing" not in config and config["modalities"] == ["text", "image"]

    stack = stack_factory(tmp_path)
    stack.start_api()
    stack.start_worker("clip")
    stack.wait_ready("clip", 1)
    captions, images = caption_batch(4, [9, 9])
    tokenizer = Tokenizer.from_file(str(tmp_path / "clip" / "tokenizer.json"))
    ids = [tokenizer.encode(c).ids for c in captions]
    items = [
        {"text": c, "image": b64(data.png_bytes(im))}
        for c, im in zip(captions, images, strict=True)
    ]
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        job_ids = http.post("/v1/models/clip/infer", json={"items": items}).json()["job_ids"]
        rows = [http.get(f"/v1/jobs/{j}", params={"wait": 20}).json() for j in job_ids]
    assert all(len(i) > 3 for i in ids)
    for row in rows:
        text = np.array(row["outputs"]["text_embedding"])
        image = np.array(row["outputs"]["image_embedding"])
        assert text.shape == image.shape == (64,)
        assert abs(np.linalg.norm(text) - 1) < 1e-4 and abs(np.linalg.norm(image) - 1) < 1e-4
        assert abs(float(text @ image) - row["outputs"]["similarity"]) < 1e-4
        assert "labels" not in row


def test_the_shipped_embedding_model_matches_pictures_to_their_captions() -> None:
    import onnxruntime as ort
    from conftest import DEMO

    from fusionserve.zoo.features import model_inputs

    clip = DEMO.parent / "clip"
    session = ort.InferenceSession(
        str(clip / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    tokenizer = Tokenizer.from_file(str(clip / "tokenizer.json"))
    captions, images = caption_batch(64, [data.HELD_OUT_SEED, 3])
    samples = [
        data.Sample(image=im, question=c, label=0) for c, im in zip(captions, images, strict=True)
    ]
    feeds = model_inputs(tokenizer, samples, ("text", "image"))
    text, image, similarity = session.run(None, feeds)
    assert text.shape == image.shape == (64, 64) and similarity.shape == (64,)
    nearest = (image @ text.T).argmax(axis=1)
    assert (nearest == np.arange(64)).mean() > 0.4  # chance: 1/64
    assert np.allclose(similarity, (text * image).sum(axis=1), atol=1e-5)
