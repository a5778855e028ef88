"""Model inputs of a list of samples, for any subset of the modalities (numpy only).

The names are the ONNX graph's input names and the server's, in the model's order:
text is ``input_ids`` and ``attention_mask``, image is ``image``, audio is ``audio``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from fusionserve.zoo.data import Sample, normalize
from fusionserve.zoo.tokenizer import MAX_LENGTH, encode_batch

INPUTS: dict[str, tuple[str, ...]] = {
    "text": ("input_ids", "attention_mask"),
    "image": ("image",),
    "audio": ("audio",),
}


def input_names(modalities: Sequence[str]) -> list[str]:
    return [name for modality in modalities for name in INPUTS[modality]]


def model_inputs(
    tokenizer: Tokenizer | None,
    samples: Sequence[Sample],
    modalities: Sequence[str],
    max_length: int = MAX_LENGTH,
) -> dict[str, np.ndarray]:
    """Named arrays, in ``input_names(modalities)`` order."""
    out: dict[str, np.ndarray] = {}
    if "text" in modalities:
        assert tokenizer is not None, "text needs the tokenizer"
        ids, mask = encode_batch(tokenizer, [s.question for s in samples], max_length)
        out |= {"input_ids": ids, "attention_mask": mask}
    if "image" in modalities:
        out["image"] = normalize(np.stack([s.image for s in samples]))
    if "audio" in modalities:
        missing = [i for i, s in enumerate(samples) if s.audio is None]
        if missing:
            raise ValueError(f"samples {missing[:5]} have no audio")
        out["audio"] = np.stack([s.audio for s in samples]).astype(np.float32)
    return out
