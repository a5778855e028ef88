"""The question tokenizer: word level over the template vocabulary, shipped as tokenizer.json.

Imports only `tokenizers` and numpy (via fusionserve.zoo.data): the server loads the saved JSON with
`Tokenizer.from_file` and needs neither torch nor this module's training side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

from fusionserve.zoo.data import Sample, normalize, vocabulary

PAD_TOKEN, UNK_TOKEN, CLS_TOKEN = "[PAD]", "[UNK]", "[CLS]"
PAD_ID, UNK_ID, CLS_ID = 0, 1, 2
BOS_TOKEN, EOS_TOKEN = "[BOS]", "[EOS]"
"""Generation only: the first input token of every output, and the token that ends it.
They come after every word (ids len(vocabulary) + 3 and + 4), so the words keep their ids."""
MAX_LENGTH = 32


def build_tokenizer(max_length: int = MAX_LENGTH, generation: bool = False) -> Tokenizer:
    """WordLevel tokenizer: lowercases, drops punctuation, prepends [CLS], truncates.

    "Is there a RED square?" and "is there a red square" encode the same. With
    ``generation`` it also holds the words generation writes and [BOS], [EOS] (last):
    one file for the questions and the outputs.
    """
    vocab = {PAD_TOKEN: PAD_ID, UNK_TOKEN: UNK_ID, CLS_TOKEN: CLS_ID}
    for word in vocabulary(generation):
        vocab[word] = len(vocab)
    specials = [PAD_TOKEN, UNK_TOKEN, CLS_TOKEN]
    if generation:
        for token in (BOS_TOKEN, EOS_TOKEN):
            vocab[token] = len(vocab)
        specials += [BOS_TOKEN, EOS_TOKEN]
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"[^\w\s]"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS_TOKEN} $A", special_tokens=[(CLS_TOKEN, CLS_ID)]
    )
    tokenizer.add_special_tokens(specials)
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """An output text's token ids: its words only (no [CLS]), normalised as questions are."""
    return tokenizer.encode(text, add_special_tokens=False).ids


def decode_text(tokenizer: Tokenizer, ids: Sequence[int]) -> str:
    """Generated ids -> text: the words joined by single spaces, special tokens dropped."""
    return tokenizer.decode(list(ids), skip_special_tokens=True)


def encode_batch(
    tokenizer: Tokenizer, texts: Sequence[str], max_length: int = MAX_LENGTH
) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), both int64 [N, L], right-padded to the batch's longest."""
    encodings = tokenizer.encode_batch(list(texts))
    rows = [e.ids[:max_length] for e in encodings]
    length = max((len(r) for r in rows), default=1)
    ids = np.full((len(rows), length), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def encode_samples(
    tokenizer: Tokenizer, samples: Sequence[Sample], max_length: int = MAX_LENGTH
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs for samples: (input_ids, attention_mask, normalised images [N, 3, H, W])."""
    ids, mask = encode_batch(tokenizer, [s.question for s in samples], max_length)
    images = normalize(np.stack([s.image for s in samples]))
    return ids, mask, images
