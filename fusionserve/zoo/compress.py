"""Compressed variants of an exported model: int8 (dynamic quantization) and fp16.

Each variant is written as a model of its own, ``<name>_int8`` / ``<name>_fp16``, beside
the original in the repository (same config, tokenizer and labels), with its held-out
accuracy and speed measured next to the fp32 original in its ``[compression]`` table.
The server serves them like any other model; clients choose by name.

- int8: ``onnxruntime.quantization``'s graph pre-processing, then dynamic quantization of
  the MatMul weights only (activations are quantized per batch at run time). Conv stays
  fp32: ORT's ConvInteger is slower than its float Conv on CPU, measured: quantizing
  every op made the demo 0.6x as fast, MatMul only 1.5x faster.
- fp16: every weight and op in half precision, inputs and outputs kept fp32 so clients
  send the same tensors. For GPUs (Tensor Cores); on CPU it is slower than fp32.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

from fusionserve.zoo.data import HELD_OUT_SEED, generate
from fusionserve.zoo.features import model_inputs

VARIANTS = ("int8", "fp16")
BENCH_BATCH = 64


@dataclass
class Measured:
    variant: str
    accuracy: float
    samples_per_s: float
    megabytes: float


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    """ORT's tools run in a temporary working directory: some write scratch files into the
    current one (symbolic shape inference leaves ``sym_shape_infer_temp.onnx`` and a ``.data``
    file there when it gives up), and those must never land in the source tree."""
    with tempfile.TemporaryDirectory(prefix="fusionserve-compress-") as tmp, contextlib.chdir(tmp):
        yield Path(tmp)


def quantize_int8(source: Path, target: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, target = source.resolve(), target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice is printed as warnings
    with _scratch() as scratch:
        prepared = scratch / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(
            str(prepared),
            str(target),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=spectrogram_matmuls(onnx.load(str(prepared)).graph),
        )
    onnx.checker.check_model(str(target))
    return target


def spectrogram_matmuls(graph: onnx.GraphProto) -> list[str]:
    """MatMuls whose result is taken the log of (the mel filterbank over a power spectrum).

    Their input spans orders of magnitude (silence to loud beeps): quantized to 8 bits
    per tensor, the quiet frames round to zero and their log to -13.8, which cost the
    three-modality model 2.5 points. They stay fp32 (one small MatMul).
    """
    producer = {out: node for node in graph.node for out in node.output}
    excluded = []
    for node in graph.node:
        if node.op_type != "Log":
            continue
        frontier = [producer.get(node.input[0])]
        for _ in range(3):  # through an Add of epsilon, a Clip or a Mul
            found = [n for n in frontier if n is not None and n.op_type == "MatMul"]
            if found:
                excluded += [n.name for n in found]
                break
            frontier = [producer.get(i) for n in frontier if n is not None for i in n.input]
    return excluded


def convert_fp16(source: Path, target: Path) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    source, target = source.resolve(), target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _scratch():
        model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    _toposort(model.graph)  # the converter appends its input casts after their consumers
    onnx.save(model, str(target))
    onnx.checker.check_model(str(target))
    return target


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a missing input at {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


CONVERTERS = {"int8": quantize_int8, "fp16": convert_fp16}


def model_modalities(model_dir: Path) -> tuple[str, ...]:
    config = tomllib.loads((model_dir / "config.toml").read_text())
    return tuple(config.get("modalities") or ("text", "image"))


def evaluate_onnx(
    path: Path, model_dir: Path, samples: int = 2000, threads: int = 1
) -> tuple[float, float]:
    """(held-out accuracy, samples/s at batch 64 on ``threads`` CPU threads, best of 3)."""
    modalities = model_modalities(model_dir)
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    held_out = generate(samples, HELD_OUT_SEED, modalities)
    truth = np.array([s.label for s in held_out])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    batches = [
        model_inputs(tokenizer, held_out[i : i + BENCH_BATCH], modalities)
        for i in range(0, samples, BENCH_BATCH)
    ]
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        logits = [session.run(None, feeds)[0] for feeds in batches]
        best = min(best, time.perf_counter() - started)
    accuracy = float((np.concatenate(logits).argmax(axis=1) == truth).mean())
    return accuracy, samples / best


def write_variant(repository: Path, name: str, variant: str, version: int | None = None) -> Path:
    """``<repository>/<name>_<variant>/1/model.onnx`` with the original's config and tokenizer."""
    source_dir = repository / name
    version = version or max(int(p.name) for p in source_dir.iterdir() if p.name.isdigit())
    target_dir = repository / f"{name}_{variant}"
    model_path = CONVERTERS[variant](
        source_dir / str(version) / "model.onnx", target_dir / "1" / "model.onnx"
    )
    for extra in ("tokenizer.json",):
        if (source_dir / extra).exists():
            shutil.copy(source_dir / extra, target_dir / extra)
    config = (source_dir / "config.toml").read_text()
    config = config.replace(f'name = "{name}"', f'name = "{name}_{variant}"', 1)
    (target_dir / "config.toml").write_text(config)
    return model_path


def compress(
    repository: Path, name: str, variants: Sequence[str] = VARIANTS, samples: int = 2000
) -> list[Measured]:
    """Write each variant and measure it beside the fp32 original; records the figures."""
    source_dir = repository / name
    version = max(int(p.name) for p in source_dir.iterdir() if p.name.isdigit())
    original = source_dir / str(version) / "model.onnx"
    rows = [_measure("fp32", original, source_dir, samples)]
    for variant in variants:
        path = write_variant(repository, name, variant, version)
        measured = _measure(variant, path, source_dir, samples)
        rows.append(measured)
        _record(path.parent.parent / "config.toml", measured, rows[0])
    return rows


def _measure(variant: str, path: Path, model_dir: Path, samples: int) -> Measured:
    accuracy, speed = evaluate_onnx(path, model_dir, samples)
    return Measured(variant, accuracy, speed, path.stat().st_size / 1e6)


def _record(config_path: Path, row: Measured, fp32: Measured) -> None:
    lines = [
        "",
        "[compression]",
        f'variant = "{row.variant}"',
        f"held_out_accuracy = {row.accuracy:.4f}",
        f"fp32_held_out_accuracy = {fp32.accuracy:.4f}",
        f"cpu_speedup_vs_fp32 = {row.samples_per_s / fp32.samples_per_s:.2f}",
        f"size_vs_fp32 = {row.megabytes / fp32.megabytes:.2f}",
    ]
    config_path.write_text(config_path.read_text() + "\n".join(lines) + "\n")
