"""A reference greedy decoder for generation models (numpy + ONNX Runtime, no torch).

A generation model is two graphs in a version directory (docs: the generation contract):
``encoder.onnx`` turns the preprocessed request into ``encoder_states`` [B, S, D] and
``encoder_mask`` [B, S]; ``decoder.onnx`` runs one step with a key/value cache:

    inputs   input_ids [B, 1], position_ids [B, 1], attention_mask [B, P + 1],
             encoder_states [B, S, D], encoder_mask [B, S], past_key.{l} / past_value.{l}
             [B, H, P, Dh] for each layer l
    outputs  logits [B, V], present_key.{l} / present_value.{l} [B, H, P + 1, Dh]

``greedy`` decodes a batch whose rows may join at different steps (continuous batching):
one shared cache, where the columns a row did not write (before it joined, after it
ended) are masked out in its attention_mask. A row's tokens and logits must not depend
on them, nor on other rows, nor on padding of the encoder states; the tests hold the
shipped model to that, and the server's output can be compared with this decoder's.
"""

from __future__ import annotations

import tomllib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from fusionserve.zoo.data import Sample, described_objects
from fusionserve.zoo.features import model_inputs
from fusionserve.zoo.tokenizer import decode_text

Step = Callable[[dict[str, np.ndarray]], list[np.ndarray]]
"""One decoder step: named inputs -> [logits, present_key.0, present_value.0, ...]."""


def past_names(layers: int) -> list[str]:
    """The cache inputs in the order the decoder graph takes them (and returns presents)."""
    return [f"past_{kind}.{layer}" for layer in range(layers) for kind in ("key", "value")]


def present_names(layers: int) -> list[str]:
    return [name.replace("past_", "present_") for name in past_names(layers)]


@dataclass
class Decoded:
    """What greedy decoding wrote for one row."""

    ids: list[int]  # generated tokens, the eos excluded
    stopped: bool  # True: the model wrote eos ("stop"); False: max_new_tokens ran out
    logits: list[np.ndarray] = field(default_factory=list)  # [V] per step the row ran

    @property
    def finish_reason(self) -> str:
        return "stop" if self.stopped else "length"


def greedy(
    step: Step,
    encoder_states: np.ndarray,
    encoder_mask: np.ndarray,
    cache_shape: tuple[int, int, int],
    bos_id: int,
    eos_id: int,
    max_new_tokens: int,
    starts: Sequence[int] | None = None,
    noise: np.random.Generator | None = None,
    pad_id: int = 0,
) -> list[Decoded]:
    """Greedy decoding of a batch, all rows in one running cache.

    ``cache_shape`` is (layers, heads, head_dim). Row ``b`` joins at global step
    ``starts[b]`` (default: all at 0) and leaves after eos or ``max_new_tokens`` tokens;
    while it is out, it is fed ``pad_id`` at position 0 and its cache columns are masked.
    With ``noise``, every masked cache column is overwritten with random values before
    each step, which must change nothing.
    """
    layers, heads, head_dim = cache_shape
    batch = encoder_states.shape[0]
    starts = list(starts) if starts is not None else [0] * batch
    names = past_names(layers)
    past = [np.zeros((batch, heads, 0, head_dim), np.float32) for _ in names]
    columns = np.zeros((batch, 0), np.int64)  # 1 where the column is the row's own
    rows = [Decoded([], False) for _ in range(batch)]
    last = np.full(batch, bos_id, np.int64)
    done = np.zeros(batch, bool)
    t = 0
    while not done.all():
        active = np.array([starts[b] <= t and not done[b] for b in range(batch)])
        written = np.array([len(r.ids) + int(r.stopped) for r in rows])
        ids = np.where(active, last, pad_id).astype(np.int64)[:, None]
        positions = np.where(active, written, 0).astype(np.int64)[:, None]
        if noise is not None and columns.shape[1]:
            hidden = (columns == 0)[:, None, :, None]
            past = [
                np.where(hidden, noise.normal(size=p.shape), p).astype(np.float32) for p in past
            ]
        feeds = {
            "input_ids": ids,
            "position_ids": positions,
            "attention_mask": np.concatenate([columns, np.ones((batch, 1), np.int64)], axis=1),
            "encoder_states": encoder_states,
            "encoder_mask": encoder_mask,
            **dict(zip(names, past, strict=True)),
        }
        logits, *past = step(feeds)
        columns = np.concatenate([columns, active[:, None].astype(np.int64)], axis=1)
        for b in np.flatnonzero(active):
            token = int(np.argmax(logits[b]))
            rows[b].logits.append(logits[b].copy())
            if token == eos_id:
                rows[b].stopped, done[b] = True, True
            else:
                rows[b].ids.append(token)
                last[b] = token
                done[b] = len(rows[b].ids) >= max_new_tokens
        t += 1
    return rows


def pad_encoder(
    states: Sequence[np.ndarray], masks: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of encoder outputs of different lengths S -> one batch, right-padded with
    zeros and mask 0 (what an engine does when a request joins a running batch)."""
    length = max(s.shape[0] for s in states)
    out = np.zeros((len(states), length, states[0].shape[-1]), np.float32)
    mask = np.zeros((len(states), length), np.int64)
    for i, (s, m) in enumerate(zip(states, masks, strict=True)):
        out[i, : s.shape[0]] = s
        mask[i, : m.shape[0]] = m
    return out, mask


def session(path: Path, threads: int = 2) -> ort.InferenceSession:
    """A CPU ONNX Runtime session."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def cache_shape(decoder: ort.InferenceSession) -> tuple[int, int, int]:
    """(layers, heads, head_dim), read from the decoder's past_key inputs (as an engine does)."""
    keys = [i for i in decoder.get_inputs() if i.name.startswith("past_key.")]
    _, heads, _, head_dim = keys[0].shape
    return len(keys), int(heads), int(head_dim)


def ort_step(decoder: ort.InferenceSession) -> Step:
    layers = cache_shape(decoder)[0]
    outputs = ["logits", *present_names(layers)]
    return lambda feeds: decoder.run(outputs, feeds)


class ReferenceGenerator:
    """A generation model of a repository, decoded greedily: config, tokenizer, both graphs."""

    def __init__(self, directory: Path, version: int | None = None) -> None:
        self.directory = Path(directory)
        self.config = tomllib.loads((self.directory / "config.toml").read_text())
        self.generation = self.config["generation"]
        if version is None:
            version = max(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
        folder = self.directory / str(version)
        self.encoder = session(folder / self.generation["encoder"])
        self.decoder = session(folder / self.generation["decoder"])
        self.tokenizer = Tokenizer.from_file(str(self.directory / self.generation["tokenizer"]))
        self.modalities = tuple(self.config["modalities"])
        self.max_length = int(self.config["preprocessing"]["text"]["max_length"])

    def encode(self, samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
        """(encoder_states, encoder_mask) of samples, preprocessed as the model was trained."""
        feeds = model_inputs(self.tokenizer, samples, self.modalities, self.max_length)
        states, mask = self.encoder.run(["encoder_states", "encoder_mask"], feeds)
        return states, mask

    def decode(
        self, states: np.ndarray, mask: np.ndarray, max_new_tokens: int | None = None, **kw
    ) -> list[Decoded]:
        g = self.generation
        return greedy(
            ort_step(self.decoder),
            states,
            mask,
            cache_shape(self.decoder),
            g["bos_id"],
            g["eos_id"],
            max_new_tokens or g["max_new_tokens"],
            pad_id=g["pad_id"],
            **kw,
        )

    def generate(
        self, samples: Sequence[Sample], batch_size: int = 64, max_new_tokens: int | None = None
    ) -> list[Decoded]:
        out: list[Decoded] = []
        for start in range(0, len(samples), batch_size):
            out += self.decode(*self.encode(samples[start : start + batch_size]), max_new_tokens)
        return out

    def text(self, decoded: Decoded) -> str:
        return decode_text(self.tokenizer, decoded.ids)


def is_correct(text: str, sample: Sample) -> bool:
    """An answer must be exactly the target; a description must name the scene's objects,
    as a multiset (two red circles are two), in any order."""
    if sample.kind != "describe":
        return text == sample.target
    return Counter(described_objects(text)) == Counter(sample.objects)


def score(texts: Sequence[str], samples: Sequence[Sample]) -> dict[str, float]:
    """Held-out figures: answers exact, descriptions naming the right objects, and exact."""
    pairs = list(zip(texts, samples, strict=True))
    answers = [t == s.target for t, s in pairs if s.kind == "answer"]
    described = [(is_correct(t, s), t == s.target) for t, s in pairs if s.kind == "describe"]
    return {
        "answer_exact": float(np.mean(answers)) if answers else float("nan"),
        "describe_objects": float(np.mean([c for c, _ in described]))
        if described
        else float("nan"),
        "describe_exact": float(np.mean([e for _, e in described])) if described else float("nan"),
    }
