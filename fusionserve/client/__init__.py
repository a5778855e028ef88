"""Python SDK for fusionserve: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

>>> with Client("http://127.0.0.1:8000") as fs:
...     job = fs.submit("demo", text="is there a red square?", image=png_bytes)
...     print(fs.wait(job, timeout=10).top_label)
...     print(text_of(fs.stream("captioner", image=png_bytes)))  # a generative model
"""

from fusionserve.client._generate import text_of
from fusionserve.client.aio import AsyncClient
from fusionserve.client.errors import (
    BadRequest,
    ConnectionFailed,
    Forbidden,
    FusionServeError,
    GenerationFailed,
    InvalidInput,
    NotCancellable,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    RequestTimeout,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from fusionserve.client.sync import Client
from fusionserve.client.types import (
    Generation,
    GenerationEvent,
    GenerationTimings,
    JobError,
    JobResult,
    ModelInfo,
    TensorSpec,
    Timings,
)

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Client",
    "ConnectionFailed",
    "Forbidden",
    "FusionServeError",
    "Generation",
    "GenerationEvent",
    "GenerationFailed",
    "GenerationTimings",
    "InvalidInput",
    "JobError",
    "JobResult",
    "ModelInfo",
    "NotCancellable",
    "NotFound",
    "PayloadTooLarge",
    "QueueFull",
    "RequestTimeout",
    "TensorSpec",
    "Timings",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "text_of",
]
