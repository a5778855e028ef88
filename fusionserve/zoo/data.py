"""Synthetic shapes VQA: questions that need the text and the image (and the sound) to answer.

Each sample is a 64x64 RGB picture with 1-4 coloured shapes (one per cell of a 2x2 grid,
so they never overlap) and a templated question about it.  Three question kinds:

* existence ("is there a red square?")  -> yes / no, balanced, half of the "no" cases are
  hard negatives (the shape is there in another colour, or the colour on another shape);
* colour ("what colour is the circle?") -> only asked about a shape present exactly once;
* counting ("how many triangles are there?") -> 0..3, balanced over the counts.

With the audio modality (``generate(..., modalities=ALL_MODALITIES)``) every sample also
carries a one-second clip of 1-3 beeps of one pitch over noise, and two more kinds ask
about it: how many beeps (1..3) and whether they are high or low. Image questions then
come with a sound that does not matter, and audio questions with a picture that does not.

Only numpy and Pillow are imported: the serving side and the tests use this without torch.
Everything is a pure function of the seed.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import wave
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
# Per-channel statistics of pixel/255 over the generated images (measured on 20k samples).
IMAGE_MEAN: tuple[float, float, float] = (0.153, 0.153, 0.106)
IMAGE_STD: tuple[float, float, float] = (0.264, 0.233, 0.206)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles"}
MAX_COUNT = 3

LABELS: list[str] = ["yes", "no", *COLOURS, *(str(k) for k in range(MAX_COUNT + 1))]
LABEL_INDEX: dict[str, int] = {label: i for i, label in enumerate(LABELS)}

MODALITIES: tuple[str, ...] = ("text", "image")
"""The default: text + image, as the shipped demo."""
ALL_MODALITIES: tuple[str, ...] = ("text", "image", "audio")

SAMPLE_RATE = 8000
AUDIO_SAMPLES = SAMPLE_RATE  # one second
PITCHES: dict[str, tuple[float, float]] = {"low": (300.0, 500.0), "high": (1200.0, 1800.0)}
MAX_BEEPS = 3
AUDIO_LABELS: tuple[str, ...] = tuple(PITCHES)
"""Appended after LABELS, so the labels the image questions use keep their indices."""


def labels(modalities: Sequence[str] = MODALITIES) -> list[str]:
    """The answers a model over ``modalities`` can give (its logits, in order)."""
    return LABELS + (list(AUDIO_LABELS) if "audio" in modalities else [])


# Seeds: training draws batches from SeedSequence([TRAIN_SEED, step]) streams, evaluation
# uses generate(n, HELD_OUT_SEED); the two never share a random stream.
TRAIN_SEED = 0
HELD_OUT_SEED = 20_240_601

EXIST_TEMPLATES: tuple[str, ...] = (
    "is there a {colour} {shape}?",
    "is there a {colour} {shape} in the image?",
    "does the picture contain a {colour} {shape}?",
    "can you see a {colour} {shape}?",
    "do you see any {colour} {shape} anywhere in this picture?",
    "{colour} {shape}?",
)
COLOUR_TEMPLATES: tuple[str, ...] = (
    "what colour is the {shape}?",
    "what color is the {shape}?",
    "which colour does the {shape} have?",
    "tell me the colour of the {shape} in the image.",
    "the {shape} is what color?",
    "colour of the {shape}?",
)
COUNT_TEMPLATES: tuple[str, ...] = (
    "how many {shapes} are there?",
    "how many {shapes}?",
    "count the {shapes}.",
    "how many {shapes} can you see in the picture?",
    "what is the number of {shapes} in this image?",
    "count all of the {shapes} that appear in the picture.",
)

BEEP_TEMPLATES: tuple[str, ...] = (
    "how many beeps do you hear?",
    "how many beeps are in the sound?",
    "count the beeps.",
    "how many tones can you hear in the recording?",
)
PITCH_TEMPLATES: tuple[str, ...] = (
    "is the tone high or low?",
    "are the beeps high or low?",
    "what is the pitch of the beeps?",
    "is the sound high pitched or low pitched?",
)
CAPTION_TEMPLATES: tuple[str, ...] = ("a picture of {objects}", "an image with {objects}")
"""Captions of the pictures, for contrastive (CLIP-style) pre-training of the encoders."""
DESCRIBE_TEMPLATES: tuple[str, ...] = (
    "describe the picture.",
    "describe the image.",
    "what is in the picture?",
    "what can you see in this image?",
    "list the objects in the picture.",
    "describe what you see.",
)
"""Generation: asks for a description naming every object (see ``describe``)."""
GENERATION_KINDS: tuple[str, ...] = ("answer", "describe")

_CELL = IMAGE_SIZE // 2
_MIN_SIZE, _MAX_SIZE = 22, 25


@dataclass
class Sample:
    """One question about one picture; `label` indexes LABELS."""

    image: np.ndarray  # H x W x 3 uint8
    question: str
    label: int
    objects: tuple[tuple[str, str], ...] = ()  # (colour, shape) drawn, for checks and demos
    audio: np.ndarray | None = None  # float32 [AUDIO_SAMPLES] at SAMPLE_RATE, in [-1, 1]
    kind: str = ""  # exist, colour, count, beeps or pitch; answer or describe (generation)
    target: str = ""  # generation: the text a model should write (see generation_samples)

    @property
    def answer(self) -> str:
        """The label's word; a description (label -1, no label) answers its target text."""
        return self.target if self.label < 0 else labels(ALL_MODALITIES)[self.label]


Scene = list[tuple[str, str]]  # (colour, shape) per object


def vocabulary(generation: bool = False) -> list[str]:
    """Every word the templates can produce, in a stable order: token ids never move.

    The words of the image questions come first, sorted (the ids the shipped demo was
    trained with); the words audio questions and captions added come after them, so a
    tokenizer saved with a newer model still encodes older models' questions the same.
    With ``generation``, the words only generation uses (its description questions and
    the answers it writes) come last; without, the list (and so the classifiers'
    embedding sizes and their seeded initialisation) is what it was.
    """

    def words(templates: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for template in templates:
            for shape in SHAPES:
                for colour in COLOURS:
                    text = template.format(
                        colour=colour, shape=shape, shapes=PLURALS[shape], objects=""
                    )
                    found.update(re.findall(r"\w+", text.lower()))
        return found

    base = words(EXIST_TEMPLATES + COLOUR_TEMPLATES + COUNT_TEMPLATES)
    added = words(BEEP_TEMPLATES + PITCH_TEMPLATES + CAPTION_TEMPLATES) | {"and"}
    known = sorted(base) + sorted(added - base)
    if not generation:
        return known
    every = describe([(colour, shape) for colour in COLOURS for shape in SHAPES])
    written = words(DESCRIBE_TEMPLATES) | set(LABELS) | set(every.split())
    return known + sorted(written - set(known))


def _draw(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Render the scene: one object per grid cell, random size and offset inside the cell."""
    return _draw_cells(scene, rng)[0]


def _draw_cells(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """``_draw``, also saying which grid cell (0-3, reading order) each object went to."""
    grey = int(rng.integers(0, 50))
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    cells = rng.permutation(4)[: len(scene)]
    for (colour, shape), cell in zip(scene, cells, strict=True):
        size = int(rng.integers(_MIN_SIZE, _MAX_SIZE + 1))
        x0 = (cell % 2) * _CELL + int(rng.integers(0, _CELL - size + 1))
        y0 = (cell // 2) * _CELL + int(rng.integers(0, _CELL - size + 1))
        x1, y1 = x0 + size - 1, y0 + size - 1
        fill = tuple(
            int(c) for c in np.clip(np.array(COLOURS[colour]) + rng.integers(-20, 21, 3), 0, 255)
        )
        if shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return np.asarray(image, dtype=np.uint8).copy(), [int(c) for c in cells]


def _random_object(rng: np.random.Generator, exclude_shape: str | None = None) -> tuple[str, str]:
    shapes = [s for s in SHAPES if s != exclude_shape]
    return str(rng.choice(list(COLOURS))), str(rng.choice(shapes))


def _random_scene(rng: np.random.Generator) -> Scene:
    n = int(rng.integers(1, 5))
    while True:
        scene = [_random_object(rng) for _ in range(n)]
        if max(sum(s == shape for _, s in scene) for shape in SHAPES) <= MAX_COUNT:
            return scene


def _existence(rng: np.random.Generator) -> tuple[Scene, str, str]:
    scene = _random_scene(rng)
    if rng.random() < 0.5:
        colour, shape = scene[int(rng.integers(len(scene)))]
        return scene, str(rng.choice(EXIST_TEMPLATES)).format(colour=colour, shape=shape), "yes"
    present = set(scene)
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    # Hard negatives share the colour or the shape with something in the picture.
    hard = [(c, s) for c, s in absent if any(c == pc or s == ps for pc, ps in present)]
    pool = hard if hard and rng.random() < 0.5 else absent
    colour, shape = pool[int(rng.integers(len(pool)))]
    return scene, str(rng.choice(EXIST_TEMPLATES)).format(colour=colour, shape=shape), "no"


def _colour_query(rng: np.random.Generator) -> tuple[Scene, str, str]:
    while True:
        scene = _random_scene(rng)
        unique = [obj for obj in scene if sum(obj[1] == s for _, s in scene) == 1]
        if unique:
            colour, shape = unique[int(rng.integers(len(unique)))]
            return scene, str(rng.choice(COLOUR_TEMPLATES)).format(shape=shape), colour


def _count_query(rng: np.random.Generator) -> tuple[Scene, str, str]:
    count = int(rng.integers(0, MAX_COUNT + 1))
    shape = str(rng.choice(SHAPES))
    others = int(rng.integers(1 if count == 0 else 0, min(4 - count, MAX_COUNT) + 1))
    scene = [(str(rng.choice(list(COLOURS))), shape) for _ in range(count)]
    scene += [_random_object(rng, exclude_shape=shape) for _ in range(others)]
    order = rng.permutation(len(scene))
    scene = [scene[i] for i in order]
    question = str(rng.choice(COUNT_TEMPLATES)).format(shapes=PLURALS[shape])
    return scene, question, str(count)


_KINDS = (_existence, _colour_query, _count_query)
_KIND_NAMES = ("exist", "colour", "count")
AUDIO_KINDS = ("beeps", "pitch")


def sample_from(rng: np.random.Generator) -> Sample:
    """Draw one sample; the question kind is uniform over existence / colour / count."""
    kind = int(rng.integers(len(_KINDS)))
    scene, question, answer = _KINDS[kind](rng)
    image = _draw(scene, rng)
    return Sample(image, question, LABEL_INDEX[answer], tuple(scene), kind=_KIND_NAMES[kind])


def audio_sample_from(rng: np.random.Generator) -> Sample:
    """A picture, a clip and a question about one of them (uniform over the five kinds)."""
    kind = int(rng.integers(len(_KINDS) + len(AUDIO_KINDS)))
    beeps = int(rng.integers(1, MAX_BEEPS + 1))
    pitch = str(rng.choice(AUDIO_LABELS))
    audio = tones(rng, beeps, pitch)
    if kind < len(_KINDS):
        scene, question, answer = _KINDS[kind](rng)
        name = _KIND_NAMES[kind]
    else:
        scene, name = _random_scene(rng), AUDIO_KINDS[kind - len(_KINDS)]
        if name == "beeps":
            question, answer = str(rng.choice(BEEP_TEMPLATES)), str(beeps)
        else:
            question, answer = str(rng.choice(PITCH_TEMPLATES)), pitch
    image = _draw(scene, rng)
    index = labels(ALL_MODALITIES).index(answer)
    return Sample(image, question, index, tuple(scene), audio=audio, kind=name)


def tones(rng: np.random.Generator, beeps: int, pitch: str) -> np.ndarray:
    """One second of noise with ``beeps`` beeps of one pitch, each in its own third.

    Beeps keep at least 60 ms of gap between them, so they never merge into one.
    """
    n = AUDIO_SAMPLES
    t = np.arange(n) / SAMPLE_RATE
    clip = rng.normal(0.0, rng.uniform(0.01, 0.04), n)
    frequency = rng.uniform(*PITCHES[pitch])
    slot = n // MAX_BEEPS
    for k in sorted(rng.permutation(MAX_BEEPS)[:beeps]):
        length = int(rng.uniform(0.12, 0.2) * SAMPLE_RATE)
        margin = int(0.03 * SAMPLE_RATE)
        start = k * slot + int(rng.integers(margin, slot - length - margin))
        ramp = int(0.01 * SAMPLE_RATE)
        envelope = np.ones(length)
        envelope[:ramp] = envelope[-ramp:][::-1] = np.linspace(0.0, 1.0, ramp)
        f = frequency * rng.uniform(0.97, 1.03)
        beep = np.sin(2 * np.pi * f * t[:length] + rng.uniform(0, 2 * np.pi))
        clip[start : start + length] += rng.uniform(0.3, 0.8) * envelope * beep
    return np.clip(clip, -1.0, 1.0).astype(np.float32)


def caption(objects: Sequence[tuple[str, str]], rng: np.random.Generator) -> str:
    """A caption naming every object of a picture, in random order."""
    names = [f"a {colour} {shape}" for colour, shape in objects]
    names = [names[i] for i in rng.permutation(len(names))]
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return str(rng.choice(CAPTION_TEMPLATES)).format(objects=joined)


def describe(objects: Sequence[tuple[str, str]]) -> str:
    """The description a generation model writes: every object, in the order given.

    "a red square and a blue circle and a green triangle": words only (the tokenizer
    drops punctuation), so a description's token ids decode back to exactly this text.
    """
    return " and ".join(f"a {colour} {shape}" for colour, shape in objects)


def described_objects(text: str) -> list[tuple[str, str]]:
    """The (colour, shape) pairs a description names, in order (the inverse of describe)."""
    pattern = rf"\b({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})\b"
    return [(m.group(1), m.group(2)) for m in re.finditer(pattern, text)]


def generation_sample_from(rng: np.random.Generator) -> Sample:
    """Half the time a question of the classifier set answered in words (kind "answer",
    target = the answer word), else a request for a description (kind "describe", target
    = ``describe`` of the objects in the grid cells' reading order: top-left, top-right,
    bottom-left, bottom-right; ``objects`` is in that order too)."""
    if rng.random() < 0.5:
        sample = sample_from(rng)
        sample.kind, sample.target = "answer", sample.answer
        return sample
    scene = _random_scene(rng)
    question = str(rng.choice(DESCRIBE_TEMPLATES))
    image, cells = _draw_cells(scene, rng)
    ordered = tuple(obj for _, obj in sorted(zip(cells, scene, strict=True)))
    return Sample(image, question, -1, ordered, kind="describe", target=describe(ordered))


def generation_samples(n: int, seed: int | Sequence[int]) -> list[Sample]:
    """`n` text-generation samples (text + image), a pure function of `seed`.

    Each has a ``target`` text and a ``kind`` ("answer" or "describe", about half each).
    """
    rng = np.random.default_rng(seed)
    return [generation_sample_from(rng) for _ in range(n)]


def generate(
    n: int, seed: int | Sequence[int], modalities: Sequence[str] = MODALITIES
) -> list[Sample]:
    """`n` samples, a pure function of `seed` (an int or a SeedSequence entropy list).

    With "audio" among ``modalities`` every sample has a clip and 2/5 of the questions
    are about it; without, the samples are exactly those the image-only models know.
    """
    rng = np.random.default_rng(seed)
    draw = audio_sample_from if "audio" in modalities else sample_from
    return [draw(rng) for _ in range(n)]


def normalize(image: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W): pixel/255, minus mean, over std.

    Exactly the preprocessing the models are trained with (and config.toml describes).
    """
    x = image.astype(np.float32) / 255.0
    x = (x - np.asarray(IMAGE_MEAN, np.float32)) / np.asarray(IMAGE_STD, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def wav_bytes(audio: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """Encode a float waveform in [-1, 1] as 16-bit mono PCM WAV (what clients upload)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an HxWx3 uint8 image as PNG (what clients upload)."""
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    """`python -m fusionserve.zoo.data sample --seed S --png out.png`: one sample for curl.

    With ``--task generate`` the sample is a generation one and the line holds the text
    a generation model should write (``expected``) and its kind (answer or describe).
    """
    parser = argparse.ArgumentParser(prog="python -m fusionserve.zoo.data")
    sub = parser.add_subparsers(dest="command", required=True)
    sample = sub.add_parser("sample", help="write one sample's PNG, print its question/answer")
    sample.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    sample.add_argument("--png", required=True, help="output PNG path")
    sample.add_argument(
        "--task",
        choices=("classify", "generate"),
        default="classify",
        help="classify: a VQA question and its label; generate: a question or a request "
        "for a description, and the expected text",
    )
    args = parser.parse_args(argv)

    if args.task == "generate":
        (one,) = generation_samples(1, args.seed)
        line = {"question": one.question, "expected": one.target, "kind": one.kind}
    else:
        (one,) = generate(1, args.seed)
        line = {"question": one.question, "answer": one.answer}
    with open(args.png, "wb") as f:
        f.write(png_bytes(one.image))
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
