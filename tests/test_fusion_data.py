"""The synthetic data set: deterministic, balanced, and every answer follows from the scene."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from fusionserve.zoo import data
from fusionserve.zoo.data import COLOURS, LABELS, PLURALS, SHAPES, Sample, generate


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return generate(3000, 123)


def test_same_seed_same_samples() -> None:
    a, b = generate(50, 7), generate(50, 7)
    assert [(s.question, s.label, s.objects) for s in a] == [
        (s.question, s.label, s.objects) for s in b
    ]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    c = generate(50, 8)
    assert [s.question for s in a] != [s.question for s in c]


def test_held_out_seed_differs_from_training_streams() -> None:
    held = generate(20, data.HELD_OUT_SEED)
    train = generate(20, [data.TRAIN_SEED, 0])
    assert not any(np.array_equal(h.image, t.image) for h in held for t in train)


def test_images_and_labels_are_well_formed(samples: list[Sample]) -> None:
    for s in samples[:200]:
        assert s.image.shape == (data.IMAGE_SIZE, data.IMAGE_SIZE, 3)
        assert s.image.dtype == np.uint8
        assert 0 <= s.label < len(LABELS)
        assert 1 <= len(s.objects) <= 4
        assert s.answer == LABELS[s.label]


def _answer(question: str, objects: tuple[tuple[str, str], ...]) -> str:
    """Answer a question from the drawn objects alone (an independent oracle)."""
    words = re.findall(r"\w+", question.lower())
    shapes = [s for s in SHAPES if s in words or PLURALS[s] in words]
    colours = [c for c in COLOURS if c in words]
    assert len(shapes) == 1, question
    shape = shapes[0]
    if PLURALS[shape] in words:
        return str(sum(s == shape for _, s in objects))
    if colours:
        return "yes" if (colours[0], shape) in objects else "no"
    matches = [c for c, s in objects if s == shape]
    assert len(matches) == 1, f"colour asked of a shape present {len(matches)} times"
    return matches[0]


def test_every_question_is_answerable_from_its_scene(samples: list[Sample]) -> None:
    for s in samples:
        assert _answer(s.question, s.objects) == s.answer, (s.question, s.objects)


def test_scene_colours_are_drawn(samples: list[Sample]) -> None:
    for s in samples[:100]:
        pixels = s.image.reshape(-1, 3).astype(int)
        for colour, _ in s.objects:
            distance = np.abs(pixels - np.array(COLOURS[colour])).max(axis=1)
            assert (distance <= 20).sum() > 50, colour


def test_answers_are_balanced(samples: list[Sample]) -> None:
    counts = Counter(s.answer for s in samples)
    assert set(counts) == set(LABELS)
    assert abs(counts["yes"] - counts["no"]) < 0.1 * (counts["yes"] + counts["no"])
    assert min(counts.values()) > len(samples) / len(LABELS) / 2


def test_question_lengths_vary(samples: list[Sample]) -> None:
    lengths = {len(s.question.split()) for s in samples}
    assert len(lengths) >= 5


def test_normalize_matches_documented_preprocessing() -> None:
    image = generate(1, 3)[0].image
    x = data.normalize(image)
    assert x.shape == (3, data.IMAGE_SIZE, data.IMAGE_SIZE) and x.dtype == np.float32
    expected = (image[5, 9, 1] / 255.0 - data.IMAGE_MEAN[1]) / data.IMAGE_STD[1]
    assert x[1, 5, 9] == pytest.approx(expected, abs=1e-6)
    batch = data.normalize(np.stack([image, image]))
    assert batch.shape == (2, 3, data.IMAGE_SIZE, data.IMAGE_SIZE)


def test_png_round_trip() -> None:
    image = generate(1, 4)[0].image
    decoded = np.asarray(Image.open(io.BytesIO(data.png_bytes(image))).convert("RGB"))
    assert np.array_equal(decoded, image)


def test_sample_command_writes_png_and_json(tmp_path, capsys) -> None:
    out = tmp_path / "q.png"
    assert data.main(["sample", "--seed", "11", "--png", str(out)]) == 0
    line = json.loads(capsys.readouterr().out)
    expected = generate(1, 11)[0]
    assert line == {"question": expected.question, "answer": expected.answer}
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), expected.image)


def test_serving_side_modules_do_not_import_torch() -> None:
    code = (
        "import sys, fusionserve.zoo.data, fusionserve.zoo.tokenizer, fusionserve.zoo.cli; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_audio_samples_hold_what_their_answers_say() -> None:
    """Beeps counted by an energy detector and pitch by the dominant frequency agree."""
    from fusionserve.zoo.tokenizer import UNK_ID, build_tokenizer

    samples = data.generate(400, 21, data.ALL_MODALITIES)
    kinds = {s.kind for s in samples}
    assert kinds == {"exist", "colour", "count", "beeps", "pitch"}
    tokenizer = build_tokenizer()
    for s in samples:
        assert s.audio is not None and s.audio.shape == (data.AUDIO_SAMPLES,)
        assert s.audio.dtype == np.float32 and np.abs(s.audio).max() <= 1.0
        assert UNK_ID not in tokenizer.encode(s.question).ids, s.question
        frames = np.abs(s.audio[: 8000 // 80 * 80]).reshape(-1, 80).max(axis=1) > 0.2
        beeps = int(np.sum(frames[1:] & ~frames[:-1]) + frames[0])
        spectrum = np.abs(np.fft.rfft(s.audio))
        hz = np.fft.rfftfreq(len(s.audio), 1 / data.SAMPLE_RATE)[spectrum.argmax()]
        if s.kind == "beeps":
            assert s.answer == str(beeps)
        elif s.kind == "pitch":
            assert s.answer == ("high" if hz > 1000 else "low")


def test_image_only_samples_are_unchanged_by_the_audio_modality() -> None:
    """The image-only stream is what the shipped demo was trained and tested on."""
    plain = generate(30, 9)
    assert all(s.audio is None for s in plain)
    assert [s.label for s in plain] == [s.label for s in generate(30, 9, ("text", "image"))]
