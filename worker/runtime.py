"""One model in ONNX Runtime: provider choice, signature from the graph, and runs.

Providers, best first: TensorRT (only with ``FUSIONSERVE_TENSORRT=1``: engines take
minutes to build on first load, cached under the data directory), CUDA, then CPU. A GPU
session binds its inputs and outputs (IO binding): each batch is copied to the device
once and its outputs fetched once, instead of ORT staging them per call. One worker
process holds one session per model version on its device; run several workers per
GPU (they share it) or pin one per GPU with ``CUDA_VISIBLE_DEVICES``. Where no GPU is
found the session runs on CPU and says so in one log line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from batching.model_config import NUMPY_TO_V2, V2_TO_NUMPY, InstancesConfig, TensorSpec
from worker.repository import ModelFiles

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
WARMUP_SEQUENCE = 8
"""Length given to variable non-batch dimensions (text) in warm-up batches."""

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


def choose_providers(
    available: list[str] | None = None, *, tensorrt: bool | None = None
) -> list[str]:
    """The providers ORT should try, best first: [TensorRT,] CUDA when built in, then CPU."""
    available = available if available is not None else ort.get_available_providers()
    if tensorrt is None:
        tensorrt = os.environ.get("FUSIONSERVE_TENSORRT", "0") == "1"
    wanted = ([TENSORRT] if tensorrt else []) + [CUDA, CPU]
    return [p for p in wanted if p in available] or [CPU]


def provider_options(
    providers: list[str], instances: InstancesConfig, cache_dir: Path
) -> list[dict[str, Any]]:
    """Per-provider options: the device, the model's GPU memory cap, TensorRT's cache."""
    options: list[dict[str, Any]] = []
    for provider in providers:
        if provider == CUDA:
            cuda: dict[str, Any] = {"device_id": instances.device}
            if instances.gpu_memory_mb:
                cuda["gpu_mem_limit"] = instances.gpu_memory_mb * 2**20
                cuda["arena_extend_strategy"] = "kSameAsRequested"
            options.append(cuda)
        elif provider == TENSORRT:
            trt: dict[str, Any] = {
                "device_id": instances.device,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache_dir),
                "trt_fp16_enable": os.environ.get("FUSIONSERVE_TENSORRT_FP16", "0") == "1",
            }
            if instances.gpu_memory_mb:
                trt["trt_max_workspace_size"] = instances.gpu_memory_mb * 2**20
            options.append(trt)
        else:
            options.append({})
    return options


def spec_of(node: ort.NodeArg) -> TensorSpec:
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


def open_session(path: Path, instances: InstancesConfig, threads: int | None = None):
    """An ORT session on the best provider, set up for a host it shares with others."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or int(os.environ.get("FUSIONSERVE_ORT_THREADS", 0))
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if os.environ.get("FUSIONSERVE_ORT_SPIN", "0") != "1":
        # A serving host shares its cores with the API and Redis: ORT's threads must
        # sleep between batches instead of spinning on cores the others need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = choose_providers()
    cache = Path(os.environ.get("FUSIONSERVE_DATA_DIR", ".fusionserve")) / "tensorrt"
    return ort.InferenceSession(
        str(path),
        options,
        providers=providers,
        provider_options=provider_options(providers, instances, cache),
    )


class ModelRuntime:
    """An ORT session for one model version; ``run`` takes and returns named numpy arrays."""

    def __init__(self, files: ModelFiles, version: int | None = None, threads: int | None = None):
        self.files = files
        self.version = version or files.latest
        instances = files.config.instances
        self.session = open_session(files.onnx_path(self.version), instances, threads)
        self.providers = self.session.get_providers()
        self.inputs = [spec_of(i) for i in self.session.get_inputs()]
        self.outputs = [spec_of(o) for o in self.session.get_outputs()]
        self.output_names = [o.name for o in self.outputs]
        self.device = self._binding_device(instances.device)
        if self.providers[0] in GPU_PROVIDERS:
            log.info(
                "model %s v%d on GPU %d with %s (IO binding)",
                files.name,
                self.version,
                instances.device,
                self.providers,
            )
        else:
            log.info(
                "model %s v%d runs on CPU: no GPU provider found (onnxruntime has %s)",
                files.name,
                self.version,
                ort.get_available_providers(),
            )
        if instances.warmup:
            self.warm_up()

    def _binding_device(self, device_id: int) -> tuple[str, int] | None:
        """(device type, id) to bind inputs and outputs on, or None to run plainly.

        GPU sessions always bind; ``FUSIONSERVE_IO_BINDING=1`` binds on CPU too (the
        same code path, so it is tested where no GPU is).
        """
        if self.providers[0] in GPU_PROVIDERS:
            return ("cuda", device_id)
        if os.environ.get("FUSIONSERVE_IO_BINDING", "0") == "1":
            return ("cpu", 0)
        return None

    @property
    def pad_values(self) -> dict[str, int]:
        return self.files.config.preprocessing.pad_values()

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.device is None:
            outputs = self.session.run(self.output_names, dict(batch))
        else:
            outputs = self._run_bound(batch, *self.device)
        return dict(zip(self.output_names, outputs, strict=True))

    def _run_bound(
        self, batch: Mapping[str, np.ndarray], device: str, device_id: int
    ) -> list[np.ndarray]:
        """One copy of each input to the device, one fetch of each output, per batch."""
        binding = self.session.io_binding()
        for name, array in batch.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, device_id)
            binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, device, device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def warm_up(self) -> list[int]:
        """Run the preferred batch sizes (or 1 and the maximum) once: CUDA kernels, cuDNN
        algorithms and TensorRT engines are chosen now, not on the first requests."""
        batching = self.files.config.batching
        sizes = batching.preferred_batch_sizes or sorted({1, batching.max_batch_size})
        for size in sizes:
            try:
                self.run(self.dummy_batch(size))
            except Exception as exc:  # a model with data-dependent shapes: serve anyway
                log.warning("%s: warm-up at batch %d failed (%s)", self.files.name, size, exc)
                return []
        return list(sizes)

    def dummy_batch(self, rows: int) -> dict[str, np.ndarray]:
        batch = {}
        for spec in self.inputs:
            shape = [rows] + [d if d > 0 else WARMUP_SEQUENCE for d in spec.shape[1:]]
            batch[spec.name] = np.zeros(shape, dtype=V2_TO_NUMPY[spec.datatype])
        return batch
