"""A tiny encoder-decoder that follows the generation contract, for the engine's tests.

``tiny_generator(repository)`` writes ``<repository>/<name>/`` as the contract lays it out
(``/work/notes/generation-contract.md``, issue 16): ``config.toml`` with ``task = "generate"``
and ``[generation]``, ``tokenizer.json`` (WordLevel, questions and outputs alike) and
``1/encoder.onnx`` + ``1/decoder.onnx``. Weights are random (seeded): the tokens it produces
are arbitrary but deterministic, which is all the engine's exactness checks need. The EOS
logit grows with the position, so greedy sequences end at varied lengths (mostly within
the cap).

Encoder: ``input_ids``/``attention_mask`` int64 [B,T] and ``image`` float32 [B,3,8,8]
(4x4 patches) -> one masked self-attention block -> ``encoder_states`` [B,4+T,D] and
``encoder_mask`` [B,4+T]. Decoder: ``layers`` blocks of masked self-attention over the
key/value cache, masked cross-attention to the encoder states, and an MLP; masked scores
are ``-inf`` before the softmax, so masked columns have no effect.

Run as a script to write a repository: ``python tests/generation_models.py DIR [NAME]``.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[BOS]", "[EOS]"]
PAD_ID, UNK_ID, CLS_ID, BOS_ID, EOS_ID = range(5)
WORDS = [
    "a",
    "the",
    "red",
    "green",
    "blue",
    "big",
    "small",
    "circle",
    "square",
    "left",
    "right",
    "of",
    "on",
    "and",
    "top",
]
VOCAB = len(SPECIALS) + len(WORDS)
"""20 ids: the specials, then the words."""
IMAGE = 8
PATCH = 4
MAX_POSITIONS = 64
CROSS_GAIN = 3.0
DECODER_INPUTS = ["input_ids", "position_ids", "attention_mask", "encoder_states", "encoder_mask"]

CONFIG = """\
name = "{name}"
platform = "onnxruntime_onnx"
description = "tiny random-weight encoder-decoder for the generation engine's tests"
modalities = ["text", "image"]
task = "generate"

[batching]
max_batch_size = {max_active}

[preprocessing.text]
tokenizer = "tokenizer.json"
ids_input = "input_ids"
mask_input = "attention_mask"
max_length = 16
pad_id = {pad}

[preprocessing.image]
input = "image"
height = {image}
width = {image}

[generation]
encoder = "encoder.onnx"
decoder = "decoder.onnx"
tokenizer = "tokenizer.json"
bos_id = {bos}
eos_id = {eos}
pad_id = {pad}
max_new_tokens = {max_new_tokens}
max_active = {max_active}
"""


def build_tokenizer():
    """WordLevel over SPECIALS + WORDS; questions get a leading [CLS] like the zoo's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", special_tokens=[("[CLS]", CLS_ID)]
    )
    tokenizer.add_special_tokens(SPECIALS)
    return tokenizer


def _modules(dim: int, heads: int, layers: int, seed: int, eos_slope: float):
    import torch
    from torch import nn

    head_dim = dim // heads

    def attend(q, k, v, key_mask):
        """q [B,H,Tq,Dh], k/v [B,H,Tk,Dh], key_mask [B,Tk] (0: no effect on the output)."""
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
        scores = scores.masked_fill(key_mask[:, None, None, :] == 0, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v

    def split(x):  # [B,T,D] -> [B,H,T,Dh]
        return x.reshape(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)

    def merge(x):  # [B,H,T,Dh] -> [B,T,D]
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], dim)

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.o = nn.Linear(dim, dim)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(VOCAB, dim)
            self.positions = nn.Embedding(MAX_POSITIONS, dim)
            self.patches = nn.Conv2d(3, dim, PATCH, stride=PATCH)
            self.attention = Attention()
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.Tanh(), nn.Linear(2 * dim, dim))

        def forward(self, input_ids, attention_mask, image):
            text = self.tokens(input_ids) + self.positions.weight[: input_ids.shape[1]]
            pixels = self.patches(image).flatten(2).transpose(1, 2)  # [B, patches, D]
            x = torch.cat([pixels, text], dim=1)
            ones = torch.ones_like(attention_mask[:, :1]).expand(-1, pixels.shape[1])
            mask = torch.cat([ones, attention_mask], dim=1)
            a = self.attention
            x = x + a.o(merge(attend(split(a.q(x)), split(a.k(x)), split(a.v(x)), mask)))
            x = x + self.mlp(x)
            return x, mask

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.self_attention, self.cross_attention = Attention(), Attention()
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.Tanh(), nn.Linear(2 * dim, dim))

        def forward(self, x, attention_mask, states, states_mask, past_key, past_value):
            a = self.self_attention
            key = torch.cat([past_key, split(a.k(x))], dim=2)
            value = torch.cat([past_value, split(a.v(x))], dim=2)
            x = x + a.o(merge(attend(split(a.q(x)), key, value, attention_mask)))
            c = self.cross_attention
            cross = attend(split(c.q(x)), split(c.k(states)), split(c.v(states)), states_mask)
            x = x + c.o(merge(cross))
            return x + self.mlp(x), key, value

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(VOCAB, dim)
            self.positions = nn.Embedding(MAX_POSITIONS, dim)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.head = nn.Linear(dim, VOCAB)
            bias = torch.zeros(VOCAB)
            bias[[PAD_ID, UNK_ID, CLS_ID, BOS_ID]] = -4.0  # rarely generated, never excluded
            bias[EOS_ID] = -3.0
            self.register_buffer("bias", bias)
            self.register_buffer("eos", torch.nn.functional.one_hot(torch.tensor(EOS_ID), VOCAB))

        def forward(self, input_ids, position_ids, attention_mask, states, states_mask, *past):
            x = self.tokens(input_ids) + self.positions(position_ids)  # [B,1,D]
            presents = []
            for i, block in enumerate(self.blocks):
                x, key, value = block(
                    x, attention_mask, states, states_mask, past[2 * i], past[2 * i + 1]
                )
                presents += [key, value]
            logits = self.head(x[:, 0]) * 3.0 + self.bias
            logits = logits + eos_slope * position_ids.to(logits.dtype) * self.eos
            return (logits, *presents)

    torch.manual_seed(seed)
    encoder, decoder = Encoder().eval(), Decoder().eval()
    with torch.no_grad():  # sharp cross-attention: the tokens depend on the inputs
        for block in decoder.blocks:
            for linear in (block.cross_attention.q, block.cross_attention.k):
                linear.weight.mul_(CROSS_GAIN)
            block.cross_attention.o.weight.mul_(CROSS_GAIN)
    return encoder, decoder


def _export(model, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes) -> None:
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            external_data=False,
            opset_version=17,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
        )


_BUILT: dict[tuple, Path] = {}
"""Models this process has exported, by their parameters: a second call copies the files."""


def tiny_generator(repository: Path, name: str = "tiny_gen", **options: Any) -> Path:
    """Write the model directory ``<repository>/<name>`` and return it (see ``_export_tiny``).

    The export (torch) runs once per process and set of ``options``; later calls copy its
    files and rename the model, which is all a serving test needs of a fresh one.
    """
    key = tuple(sorted(options.items()))
    if key not in _BUILT:
        _BUILT[key] = _export_tiny(Path(tempfile.mkdtemp(prefix="tiny-generator-")), **options)
    directory = repository / name
    shutil.copytree(_BUILT[key], directory)
    config = directory / "config.toml"
    built_name = _BUILT[key].name
    config.write_text(config.read_text().replace(f'name = "{built_name}"', f'name = "{name}"', 1))
    return directory


def _export_tiny(
    repository: Path,
    name: str = "tiny_gen",
    *,
    dim: int = 16,
    heads: int = 2,
    layers: int = 1,
    seed: int = 0,
    eos_slope: float = 0.5,
    max_new_tokens: int = 32,
    max_active: int = 8,
) -> Path:
    """Write the model directory ``<repository>/<name>`` and return it."""
    import onnx
    import torch

    directory = repository / name
    version = directory / "1"
    version.mkdir(parents=True, exist_ok=True)
    encoder, decoder = _modules(dim, heads, layers, seed, eos_slope)
    batch, text, past = 2, 5, 3
    ids = torch.randint(len(SPECIALS), VOCAB, (batch, text))
    mask = torch.ones(batch, text, dtype=torch.int64)
    image = torch.randn(batch, 3, IMAGE, IMAGE)
    _export(
        encoder,
        (ids, mask, image),
        version / "encoder.onnx",
        ["input_ids", "attention_mask", "image"],
        ["encoder_states", "encoder_mask"],
        {
            "input_ids": {0: "batch", 1: "text"},
            "attention_mask": {0: "batch", 1: "text"},
            "image": {0: "batch"},
            "encoder_states": {0: "batch", 1: "source"},
            "encoder_mask": {0: "batch", 1: "source"},
        },
    )
    with torch.no_grad():
        states, states_mask = encoder(ids, mask, image)
    caches = [torch.zeros(batch, heads, past, dim // heads) for _ in range(2 * layers)]
    cache_names = [f"past_{kv}.{i}" for i in range(layers) for kv in ("key", "value")]
    present_names = [f"present_{kv}.{i}" for i in range(layers) for kv in ("key", "value")]
    axes = {
        "input_ids": {0: "batch"},
        "position_ids": {0: "batch"},
        "attention_mask": {0: "batch", 1: "total"},
        "encoder_states": {0: "batch", 1: "source"},
        "encoder_mask": {0: "batch", 1: "source"},
        "logits": {0: "batch"},
        **{n: {0: "batch", 2: "past"} for n in cache_names},
        **{n: {0: "batch", 2: "total"} for n in present_names},
    }
    _export(
        decoder,
        (
            torch.full((batch, 1), BOS_ID),
            torch.full((batch, 1), past),
            torch.ones(batch, past + 1, dtype=torch.int64),
            states,
            states_mask,
            *caches,
        ),
        version / "decoder.onnx",
        [*DECODER_INPUTS, *cache_names],
        ["logits", *present_names],
        axes,
    )
    for part in ("encoder.onnx", "decoder.onnx"):
        onnx.checker.check_model(str(version / part))
    build_tokenizer().save(str(directory / "tokenizer.json"))
    (directory / "config.toml").write_text(
        CONFIG.format(
            name=name,
            image=IMAGE,
            bos=BOS_ID,
            eos=EOS_ID,
            pad=PAD_ID,
            max_new_tokens=max_new_tokens,
            max_active=max_active,
        )
    )
    return directory


def random_inputs(rng: np.random.Generator, text_length: int | None = None) -> dict:
    """One request's preprocessed encoder inputs (batch dim 1): a question of 1..8 words."""
    length = text_length or int(rng.integers(1, 9))
    ids = np.concatenate([[CLS_ID], rng.integers(len(SPECIALS), VOCAB, length)])
    return {
        "input_ids": ids[None].astype(np.int64),
        "attention_mask": np.ones((1, length + 1), np.int64),
        "image": rng.standard_normal((1, 3, IMAGE, IMAGE)).astype(np.float32),
    }


if __name__ == "__main__":
    out = tiny_generator(Path(sys.argv[1]), *sys.argv[2:3])
    print(out)
