"""Contrastive (CLIP-style) pre-training of the text and image encoders, and transfer.

Pre-training needs no labels: each picture of the synthetic set comes with a caption
naming its objects ("a picture of a red square and a blue circle"), and a dual encoder
learns to pull matching (image, caption) embeddings together and push the batch's other
pairs apart with the symmetric InfoNCE loss. Its encoders then start a fusion model,
whose head (and encoders) are fine-tuned on the question task: ``transfer_model``.

The dual encoder is also a product: exported to ONNX it serves image and text
embeddings and their cosine similarity (``export_dual_encoder``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fusionserve.zoo.data import MODALITIES, TRAIN_SEED, caption, generate, labels
from fusionserve.zoo.export import trace_to_onnx
from fusionserve.zoo.features import model_inputs
from fusionserve.zoo.models import (
    FusionModel,
    ImageEncoder,
    ModelSize,
    TextEncoder,
    build_model,
    masked_mean,
)
from fusionserve.zoo.tokenizer import build_tokenizer, encode_batch
from fusionserve.zoo.train import apply_step

EMBED_DIM = 64
PRETRAIN_STEPS = 1500
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
OUTPUTS = ("text_embedding", "image_embedding", "similarity")


class DualEncoder(nn.Module):
    """Text and image towers with projections into one embedding space (L2-normalised)."""

    def __init__(self, vocab_size: int, size: ModelSize, embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.size = size
        self.text = TextEncoder(vocab_size, size)
        self.image = ImageEncoder(size)
        self.text_proj = nn.Linear(size.dim, embed_dim)
        self.image_proj = nn.Linear(size.dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        mask = attention_mask > 0
        pooled = masked_mean(self.text(input_ids, mask), mask)
        return nn.functional.normalize(self.text_proj(pooled), dim=-1)

    def embed_image(self, image: Tensor) -> Tensor:
        return nn.functional.normalize(self.image_proj(self.image(image).mean(dim=1)), dim=-1)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, image: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(text embeddings, image embeddings, cosine similarity of each row's pair)."""
        text = self.embed_text(input_ids, attention_mask)
        image_ = self.embed_image(image)
        return text, image_, (text * image_).sum(dim=-1)


def caption_batch(n: int, seed: Sequence[int]) -> tuple[list[str], np.ndarray]:
    """``n`` (caption, picture) pairs: the pictures of the question set, no labels used."""
    samples = generate(n, seed)
    rng = np.random.default_rng([*seed, 7])
    return [caption(s.objects, rng) for s in samples], np.stack([s.image for s in samples])


def info_nce(text: Tensor, image: Tensor, scale: Tensor) -> Tensor:
    """Symmetric InfoNCE: each caption must pick its picture out of the batch, and back."""
    logits = scale.exp().clamp(max=100) * image @ text.T
    targets = torch.arange(len(text))
    return (
        nn.functional.cross_entropy(logits, targets)
        + nn.functional.cross_entropy(logits.T, targets)
    ) / 2


def pretrain(
    steps: int = PRETRAIN_STEPS,
    seed: int = TRAIN_SEED,
    *,
    size: dict[str, int] | None = None,
    batch_size: int = BATCH_SIZE,
    log: Callable[[str], None] | None = print,
    log_every: int = 250,
) -> DualEncoder:
    """Train the dual encoder on fresh caption batches (streams disjoint from fine-tuning)."""
    from fusionserve.zoo.data import normalize

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = DualEncoder(tokenizer.get_vocab_size(), ModelSize(**(size or {})))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LEARNING_RATE, total_steps=steps, pct_start=0.05
    )
    model.train()
    started, running = time.perf_counter(), 0.0
    for step in range(steps):
        captions, images = caption_batch(batch_size, [seed, 1_000_000 + step])
        ids, mask = encode_batch(tokenizer, captions)
        text, image, _ = model(
            torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(normalize(images))
        )
        running += apply_step(info_nce(text, image, model.logit_scale), model, optimizer, schedule)
        if log is not None and (step + 1) % log_every == 0:
            elapsed = time.perf_counter() - started
            log(f"pretrain step {step + 1}/{steps} loss {running / log_every:.4f} ({elapsed:.0f}s)")
            running = 0.0
    return model.eval()


@torch.no_grad()
def retrieval_accuracy(model: DualEncoder, n: int = 256, seed: int = 99) -> float:
    """How often a picture's own caption is the nearest of ``n`` captions (chance: 1/n)."""
    from fusionserve.zoo.data import HELD_OUT_SEED, normalize

    captions, images = caption_batch(n, [HELD_OUT_SEED, seed])
    ids, mask = encode_batch(build_tokenizer(), captions)
    text, image, _ = model(
        torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(normalize(images))
    )
    return float(((image @ text.T).argmax(dim=1) == torch.arange(n)).float().mean())


def transfer_model(
    encoders: DualEncoder | None,
    strategy: str = "cross_attention",
    modalities: Sequence[str] = MODALITIES,
) -> FusionModel:
    """A fresh fusion model whose text and image encoders start from ``encoders``."""
    vocab = build_tokenizer().get_vocab_size()
    size = encoders.size.__dict__ if encoders is not None else {}
    model = build_model(strategy, len(labels(modalities)), vocab, modalities, **size)
    if encoders is not None:
        model.text.load_state_dict(encoders.text.state_dict())  # type: ignore[union-attr]
        model.image.load_state_dict(encoders.image.state_dict())  # type: ignore[union-attr]
    return model


def export_dual_encoder(model: DualEncoder, path: Path) -> Path:
    """ONNX with inputs (input_ids, attention_mask, image) and the three OUTPUTS."""
    model.eval()
    samples = generate(2, [TRAIN_SEED, 5])
    example = model_inputs(build_tokenizer(), samples, MODALITIES)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    axes |= {"image": {0: "batch"}} | {o: {0: "batch"} for o in OUTPUTS}
    return trace_to_onnx(model, example, path, list(OUTPUTS), axes)


EMBEDDING_DESCRIPTION = (
    "CLIP-style dual encoder: L2-normalised text and image embeddings and their cosine "
    "similarity, pre-trained contrastively on captions of the synthetic shapes set"
)


def export_embedding_model(
    model: DualEncoder, repository: Path, name: str, version: int = 1, tolerance: float = 1e-4
) -> tuple[Path, float]:
    """Write the dual encoder as a served model; returns (model path, worst parity diff)."""
    import onnxruntime as ort

    from fusionserve.zoo.export import render_config
    from fusionserve.zoo.models import parameter_count

    directory = Path(repository) / name
    path = export_dual_encoder(model, directory / str(version) / "model.onnx")
    feeds = model_inputs(build_tokenizer(), generate(7, [TRAIN_SEED, 6]), MODALITIES)
    with torch.no_grad():
        expected = [t.numpy() for t in model(*(torch.from_numpy(a) for a in feeds.values()))]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUTS), feeds)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(got, expected, strict=True))
    if worst > tolerance:
        raise AssertionError(f"ONNX Runtime vs torch max abs diff {worst} exceeds {tolerance}")
    build_tokenizer().save(str(directory / "tokenizer.json"))
    retrieval = retrieval_accuracy(model)
    config = render_config(
        name,
        "dual_encoder",
        None,
        parameter_count(model),
        MODALITIES,
        {"caption_retrieval_top1_of_256": round(retrieval, 4)},
        description=EMBEDDING_DESCRIPTION,
    )
    (directory / "config.toml").write_text(config)
    return path, worst
