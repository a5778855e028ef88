"""Small ONNX models built with onnx.helper for pipeline tests and benchmarks (no torch).

``scale``: ``y = x * 2`` over ``x: float32 [batch, 4]`` — negligible compute.
``masked_sum``: ``total = sum(ids * mask, axis=1)`` over int64 ``[batch, seq]`` inputs —
a ragged text-like model whose output must not depend on padding.
``heavy``: a deep tanh MLP, slow enough that workers hold batches for a while.
``mlp``: ``64 → 256 → 256 → 10``, the reference model of the capacity comparisons.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CONFIG = """\
name = "{name}"
platform = "onnxruntime_onnx"

[batching]
max_batch_size = {max_batch_size}
max_queue_delay_ms = {delay_ms}
priority_levels = 2
max_queue_size = {max_queue_size}
"""


def _write(repository: Path, name: str, graph: onnx.GraphProto, config: str) -> Path:
    directory = repository / name
    (directory / "1").mkdir(parents=True, exist_ok=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, directory / "1" / "model.onnx")
    (directory / "config.toml").write_text(config)
    return directory


def scale_model(
    repository: Path,
    name: str = "scale",
    max_batch_size: int = 32,
    delay_ms: float = 2.0,
    max_queue_size: int = 10_000,
) -> Path:
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [two],
    )
    config = CONFIG.format(
        name=name, max_batch_size=max_batch_size, delay_ms=delay_ms, max_queue_size=max_queue_size
    )
    return _write(repository, name, graph, config)


def masked_sum_model(repository: Path, name: str = "masked_sum") -> Path:
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input_ids", "attention_mask"], ["kept"]),
            helper.make_node("ReduceSum", ["kept", "axes"], ["total"], keepdims=0),
        ],
        name,
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("total", TensorProto.INT64, ["batch"])],
        [axes],
    )
    config = CONFIG.format(name=name, max_batch_size=16, delay_ms=2.0, max_queue_size=10_000)
    return _write(repository, name, graph, config)


def heavy_model(
    repository: Path,
    name: str = "heavy",
    width: int = 256,
    layers: int = 24,
    max_batch_size: int = 8,
) -> Path:
    """``x: float32 [batch, width]`` through ``layers`` tanh(x @ W): a few ms per batch."""
    rng = np.random.default_rng(0)
    nodes, inits, current = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]))
        current = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [current]))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        inits,
    )
    config = CONFIG.format(
        name=name, max_batch_size=max_batch_size, delay_ms=2.0, max_queue_size=100_000
    )
    return _write(repository, name, graph, config)


def mlp_model(
    repository: Path, name: str = "mlp", max_batch_size: int = 32, delay_ms: float = 5.0
) -> Path:
    """The 64→256→256→10 ReLU MLP the competitor figures in the capacity issue were taken with."""
    rng = np.random.default_rng(0)
    sizes = [64, 256, 256, 10]
    nodes, inits, current = [], [], "x"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(fan_out, np.float32), f"b{i}"),
        ]
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"g{i}"]))
        last = i == len(sizes) - 2
        current = "y" if last else f"h{i}"
        nodes.append(helper.make_node("Identity" if last else "Relu", [f"g{i}"], [current]))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    config = CONFIG.format(
        name=name, max_batch_size=max_batch_size, delay_ms=delay_ms, max_queue_size=100_000
    )
    return _write(repository, name, graph, config)


def lookup_model(repository: Path, name: str = "lookup", rows: int = 10) -> Path:
    """``y = table[idx]`` over ``idx: int64 [batch]``: an index past the table fails the batch.

    The "poisoned input" of failure-isolation tests: ONNX Runtime rejects the whole run.
    """
    table = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["y"], axis=0)],
        name,
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(table, "table")],
    )
    config = CONFIG.format(name=name, max_batch_size=32, delay_ms=2.0, max_queue_size=10_000)
    return _write(repository, name, graph, config)
