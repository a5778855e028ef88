"""A model's configuration (``config.toml``) and signature, as both sides see them.

Workers read ``config.toml`` and the ONNX graph, then publish both to Redis; API
processes validate requests against what was published and need no model files.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# KServe V2 / Triton datatype names <-> numpy dtype names.
V2_TO_NUMPY = {
    "BOOL": "bool",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
NUMPY_TO_V2 = {v: k for k, v in V2_TO_NUMPY.items()}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchingConfig(_Strict):
    max_batch_size: int = Field(64, ge=1, le=4096)
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000)
    preferred_batch_sizes: list[int] = []
    priority_levels: int = Field(2, ge=1, le=8)
    default_timeout_ms: int = Field(30_000, ge=1)
    max_queue_size: int = Field(10_000, ge=1)
    latency_slo_ms: float | None = Field(
        None, gt=0, description="a p99 target: the worker then tunes its cap and delay online"
    )
    bulk_batch_size: int = Field(
        16,
        ge=1,
        description="rows per bulk-lane entry (at most max_batch_size): an online request "
        "may wait behind one such batch, so fewer rows protect online latency (on a GPU, "
        "where a batch of max_batch_size takes about as long as one row, raise it)",
    )

    @property
    def bulk_level(self) -> int:
        """The bulk lane: one level below every online priority, fed only by batch jobs."""
        return self.priority_levels + 1

    @property
    def online_levels(self) -> range:
        return range(1, self.priority_levels + 1)

    @property
    def all_levels(self) -> range:
        """Every stream a worker reads: the online levels, then the bulk lane."""
        return range(1, self.bulk_level + 1)


class InstancesConfig(_Strict):
    """Where and how a worker runs the model (Triton's ``instance_group``, per worker)."""

    count: int = Field(1, ge=1, le=64)
    device: int = Field(
        0, ge=0, description="GPU ordinal (within CUDA_VISIBLE_DEVICES) for the CUDA session"
    )
    gpu_memory_mb: int | None = Field(
        None, ge=64, description="cap on the CUDA memory arena of this model's session"
    )
    warmup: bool = Field(
        True, description="run each preferred batch size once at load, before serving"
    )


class TextPreprocessing(_Strict):
    tokenizer: str = "tokenizer.json"
    ids_input: str = "input_ids"
    mask_input: str | None = "attention_mask"
    max_length: int = Field(32, ge=1)
    pad_id: int = 0


class ImagePreprocessing(_Strict):
    input: str = "image"
    height: int = Field(ge=1, le=4096)
    width: int = Field(ge=1, le=4096)
    mean: list[float] = [0.0, 0.0, 0.0]
    std: list[float] = [1.0, 1.0, 1.0]
    layout: Literal["NCHW", "NHWC"] = "NCHW"


class AudioPreprocessing(_Strict):
    """Raw ``audio`` (a WAV file): decoded, mixed to mono, resampled to ``sample_rate``,
    then cut or zero-padded to ``samples``. The model computes its own spectrogram."""

    input: str = "audio"
    sample_rate: int = Field(ge=1000, le=192_000)
    samples: int = Field(ge=1, le=10_000_000)


class Preprocessing(_Strict):
    text: TextPreprocessing | None = None
    image: ImagePreprocessing | None = None
    audio: AudioPreprocessing | None = None

    def pad_values(self) -> dict[str, int]:
        """What ragged inputs are padded with when rows are stacked (the text's pad id)."""
        return {self.text.ids_input: self.text.pad_id} if self.text else {}

    def raw_modalities(self) -> list[str]:
        """The raw fields (``text``, ``image``, ``audio``) this model can preprocess."""
        return [m for m in ("text", "image", "audio") if getattr(self, m) is not None]


class Postprocessing(_Strict):
    label_output: str | None = None
    labels: list[str] = []
    top_k: int = Field(5, ge=1)


class VersionPolicy(_Strict):
    """Which version directories to serve (Triton's ``version_policy``): one of the three."""

    latest: int | None = Field(None, ge=1)
    all: bool = False
    specific: list[int] | None = None

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of those on disk, ascending."""
        ordered = sorted(available)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific]
        return ordered[-(self.latest or 1) :]


class GenerationConfig(_Strict):
    """``[generation]``: an encoder-decoder that writes text (``task = "generate"``).

    Each version directory holds the two graphs: the encoder (the preprocessed request
    -> ``encoder_states``, ``encoder_mask``) and one decoder step over a key/value cache.
    ``tokenizer`` maps output ids back to words; ``max_new_tokens`` is both the default
    and the cap of a request, ``max_active`` the sequences one worker runs at once.
    """

    encoder: str = "encoder.onnx"
    decoder: str = "decoder.onnx"
    tokenizer: str = "tokenizer.json"
    bos_id: int = Field(ge=0)
    eos_id: int = Field(ge=0)
    pad_id: int = Field(0, ge=0)
    max_new_tokens: int = Field(32, ge=1, le=4096)
    max_active: int = Field(32, ge=1, le=1024)
    admission: Literal["continuous", "request"] = "continuous"
    """``continuous``: waiting requests join the running batch at every step (iteration-level
    batching); ``request``: only once the batch has emptied (request-level, for comparison)."""


class ModelConfig(BaseModel):
    """``config.toml``; unknown top-level tables (e.g. ``[training]``) are kept as information."""

    model_config = ConfigDict(extra="allow")

    name: str
    platform: str = "onnxruntime_onnx"
    description: str = ""
    modalities: list[Literal["text", "image", "audio"]] = []
    """What the model needs to answer (informational; its inputs are what is enforced)."""
    batching: BatchingConfig = BatchingConfig()
    instances: InstancesConfig = InstancesConfig()
    preprocessing: Preprocessing = Preprocessing()
    postprocessing: Postprocessing = Postprocessing()
    version_policy: VersionPolicy = VersionPolicy()
    task: Literal["classify", "generate"] = "classify"
    generation: GenerationConfig | None = None

    @model_validator(mode="after")
    def _generation_section(self) -> ModelConfig:
        if (self.task == "generate") != (self.generation is not None):
            raise ValueError('task = "generate" and a [generation] section go together')
        return self

    @property
    def graph_files(self) -> tuple[str, ...]:
        """The ONNX files each version directory must hold."""
        if self.generation is not None:
            return (self.generation.encoder, self.generation.decoder)
        return ("model.onnx",)

    @classmethod
    def load(cls, path: Path) -> ModelConfig:
        with path.open("rb") as fh:
            return cls.model_validate(tomllib.load(fh))


class TensorSpec(BaseModel):
    """One input or output of a model; ``-1`` marks a variable dimension (the batch dim first)."""

    name: str
    datatype: str
    shape: list[int]
    dim_names: list[str | None] = []
    """Symbolic names of the dims (from the ONNX graph): inputs sharing one must agree on it."""

    @field_validator("datatype")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in V2_TO_NUMPY:
            raise ValueError(f"unknown datatype {value}")
        return value

    @property
    def numpy_dtype(self) -> str:
        return V2_TO_NUMPY[self.datatype]


class ModelMeta(BaseModel):
    """What a worker publishes about a loaded model."""

    name: str
    versions: list[str]
    """Versions being served (new work may go to them)."""
    available: list[str] = []
    """Version directories in the worker's repository."""
    generation: int = 0
    """The last repository order (control generation) the publishing worker applied."""
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    config: ModelConfig
    tokenizer_json: str | None = None
