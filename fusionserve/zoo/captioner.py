"""An encoder-decoder fusion model that writes text: answers in words and descriptions.

The encoder is the zoo's text and image encoders (models.Encoders) fused by an early-fusion
transformer (models.EarlyPath), unpooled: ``encoder_states`` [B, S, dim] with
``encoder_mask`` [B, S] (the question's real tokens, then every image patch). The decoder is
a small causal transformer: self-attention over a key/value cache, cross-attention to the
encoder states, an MLP; learned positions 0..max_new_tokens.

One code path (``Captioner.run``) serves both the teacher-forced training pass (L tokens,
an empty cache, a causal mask) and the one-token step the ONNX decoder graph exports (a
cache of P columns, a mask over them), so the two give the same logits. Masked keys get
exactly zero weight: cache columns a row does not own and encoder padding change nothing.

Training draws fresh ``generation_samples`` every step (stream SeedSequence([seed, step]));
the held-out figures decode ``generation_samples(n, HELD_OUT_SEED)`` greedily.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from fusionserve.zoo.data import HELD_OUT_SEED, MODALITIES, TRAIN_SEED, Sample, generation_samples
from fusionserve.zoo.export import render_config, trace_to_onnx
from fusionserve.zoo.features import input_names, model_inputs
from fusionserve.zoo.generate_reference import (
    Decoded,
    greedy,
    ort_step,
    pad_encoder,
    past_names,
    present_names,
    score,
    session,
)
from fusionserve.zoo.models import MLP, Attention, EarlyPath, Encoders, ModelSize, parameter_count
from fusionserve.zoo.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_ID,
    build_tokenizer,
    decode_text,
    encode_text,
)
from fusionserve.zoo.train import TORCH_THREADS, _lr_factor, apply_step

MAX_NEW_TOKENS = 32
"""The cap on generated tokens; the decoder has positions for bos + MAX_NEW_TOKENS tokens."""
MAX_ACTIVE = 32
DECODER_LAYERS = 2
CAPTIONER_STEPS = 3000
CAPTIONER_SIZE: dict[str, int] = {"fusion_layers": 1}
"""ModelSize overrides for the shipped captioner (dim 64, 4 heads; one early-fusion block)."""
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
WARMUP_STEPS = 100
HELD_OUT_SAMPLES = 1000
PARITY_SAMPLES = 200
PARITY_TOLERANCE = 1e-4
ANSWER_TARGET = 0.95
DESCRIBE_TARGET = 0.90


class CachedSelfAttention(Attention):
    """Self-attention whose keys and values are a cache of earlier tokens plus `x`'s own."""

    def forward(  # type: ignore[override]
        self, x: Tensor, past_key: Tensor, past_value: Tensor, allowed: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = self.project(x, x)
        key = torch.cat([past_key, k], dim=2)
        value = torch.cat([past_value, v], dim=2)
        return self.attend(q, key, value, allowed), key, value


class DecoderBlock(nn.Module):
    """Pre-norm: cached causal self-attention, cross-attention to the encoder, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CachedSelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.cross = Attention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, dim * mlp_ratio)

    def forward(
        self,
        x: Tensor,
        past: tuple[Tensor, Tensor],
        allowed: Tensor,
        states: Tensor,
        states_mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        h, key, value = self.attn(self.norm1(x), *past, allowed)
        x = x + h
        x = x + self.cross(self.norm2(x), states, states_mask)
        return x + self.mlp(self.norm3(x)), key, value


class Captioner(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        size: ModelSize,
        modalities: Sequence[str] = MODALITIES,
        layers: int = DECODER_LAYERS,
        max_new_tokens: int = MAX_NEW_TOKENS,
    ) -> None:
        super().__init__()
        if size.dim % size.heads:
            raise ValueError("dim must divide by heads")
        self.size = size
        self.modalities = tuple(modalities)
        self.encoders = Encoders(vocab_size, size, self.modalities)
        self.fusion = EarlyPath(size, len(self.modalities))
        self.encoder_norm = nn.LayerNorm(size.dim)
        self.embed = nn.Embedding(vocab_size, size.dim)
        self.pos = nn.Embedding(max_new_tokens + 1, size.dim)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.blocks = nn.ModuleList(
            DecoderBlock(size.dim, size.heads, size.mlp_ratio) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(size.dim)
        self.lm_head = nn.Linear(size.dim, vocab_size)

    @property
    def cache_shape(self) -> tuple[int, int, int]:
        """(layers, heads, head_dim)."""
        return len(self.blocks), self.size.heads, self.size.dim // self.size.heads

    def encode(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Model inputs (input_names order) -> (encoder_states [B, S, dim], mask bool [B, S])."""
        states, mask = self.fusion.tokens(self.encoders.encode(inputs))
        return self.encoder_norm(states), mask

    def run(
        self,
        ids: Tensor,
        positions: Tensor,
        allowed: Tensor,
        states: Tensor,
        states_mask: Tensor,
        past: Sequence[tuple[Tensor, Tensor]],
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Tokens ids [B, L] at positions [B, L] after a cache of P columns per layer;
        ``allowed`` (bool, broadcast to [B, H, L, P + L]) says which keys each may see.
        Returns logits [B, L, V] and each layer's cache with the L new columns appended."""
        x = self.embed(ids) + self.pos(positions)
        present = []
        for block, layer_past in zip(self.blocks, past, strict=True):
            x, key, value = block(x, layer_past, allowed, states, states_mask)
            present.append((key, value))
        return self.lm_head(self.norm(x)), present

    def empty_cache(self, batch: int) -> list[tuple[Tensor, Tensor]]:
        _, heads, head_dim = self.cache_shape
        empty = torch.zeros(batch, heads, 0, head_dim)
        return [(empty, empty) for _ in self.blocks]

    def forward(self, *inputs: Tensor) -> Tensor:
        """Teacher forcing: model inputs, then decoder input ids [B, L] (bos first) ->
        logits [B, L, V]. Right padding of the ids is harmless: it is causally after."""
        *encoder_inputs, ids = inputs
        states, states_mask = self.encode(*encoder_inputs)
        length = ids.shape[1]
        positions = torch.arange(length).expand_as(ids)
        causal = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
        logits, _ = self.run(
            ids, positions, causal, states, states_mask, self.empty_cache(ids.shape[0])
        )
        return logits


class EncoderGraph(nn.Module):
    """encoder.onnx: the preprocessed inputs -> encoder_states, encoder_mask (int64)."""

    def __init__(self, model: Captioner) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Tensor) -> tuple[Tensor, Tensor]:
        states, mask = self.model.encode(*inputs)
        return states, mask.to(torch.int64)


class DecoderGraph(nn.Module):
    """decoder.onnx: one step with the cache, in the contract's names and order."""

    def __init__(self, model: Captioner) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        attention_mask: Tensor,
        encoder_states: Tensor,
        encoder_mask: Tensor,
        *past: Tensor,
    ) -> tuple[Tensor, ...]:
        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        allowed = (attention_mask > 0)[:, None, None, :]
        logits, present = self.model.run(
            input_ids, position_ids, allowed, encoder_states, encoder_mask > 0, pairs
        )
        return logits[:, -1], *(t for pair in present for t in pair)


def torch_step(model: Captioner) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
    """The decoder step in torch, with generate_reference.greedy's interface."""
    graph = DecoderGraph(model).eval()
    names = decoder_input_names(model)

    def step(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = graph(*(torch.from_numpy(feeds[n]) for n in names))
        return [o.numpy() for o in outputs]

    return step


def decoder_input_names(model: Captioner) -> list[str]:
    base = ["input_ids", "position_ids", "attention_mask", "encoder_states", "encoder_mask"]
    return base + past_names(model.cache_shape[0])


@dataclass(frozen=True)
class Specials:
    bos_id: int
    eos_id: int
    pad_id: int = PAD_ID

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> Specials:
        bos, eos = tokenizer.token_to_id(BOS_TOKEN), tokenizer.token_to_id(EOS_TOKEN)
        assert bos is not None and eos is not None, "not a generation tokenizer"
        return cls(bos, eos)


def teacher_batch(
    tokenizer: Tokenizer, samples: Sequence[Sample], specials: Specials
) -> tuple[Tensor, Tensor]:
    """(decoder input ids [B, L]: bos + target, labels [B, L]: target + eos, -100 padding)."""
    targets = [[*encode_text(tokenizer, s.target), specials.eos_id] for s in samples]
    length = max(len(t) for t in targets)
    inputs = np.full((len(samples), length), specials.pad_id, np.int64)
    labels = np.full((len(samples), length), -100, np.int64)
    for i, target in enumerate(targets):
        inputs[i, : len(target)] = [specials.bos_id, *target[:-1]]
        labels[i, : len(target)] = target
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def encoder_tensors(
    tokenizer: Tokenizer, samples: Sequence[Sample], modalities: Sequence[str]
) -> list[Tensor]:
    return [torch.from_numpy(a) for a in model_inputs(tokenizer, samples, modalities).values()]


@torch.no_grad()
def generate_torch(
    model: Captioner,
    tokenizer: Tokenizer,
    samples: Sequence[Sample],
    batch_size: int = 128,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[Decoded]:
    """Greedy decoding in torch (the reference loop, torch's step)."""
    specials = Specials.of(tokenizer)
    model.eval()
    step = torch_step(model)
    out: list[Decoded] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        states, mask = model.encode(*encoder_tensors(tokenizer, chunk, model.modalities))
        out += greedy(
            step,
            states.numpy(),
            mask.to(torch.int64).numpy(),
            model.cache_shape,
            specials.bos_id,
            specials.eos_id,
            max_new_tokens,
        )
    return out


def evaluate(model: Captioner, tokenizer: Tokenizer, samples: Sequence[Sample]) -> dict[str, float]:
    decoded = generate_torch(model, tokenizer, samples)
    return score([decode_text(tokenizer, d.ids) for d in decoded], samples)


def build_captioner(
    vocab_size: int,
    modalities: Sequence[str] = MODALITIES,
    layers: int = DECODER_LAYERS,
    **size_kwargs: int,
) -> Captioner:
    return Captioner(vocab_size, ModelSize(**size_kwargs), modalities, layers)


def train_captioner(
    steps: int = CAPTIONER_STEPS,
    seed: int = TRAIN_SEED,
    *,
    batch_size: int = BATCH_SIZE,
    lr: float = LEARNING_RATE,
    warmup: int = WARMUP_STEPS,
    size: dict[str, int] | None = None,
    layers: int = DECODER_LAYERS,
    held_out: int = HELD_OUT_SAMPLES,
    log: Callable[[str], None] | None = print,
    log_every: int = 250,
) -> tuple[Captioner, dict[str, float]]:
    """Teacher forcing with cross-entropy over the target tokens and eos; returns the model
    (eval mode) and its held-out figures (``score``; empty when ``held_out`` is 0)."""
    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(generation=True)
    specials = Specials.of(tokenizer)
    model = build_captioner(
        tokenizer.get_vocab_size(),
        layers=layers,
        **(CAPTIONER_SIZE if size is None else size),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, steps, warmup)
    )
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    model.train()
    started, running = time.perf_counter(), 0.0
    for step in range(steps):
        batch = generation_samples(batch_size, [seed, step])
        inputs, labels = teacher_batch(tokenizer, batch, specials)
        logits = model(*encoder_tensors(tokenizer, batch, model.modalities), inputs)
        loss = loss_fn(logits.flatten(0, 1), labels.flatten())
        running += apply_step(loss, model, optimizer, schedule)
        if log is not None and (step + 1) % log_every == 0:
            elapsed = time.perf_counter() - started
            log(f"step {step + 1}/{steps} loss {running / log_every:.4f} ({elapsed:.0f}s)")
            running = 0.0
    model.eval()
    figures: dict[str, float] = {}
    if held_out:
        figures = evaluate(model, tokenizer, generation_samples(held_out, HELD_OUT_SEED))
        if log is not None:
            log("held-out: " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    return model, figures


# --- export -------------------------------------------------------------------------------

ENCODER_FILE, DECODER_FILE, TOKENIZER_FILE = "encoder.onnx", "decoder.onnx", "tokenizer.json"


def export_encoder(model: Captioner, path: Path) -> Path:
    tokenizer = build_tokenizer(generation=True)
    samples = generation_samples(2, [HELD_OUT_SEED, 0])  # questions of different lengths
    example = model_inputs(tokenizer, samples, model.modalities)
    names = input_names(model.modalities)
    axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in names}
    for n in ("input_ids", "attention_mask"):
        if n in axes:
            axes[n][1] = "seq"
    axes |= {
        "encoder_states": {0: "batch", 1: "enc_seq"},
        "encoder_mask": {0: "batch", 1: "enc_seq"},
    }
    outputs = ["encoder_states", "encoder_mask"]
    return trace_to_onnx(EncoderGraph(model), example, path, outputs, axes)


def export_decoder(model: Captioner, path: Path) -> Path:
    # Batch 2, 3 cache columns, 5 encoder positions: no size the trace could specialise on.
    batch, past, length = 2, 3, 5
    layers, heads, head_dim = model.cache_shape
    rng = np.random.default_rng(0)
    example: dict[str, np.ndarray] = {
        "input_ids": np.array([[5], [6]], np.int64),
        "position_ids": np.array([[3], [1]], np.int64),
        "attention_mask": np.array([[1, 1, 1, 1], [0, 0, 1, 1]], np.int64),
        "encoder_states": rng.normal(size=(batch, length, model.size.dim)).astype(np.float32),
        "encoder_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int64),
    }
    for name in past_names(layers):
        example[name] = rng.normal(size=(batch, heads, past, head_dim)).astype(np.float32)
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch"},
        "position_ids": {0: "batch"},
        "attention_mask": {0: "batch", 1: "total"},
        "encoder_states": {0: "batch", 1: "enc_seq"},
        "encoder_mask": {0: "batch", 1: "enc_seq"},
        "logits": {0: "batch"},
    }
    axes |= {n: {0: "batch", 2: "past"} for n in past_names(layers)}
    axes |= {n: {0: "batch", 2: "total"} for n in present_names(layers)}
    outputs = ["logits", *present_names(layers)]
    return trace_to_onnx(DecoderGraph(model), example, path, outputs, axes)


class ParityError(AssertionError):
    """ONNX Runtime decodes differently from torch."""


def _compare(expected: Sequence[Decoded], actual: Sequence[Decoded]) -> tuple[float, int]:
    """(max abs logit difference over every step, rows whose tokens differ)."""
    worst, mismatched = 0.0, 0
    for e, a in zip(expected, actual, strict=True):
        if (e.ids, e.stopped) != (a.ids, a.stopped):
            mismatched += 1
            continue
        for x, y in zip(e.logits, a.logits, strict=True):
            worst = max(worst, float(np.abs(x - y).max()))
    return worst, mismatched


def check_parity(
    model: Captioner,
    encoder_path: Path,
    decoder_path: Path,
    samples: int = PARITY_SAMPLES,
    tolerance: float = PARITY_TOLERANCE,
) -> dict[str, float]:
    """Greedy decoding in ORT vs torch on held-out samples (tokens exact, logits within
    ``tolerance`` at every step), then continuous batching: rows that join a running
    batch late (their cache carrying masked foreign columns, filled with noise, and the
    encoder states padded) decode as they did in a batch from the start. Raises
    ParityError."""
    tokenizer = build_tokenizer(generation=True)
    specials = Specials.of(tokenizer)
    held = generation_samples(samples, HELD_OUT_SEED)
    expected = generate_torch(model, tokenizer, held, batch_size=50)
    encoder, decoder = session(encoder_path), session(decoder_path)
    step = ort_step(decoder)
    actual: list[Decoded] = []
    for start in range(0, len(held), 50):
        feeds = model_inputs(tokenizer, held[start : start + 50], model.modalities)
        states, mask = encoder.run(["encoder_states", "encoder_mask"], feeds)
        actual += greedy(
            step, states, mask, model.cache_shape, specials.bos_id, specials.eos_id, MAX_NEW_TOKENS
        )
    worst, mismatched = _compare(expected, actual)
    # Continuous batching: 8 rows, each encoded alone, joining at steps 0..7 of one batch.
    # Their position ids restart at 0 while the cache holds the others' columns.
    rows = held[:8]
    alone = [encoder.run(None, model_inputs(tokenizer, [r], model.modalities)) for r in rows]
    states, mask = pad_encoder([s[0] for s, _ in alone], [m[0] for _, m in alone])
    joined = greedy(
        step,
        states,
        mask,
        model.cache_shape,
        specials.bos_id,
        specials.eos_id,
        MAX_NEW_TOKENS,
        starts=list(range(len(rows))),
        noise=np.random.default_rng(0),
    )
    worst_joined, mismatched_joined = _compare(actual[:8], joined)
    figures = {
        "max_logit_diff": worst,
        "token_mismatches": float(mismatched),
        "joined_max_logit_diff": worst_joined,
        "joined_token_mismatches": float(mismatched_joined),
    }
    if mismatched or mismatched_joined or not max(worst, worst_joined) <= tolerance:
        raise ParityError(f"generation parity failed: {figures} (tolerance {tolerance})")
    return figures


@dataclass
class CaptionerExport:
    directory: Path
    encoder_path: Path
    decoder_path: Path
    parity: dict[str, float]
    parameters: int

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())


def export_captioner(
    model: Captioner,
    repository: Path,
    name: str = "captioner",
    version: int = 1,
    figures: dict[str, float] | None = None,
    extra: dict[str, object] | None = None,
) -> CaptionerExport:
    """Both graphs, a parity check, then the tokenizer and config.toml (task "generate")."""
    directory = Path(repository) / name
    encoder_path = export_encoder(model, directory / str(version) / ENCODER_FILE)
    decoder_path = export_decoder(model, directory / str(version) / DECODER_FILE)
    parity = check_parity(model, encoder_path, decoder_path)
    tokenizer = build_tokenizer(generation=True)
    tokenizer.save(str(directory / TOKENIZER_FILE))
    specials = Specials.of(tokenizer)
    layers, heads, head_dim = model.cache_shape
    generation: dict[str, object] = {
        "encoder": ENCODER_FILE,
        "decoder": DECODER_FILE,
        "tokenizer": TOKENIZER_FILE,
        "bos_id": specials.bos_id,
        "eos_id": specials.eos_id,
        "pad_id": specials.pad_id,
        "max_new_tokens": MAX_NEW_TOKENS,
        "max_active": MAX_ACTIVE,
    }
    facts: dict[str, object] = {f"held_out_{k}": round(v, 4) for k, v in (figures or {}).items()}
    facts |= {
        "decoder_layers": layers,
        "heads": heads,
        "head_dim": head_dim,
        "vocab_size": tokenizer.get_vocab_size(),
        "parity_max_logit_diff": float(
            f"{max(parity['max_logit_diff'], parity['joined_max_logit_diff']):.2e}"
        ),
    }
    facts |= extra or {}
    parameters = parameter_count(model)
    config = render_config(
        name,
        "encoder_decoder",
        None,
        parameters,
        model.modalities,
        facts,
        description="encoder-decoder fusion (text + image -> text): answers questions about "
        "the synthetic shapes pictures in words and describes them",
        generation=generation,
    )
    (directory / "config.toml").write_text(config)
    return CaptionerExport(directory, encoder_path, decoder_path, parity, parameters)
