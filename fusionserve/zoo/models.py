"""Text, image and audio encoders and four ways to fuse any subset of them, all exportable
to ONNX.

A model over modalities (a subset of text, image, audio, in that order) takes their
inputs in that order: text as (input_ids int64 [N, L], attention_mask int64 [N, L]),
image as float32 [N, 3, H, W], audio as a float32 waveform [N, samples]; it returns
logits [N, num_labels]. The audio encoder computes its log-mel spectrogram itself (a
strided conv1d with fixed DFT kernels, then a mel matrix), so the graph takes raw
samples and the server only decodes and resamples WAV.

The server right-pads a batch to its longest question, so outputs must not depend on
padding: attention is written by hand with a key padding mask wherever text is attended
to, text is pooled with a masked mean, and nothing uses the nested-tensor fast paths that
the ONNX exporter would not reproduce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fusionserve.zoo.data import AUDIO_SAMPLES, MODALITIES, SAMPLE_RATE

STRATEGIES = ("early", "late", "cross_attention", "gated_hybrid")
_MASKED = -1e9  # added to scores of padding keys; exp() of it underflows to exactly 0


@dataclass(frozen=True)
class ModelSize:
    """Size knobs shared by all strategies (build_model's **size_kwargs)."""

    dim: int = 64
    heads: int = 4
    mlp_ratio: int = 2
    text_layers: int = 1
    image_layers: int = 2
    fusion_layers: int = 2
    patch_size: int = 8
    stem_channels: int = 16  # 0: a single patchify conv; else a small conv stem first
    image_size: int = 64
    max_length: int = 32
    audio_layers: int = 1
    n_fft: int = 256
    hop: int = 128
    n_mels: int = 32
    audio_samples: int = AUDIO_SAMPLES
    sample_rate: int = SAMPLE_RATE


class Attention(nn.Module):
    """Multi-head attention of `x` over `context`; `key_mask` (bool [N, S]) marks real keys."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor | None = None) -> Tensor:
        q, k, v = self.project(x, context)
        allowed = None if key_mask is None else key_mask[:, None, None, :]
        return self.attend(q, k, v, allowed)

    def split(self, x: Tensor) -> Tensor:
        """[N, L, dim] -> [N, H, L, Dh]."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def project(self, x: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries of `x`, keys and values of `context`, each [N, H, length, Dh]."""
        k, v = self.kv(context).chunk(2, dim=-1)
        return self.split(self.q(x)), self.split(k), self.split(v)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None) -> Tensor:
        """Softmax attention, then the output projection: [N, L, dim]. ``allowed`` (bool,
        broadcast to [N, H, L, S]) marks the keys a query may see; the others get exactly
        zero weight, so what they hold has no effect (as long as it is finite)."""
        scores = (q @ k.transpose(-1, -2)) * self.scale
        if allowed is not None:
            scores = scores.masked_fill(~allowed, _MASKED)
        weights = scores.softmax(dim=-1)
        return self.out((weights @ v).transpose(1, 2).flatten(-2))


class MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim))


class Block(nn.Module):
    """Pre-norm transformer block; with `cross=True` it first attends to a context sequence."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, cross: bool = False) -> None:
        super().__init__()
        self.cross = Attention(dim, heads) if cross else None
        self.norm_q = nn.LayerNorm(dim) if cross else None
        self.norm_ctx = nn.LayerNorm(dim) if cross else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, dim * mlp_ratio)

    def forward(self, x: Tensor, mask: Tensor | None, context: Tensor | None = None) -> Tensor:
        if self.cross is not None and self.norm_q is not None and self.norm_ctx is not None:
            assert context is not None, "a cross-attention block needs a context"
            x = x + self.cross(self.norm_q(x), self.norm_ctx(context))
        h = self.norm1(x)
        x = x + self.attn(h, h, mask)
        return x + self.mlp(self.norm2(x))


def _stack(size: ModelSize, depth: int, cross: bool = False) -> nn.ModuleList:
    return nn.ModuleList(Block(size.dim, size.heads, size.mlp_ratio, cross) for _ in range(depth))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the positions where `mask` (bool [N, L]) is set; padding contributes 0."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class TextEncoder(nn.Module):
    """Token embedding + learned positions + transformer blocks with a key padding mask."""

    def __init__(self, vocab_size: int, size: ModelSize) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, size.dim)
        self.pos = nn.Parameter(torch.randn(1, size.max_length, size.dim) * 0.02)
        self.blocks = _stack(size, size.text_layers)
        self.norm = nn.LayerNorm(size.dim)

    def forward(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        x = self.embed(input_ids) + self.pos[:, : input_ids.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


def _patch_embedding(size: ModelSize) -> nn.Module:
    """Conv patchify.  The optional stem (two stride-2 3x3 convs, then the rest of the patch)
    sees edges across patch borders, which makes shapes far quicker to learn than raw patches.
    """
    if not size.stem_channels:
        return nn.Conv2d(3, size.dim, kernel_size=size.patch_size, stride=size.patch_size)
    c = size.stem_channels
    rest = size.patch_size // 4
    return nn.Sequential(
        nn.Conv2d(3, c, kernel_size=3, stride=2, padding=1),
        nn.GELU(),
        nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1),
        nn.GELU(),
        nn.Conv2d(2 * c, size.dim, kernel_size=rest, stride=rest),
    )


class ImageEncoder(nn.Module):
    """ViT-style: conv patch embedding, learned positions, transformer blocks."""

    def __init__(self, size: ModelSize) -> None:
        super().__init__()
        patches = (size.image_size // size.patch_size) ** 2
        self.patch = _patch_embedding(size)
        self.pos = nn.Parameter(torch.randn(1, patches, size.dim) * 0.02)
        self.blocks = _stack(size, size.image_layers)
        self.norm = nn.LayerNorm(size.dim)

    def forward(self, image: Tensor) -> Tensor:
        x = self.patch(image).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            x = block(x, None)
        return self.norm(x)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> np.ndarray:
    """Triangular mel filters [n_fft // 2 + 1, n_mels] (the HTK mel scale)."""

    def mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges = 700.0 * (10 ** (np.linspace(0, mel(np.array(sample_rate / 2)), n_mels + 2) / 2595) - 1)
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


class AudioEncoder(nn.Module):
    """Waveform -> log-mel frames -> transformer tokens; the spectrogram is in the graph.

    The STFT is a conv1d whose fixed kernels are Hann-windowed cosines and sines, so the
    exported ONNX needs only Conv, MatMul and Log (no STFT operator, any opset >= 11).
    """

    def __init__(self, size: ModelSize) -> None:
        super().__init__()
        n = np.arange(size.n_fft)
        k = np.arange(size.n_fft // 2 + 1)[:, None]
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / size.n_fft)
        angle = 2 * np.pi * k * n / size.n_fft
        kernels = np.concatenate([np.cos(angle) * window, np.sin(angle) * window])
        self.register_buffer("dft", torch.from_numpy(kernels[:, None, :].astype(np.float32)))
        mel = mel_filterbank(size.n_fft, size.n_mels, size.sample_rate)
        self.register_buffer("mel", torch.from_numpy(mel))
        self.hop = size.hop
        frames = (size.audio_samples - size.n_fft) // size.hop + 1
        self.proj = nn.Linear(size.n_mels, size.dim)
        self.pos = nn.Parameter(torch.randn(1, frames, size.dim) * 0.02)
        self.blocks = _stack(size, size.audio_layers)
        self.norm = nn.LayerNorm(size.dim)

    def log_mel(self, audio: Tensor) -> Tensor:
        """[N, samples] -> [N, frames, n_mels]."""
        spectrum = nn.functional.conv1d(audio.unsqueeze(1), self.dft, stride=self.hop)
        real, imag = spectrum.chunk(2, dim=1)
        power = (real * real + imag * imag).transpose(1, 2)
        return torch.log(power @ self.mel + 1e-6)

    def forward(self, audio: Tensor) -> Tensor:
        x = self.proj(self.log_mel(audio)) + self.pos
        for block in self.blocks:
            x = block(x, None)
        return self.norm(x)


class Encoders(nn.Module):
    """One encoder per modality (text, image, audio: those in ``modalities``)."""

    def __init__(
        self, vocab_size: int, size: ModelSize, modalities: Sequence[str] = MODALITIES
    ) -> None:
        super().__init__()
        self.size = size
        self.vocab_size = vocab_size
        self.modalities = tuple(modalities)
        self.text = TextEncoder(vocab_size, size) if "text" in modalities else None
        self.image = ImageEncoder(size) if "image" in modalities else None
        self.audio = AudioEncoder(size) if "audio" in modalities else None

    def encode(self, inputs: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Each modality's tokens and mask, reading ``inputs`` in the model's input order."""
        encoded, at = [], 0
        for modality in self.modalities:
            if modality == "text" and self.text is not None:
                mask = inputs[at + 1] > 0
                encoded.append((self.text(inputs[at], mask), mask))
                at += 2
                continue
            encoder = self.image if modality == "image" else self.audio
            assert encoder is not None
            tokens = encoder(inputs[at])
            encoded.append((tokens, torch.ones_like(tokens[..., 0], dtype=torch.bool)))
            at += 1
        return encoded


class FusionModel(Encoders):
    """Shared encoders and classifier head; subclasses define `fuse` -> pooled [N, dim].

    ``fuse`` gets one (tokens [N, S, dim], real-token mask bool [N, S]) per modality, in
    the model's modality order (text first when present: it asks the question).
    """

    strategy = ""

    def __init__(
        self,
        num_labels: int,
        vocab_size: int,
        size: ModelSize,
        modalities: Sequence[str] = MODALITIES,
    ) -> None:
        super().__init__(vocab_size, size, modalities)
        self.num_labels = num_labels
        self.head = nn.Sequential(nn.LayerNorm(size.dim), MLP(size.dim, size.dim, num_labels))

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.head(self.fuse(self.encode(inputs)))

    def fuse(self, encoded: list[tuple[Tensor, Tensor]]) -> Tensor:
        raise NotImplementedError


class EarlyPath(nn.Module):
    """One transformer over every modality's tokens, each tagged with its modality embedding."""

    def __init__(self, size: ModelSize, modalities: int) -> None:
        super().__init__()
        self.modality = nn.Parameter(torch.randn(modalities, size.dim) * 0.02)
        self.blocks = _stack(size, size.fusion_layers)

    def forward(self, encoded: list[tuple[Tensor, Tensor]]) -> Tensor:
        return masked_mean(*self.tokens(encoded))

    def tokens(self, encoded: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """The joint sequence after the blocks, unpooled: ([N, S, dim], mask bool [N, S])."""
        x = torch.cat([t + self.modality[i] for i, (t, _) in enumerate(encoded)], dim=1)
        joint_mask = torch.cat([m for _, m in encoded], dim=1)
        for block in self.blocks:
            x = block(x, joint_mask)
        return x, joint_mask


class CrossPath(nn.Module):
    """The first modality's tokens (the question) attend to all the others, then to each
    other; pooled over its real tokens."""

    def __init__(self, size: ModelSize, modalities: int) -> None:
        super().__init__()
        self.modality = nn.Parameter(torch.randn(max(modalities - 1, 1), size.dim) * 0.02)
        self.blocks = _stack(size, size.fusion_layers, cross=True)

    def forward(self, encoded: list[tuple[Tensor, Tensor]]) -> Tensor:
        (x, mask), others = encoded[0], encoded[1:]
        context = torch.cat([t + self.modality[i] for i, (t, _) in enumerate(others)], dim=1)
        for block in self.blocks:
            x = block(x, mask, context=context)
        return masked_mean(x, mask)


class EarlyFusion(FusionModel):
    strategy = "early"

    def __init__(self, num_labels: int, vocab_size: int, size: ModelSize, modalities) -> None:
        super().__init__(num_labels, vocab_size, size, modalities)
        self.path = EarlyPath(size, len(self.modalities))

    def fuse(self, encoded: list[tuple[Tensor, Tensor]]) -> Tensor:
        return self.path(encoded)


class LateFusion(FusionModel):
    """Each modality pooled on its own; only the MLP sees them together."""

    strategy = "late"

    def __init__(self, num_labels: int, vocab_size: int, size: ModelSize, modalities) -> None:
        super().__init__(num_labels, vocab_size, size, modalities)
        width = len(self.modalities) * size.dim
        self.mix = MLP(width, width, size.dim)

    def fuse(self, encoded: list[tuple[Tensor, Tensor]]) -> Tensor:
        return self.mix(torch.cat([masked_mean(t, m) for t, m in encoded], dim=-1))


class CrossAttentionFusion(FusionModel):
    strategy = "cross_attention"

    def __init__(self, num_labels: int, vocab_size: int, size: ModelSize, modalities) -> None:
        super().__init__(num_labels, vocab_size, size, modalities)
        self.path = CrossPath(size, len(self.modalities))

    def fuse(self, encoded: list[tuple[Tensor, Tensor]]) -> Tensor:
        return self.path(encoded)


class GatedHybridFusion(FusionModel):
    """Early and cross-attention paths mixed per feature by a learned sigmoid gate."""

    strategy = "gated_hybrid"

    def __init__(self, num_labels: int, vocab_size: int, size: ModelSize, modalities) -> None:
        super().__init__(num_labels, vocab_size, size, modalities)
        self.early = EarlyPath(size, len(self.modalities))
        self.cross = CrossPath(size, len(self.modalities))
        self.gate = nn.Linear(2 * size.dim, size.dim)

    def fuse(self, encoded: list[tuple[Tensor, Tensor]]) -> Tensor:
        early = self.early(encoded)
        cross = self.cross(encoded)
        gate = torch.sigmoid(self.gate(torch.cat([early, cross], dim=-1)))
        return gate * early + (1 - gate) * cross


_CLASSES: dict[str, type[FusionModel]] = {
    cls.strategy: cls for cls in (EarlyFusion, LateFusion, CrossAttentionFusion, GatedHybridFusion)
}


def build_model(
    strategy: str,
    num_labels: int,
    vocab_size: int,
    modalities: Sequence[str] = MODALITIES,
    **size_kwargs: int,
) -> FusionModel:
    """A freshly initialised model of the given strategy (see STRATEGIES) over modalities."""
    if strategy not in _CLASSES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    order = [m for m in ("text", "image", "audio") if m in modalities]
    if len(order) < 2 or len(order) != len(set(modalities)):
        raise ValueError(f"modalities must be two or three of text, image, audio; got {modalities}")
    size = ModelSize(**size_kwargs)
    if size.dim % size.heads or size.image_size % size.patch_size or size.patch_size % 4:
        raise ValueError("dim must divide by heads, image_size by patch_size (a multiple of 4)")
    return _CLASSES[strategy](num_labels, vocab_size, size, order)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
