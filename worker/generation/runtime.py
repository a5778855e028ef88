"""One version of a generation model, loaded: its two sessions, its words, its engine.

It stands where a classifier's ``ModelRuntime`` stands (``worker.versions`` loads either,
by the config's task) and is published the same way: its ``inputs`` are the encoder's,
which is what a request's text, image and audio are preprocessed into.
"""

from __future__ import annotations

import logging

from tokenizers import Tokenizer

from batching.model_config import TensorSpec
from worker.generation.engine import Admission, Engine
from worker.generation.spec import GenerationSpec, words_of
from worker.repository import ModelFiles
from worker.runtime import open_session, spec_of

log = logging.getLogger(__name__)


class GenerationRuntime:
    def __init__(self, files: ModelFiles, version: int | None = None) -> None:
        config = files.config.generation
        if config is None:
            raise ValueError(f"model {files.name} has no [generation] section")
        self.files = files
        self.version = version or files.latest
        directory = files.directory / str(self.version)
        instances = files.config.instances
        self.encoder = open_session(directory / config.encoder, instances)
        self.decoder = open_session(directory / config.decoder, instances)
        self.providers = self.encoder.get_providers()
        self.inputs: list[TensorSpec] = [spec_of(i) for i in self.encoder.get_inputs()]
        self.outputs: list[TensorSpec] = []
        """Text, not tensors: ``/v1/.../generate`` answers it."""
        tokenizer = Tokenizer.from_file(str(files.directory / config.tokenizer))
        special = (config.bos_id, config.eos_id, config.pad_id)
        self.spec = GenerationSpec(
            bos_id=config.bos_id,
            eos_id=config.eos_id,
            pad_id=config.pad_id,
            max_new_tokens=config.max_new_tokens,
            max_active=config.max_active,
            words=words_of(tokenizer, special),
        )
        self.engine = Engine(
            self.encoder,
            self.decoder,
            self.spec,
            admission=Admission(config.admission),
            pad_values=files.config.preprocessing.pad_values(),
        )
        log.info(
            "generation model %s v%d on %s: up to %d sequences, %d new tokens each",
            files.name,
            self.version,
            self.providers[0],
            config.max_active,
            config.max_new_tokens,
        )
