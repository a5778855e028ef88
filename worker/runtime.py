"""One model in ONNX Runtime: provider choice, signature from the graph, and runs."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from batching.model_config import NUMPY_TO_V2, TensorSpec
from worker.repository import ModelFiles

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")

_ORT_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


def choose_providers(available: list[str] | None = None) -> list[str]:
    """CUDA when this onnxruntime build has it, then CPU; the order ORT should try them."""
    available = available if available is not None else ort.get_available_providers()
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


def _spec(node: ort.NodeArg) -> TensorSpec:
    if node.type not in _ORT_TO_NUMPY:
        raise ValueError(f"{node.name}: unsupported ONNX type {node.type}")
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in node.shape]
    names = [d if isinstance(d, str) else None for d in node.shape]
    return TensorSpec(
        name=node.name,
        datatype=NUMPY_TO_V2[_ORT_TO_NUMPY[node.type]],
        shape=shape,
        dim_names=names,
    )


class ModelRuntime:
    """An ORT session for one model version; ``run`` takes and returns named numpy arrays."""

    def __init__(self, files: ModelFiles, version: int | None = None, threads: int | None = None):
        self.files = files
        self.version = version or files.latest
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or int(os.environ.get("FUSIONSERVE_ORT_THREADS", 0))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if os.environ.get("FUSIONSERVE_ORT_SPIN", "0") != "1":
            # A serving host shares its cores with the API and Redis: ORT's threads must
            # sleep between batches instead of spinning on cores the others need.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = choose_providers()
        self.session = ort.InferenceSession(
            str(files.onnx_path(self.version)), options, providers=providers
        )
        self.providers = self.session.get_providers()
        log.info(
            "model %s v%d loaded with providers %s (available: %s)",
            files.name,
            self.version,
            self.providers,
            ort.get_available_providers(),
        )
        self.inputs = [_spec(i) for i in self.session.get_inputs()]
        self.outputs = [_spec(o) for o in self.session.get_outputs()]
        self.output_names = [o.name for o in self.outputs]

    @property
    def pad_values(self) -> dict[str, int]:
        text = self.files.config.preprocessing.text
        return {text.ids_input: text.pad_id} if text else {}

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, dict(batch))
        return dict(zip(self.output_names, outputs, strict=True))
