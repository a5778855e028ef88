"""Iteration-level ("continuous") batching of an encoder-decoder over ONNX Runtime (issue 16).

The model follows the generation contract (``encoder.onnx`` + a one-step ``decoder.onnx``
with a key/value cache). One :class:`Engine` holds the running batch of one worker: it
admits new requests with one batched encoder pass, advances every active sequence by one
token with one decoder call per :meth:`Engine.step`, and retires a sequence the step it
finishes, so its slot is free for the next admission (Orca's iteration-level scheduling,
vLLM's continuous batching). No Redis, no threads: the caller's loop decides when to admit,
step and cancel.

Modules: ``spec`` (token ids, limits and the decoder's cache shape), ``sampling`` (greedy,
temperature, top-k, top-p with a per-request seed), ``text`` (ids to streamed text pieces,
stop strings), ``cache`` (the batch's key/value cache and encoder states) and ``engine``.
"""

from worker.generation.engine import Admission, Engine, Request, TokenEvent
from worker.generation.spec import DecoderShape, GenerationSpec, words_of

__all__ = [
    "Admission",
    "DecoderShape",
    "Engine",
    "GenerationSpec",
    "Request",
    "TokenEvent",
    "words_of",
]
