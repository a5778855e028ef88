"""Text and image encoders and four ways to fuse them, all exportable to ONNX.

Every model maps (input_ids int64 [N, L], attention_mask int64 [N, L], image float32
[N, 3, H, W]) to logits [N, num_labels].  The server right-pads a batch to its longest
question, so outputs must not depend on padding: attention is written by hand with a key
padding mask wherever text is attended to, text is pooled with a masked mean, and nothing
uses the nested-tensor fast paths that the ONNX exporter would not reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

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
        q = self.q(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # N H L Dh
        k, v = self.kv(context).chunk(2, dim=-1)
        k = k.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # N H S Dh
        v = v.unflatten(-1, (self.heads, -1)).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) * self.scale
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], _MASKED)
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


class FusionModel(nn.Module):
    """Shared encoders and classifier head; subclasses define `fuse` -> pooled [N, dim]."""

    strategy = ""

    def __init__(self, num_labels: int, vocab_size: int, size: ModelSize) -> None:
        super().__init__()
        self.size = size
        self.num_labels = num_labels
        self.vocab_size = vocab_size
        self.text = TextEncoder(vocab_size, size)
        self.image = ImageEncoder(size)
        self.head = nn.Sequential(nn.LayerNorm(size.dim), MLP(size.dim, size.dim, num_labels))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, image: Tensor) -> Tensor:
        mask = attention_mask > 0
        return self.head(self.fuse(self.text(input_ids, mask), mask, self.image(image)))

    def fuse(self, text: Tensor, mask: Tensor, image: Tensor) -> Tensor:
        raise NotImplementedError


class EarlyPath(nn.Module):
    """One transformer over [text tokens; image patches] tagged with modality embeddings."""

    def __init__(self, size: ModelSize) -> None:
        super().__init__()
        self.modality = nn.Parameter(torch.randn(2, size.dim) * 0.02)
        self.blocks = _stack(size, size.fusion_layers)

    def forward(self, text: Tensor, mask: Tensor, image: Tensor) -> Tensor:
        x = torch.cat([text + self.modality[0], image + self.modality[1]], dim=1)
        joint_mask = torch.cat([mask, torch.ones_like(image[..., 0], dtype=torch.bool)], dim=1)
        for block in self.blocks:
            x = block(x, joint_mask)
        return masked_mean(x, joint_mask)


class CrossPath(nn.Module):
    """Text queries attend to image tokens, then to each other; pooled over real tokens."""

    def __init__(self, size: ModelSize) -> None:
        super().__init__()
        self.blocks = _stack(size, size.fusion_layers, cross=True)

    def forward(self, text: Tensor, mask: Tensor, image: Tensor) -> Tensor:
        x = text
        for block in self.blocks:
            x = block(x, mask, context=image)
        return masked_mean(x, mask)


class EarlyFusion(FusionModel):
    strategy = "early"

    def __init__(self, num_labels: int, vocab_size: int, size: ModelSize) -> None:
        super().__init__(num_labels, vocab_size, size)
        self.path = EarlyPath(size)

    def fuse(self, text: Tensor, mask: Tensor, image: Tensor) -> Tensor:
        return self.path(text, mask, image)


class LateFusion(FusionModel):
    """Each modality pooled on its own; only the MLP sees both."""

    strategy = "late"

    def __init__(self, num_labels: int, vocab_size: int, size: ModelSize) -> None:
        super().__init__(num_labels, vocab_size, size)
        self.mix = MLP(2 * size.dim, 2 * size.dim, size.dim)

    def fuse(self, text: Tensor, mask: Tensor, image: Tensor) -> Tensor:
        return self.mix(torch.cat([masked_mean(text, mask), image.mean(dim=1)], dim=-1))


class CrossAttentionFusion(FusionModel):
    strategy = "cross_attention"

    def __init__(self, num_labels: int, vocab_size: int, size: ModelSize) -> None:
        super().__init__(num_labels, vocab_size, size)
        self.path = CrossPath(size)

    def fuse(self, text: Tensor, mask: Tensor, image: Tensor) -> Tensor:
        return self.path(text, mask, image)


class GatedHybridFusion(FusionModel):
    """Early and cross-attention paths mixed per feature by a learned sigmoid gate."""

    strategy = "gated_hybrid"

    def __init__(self, num_labels: int, vocab_size: int, size: ModelSize) -> None:
        super().__init__(num_labels, vocab_size, size)
        self.early = EarlyPath(size)
        self.cross = CrossPath(size)
        self.gate = nn.Linear(2 * size.dim, size.dim)

    def fuse(self, text: Tensor, mask: Tensor, image: Tensor) -> Tensor:
        early = self.early(text, mask, image)
        cross = self.cross(text, mask, image)
        gate = torch.sigmoid(self.gate(torch.cat([early, cross], dim=-1)))
        return gate * early + (1 - gate) * cross


_CLASSES: dict[str, type[FusionModel]] = {
    cls.strategy: cls for cls in (EarlyFusion, LateFusion, CrossAttentionFusion, GatedHybridFusion)
}


def build_model(strategy: str, num_labels: int, vocab_size: int, **size_kwargs: int) -> FusionModel:
    """A freshly initialised model of the given strategy (see STRATEGIES)."""
    if strategy not in _CLASSES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    size = ModelSize(**size_kwargs)
    if size.dim % size.heads or size.image_size % size.patch_size or size.patch_size % 4:
        raise ValueError("dim must divide by heads, image_size by patch_size (a multiple of 4)")
    return _CLASSES[strategy](num_labels, vocab_size, size)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
