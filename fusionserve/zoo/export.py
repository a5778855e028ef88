"""ONNX export with dynamic batch and sequence axes, a torch-vs-ORT parity check, and the
model-repository layout the server reads (Triton style):

    <repository>/<name>/config.toml
    <repository>/<name>/tokenizer.json
    <repository>/<name>/<version>/model.onnx
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from fusionserve.zoo.data import (
    AUDIO_SAMPLES,
    HELD_OUT_SEED,
    IMAGE_MEAN,
    IMAGE_SIZE,
    IMAGE_STD,
    SAMPLE_RATE,
    generate,
    labels,
)
from fusionserve.zoo.features import input_names, model_inputs
from fusionserve.zoo.models import FusionModel, parameter_count
from fusionserve.zoo.tokenizer import MAX_LENGTH, PAD_ID, build_tokenizer

OPSET = 17
OUTPUT_NAME = "logits"
DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "input_ids": {0: "batch", 1: "seq"},
    "attention_mask": {0: "batch", 1: "seq"},
    "image": {0: "batch"},
    "audio": {0: "batch"},
    OUTPUT_NAME: {0: "batch"},
}
PARITY_BATCH_SIZES = (1, 7, 64)
PARITY_TOLERANCE = 1e-4


class ParityError(AssertionError):
    """ONNX Runtime disagrees with torch beyond the tolerance."""


@dataclass
class ExportResult:
    model_path: Path
    config_path: Path
    tokenizer_path: Path
    parity: dict[int, float]  # batch size -> max abs logit difference
    parameters: int

    @property
    def total_bytes(self) -> int:
        paths = (self.model_path, self.config_path, self.tokenizer_path)
        return sum(p.stat().st_size for p in paths)


def export_onnx(model: FusionModel, path: Path, opset: int = OPSET) -> Path:
    """Trace `model` to a single self-contained ONNX file with dynamic batch and seq axes."""
    # Batch 2: nothing in the trace may specialise on a size of 1.
    example = _inputs(2, seed=0, modalities=model.modalities)
    names = input_names(model.modalities)
    axes = {n: DYNAMIC_AXES[n] for n in [*names, OUTPUT_NAME]}
    return trace_to_onnx(model, {n: example[n] for n in names}, path, [OUTPUT_NAME], axes, opset)


def trace_to_onnx(
    model: torch.nn.Module,
    example: dict[str, np.ndarray],
    path: Path,
    outputs: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int = OPSET,
) -> Path:
    """Trace ``model`` on ``example`` (its inputs, in order) to one checked ONNX file."""
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        # dynamo=False is deliberate (the dynamo exporter needs onnxscript); skip its nagging.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            tuple(torch.from_numpy(a) for a in example.values()),
            str(tmp),
            dynamo=False,
            external_data=False,
            opset_version=opset,
            input_names=list(example),
            output_names=outputs,
            dynamic_axes=dynamic_axes,
        )
    onnx.checker.check_model(str(tmp))
    os.replace(tmp, path)  # readers never see a half-written model
    return path


def session(path: Path) -> ort.InferenceSession:
    """A CPU ONNX Runtime session, two threads like the training machine."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _inputs(batch: int, seed: int, modalities: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Real held-out-style inputs; questions of different lengths, so rows carry padding."""
    samples = generate(batch, [HELD_OUT_SEED, seed], modalities)
    return model_inputs(build_tokenizer(), samples, modalities)


def check_parity(
    model: FusionModel,
    onnx_path: Path,
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
    tolerance: float = PARITY_TOLERANCE,
) -> dict[int, float]:
    """Max abs logit difference torch vs ORT per batch size; raises ParityError if too big."""
    sess = session(onnx_path)
    model.eval()
    diffs: dict[int, float] = {}
    for batch in batch_sizes:
        feeds = _inputs(batch, seed=batch, modalities=model.modalities)
        with torch.no_grad():
            expected = model(*(torch.from_numpy(a) for a in feeds.values())).numpy()
        (actual,) = sess.run([OUTPUT_NAME], feeds)
        diffs[batch] = float(np.abs(actual - expected).max())
    worst = max(diffs.values())
    if not worst <= tolerance:
        raise ParityError(f"ONNX Runtime vs torch max abs diff {diffs} exceeds {tolerance}")
    return diffs


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string of ASCII text is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def render_config(
    name: str,
    strategy: str,
    accuracy: float | None,
    parameters: int,
    modalities: tuple[str, ...] = ("text", "image"),
    extra: dict[str, object] | None = None,
    description: str | None = None,
    generation: dict[str, object] | None = None,
) -> str:
    """config.toml for the server: batching, instances, pre- and post-processing.

    With a ``description`` (an embedding model, not a classifier) there are no labels.
    With ``generation`` (a text-generation model: ``task = "generate"``) its table is
    written instead of the labels.
    """
    training: dict[str, object] = {"strategy": strategy, "modalities": list(modalities)}
    if accuracy is not None:
        training["held_out_accuracy"] = round(accuracy, 4)
    training["parameters"] = parameters
    training |= extra or {}
    training["exported_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    sections: list[tuple[str | None, dict[str, object]]] = [
        (
            None,
            {
                "name": name,
                "platform": "onnxruntime_onnx",
                "description": description
                or f"{strategy} fusion, {' + '.join(modalities)} VQA on the synthetic shapes set",
                "modalities": list(modalities),
                **({"task": "generate"} if generation is not None else {}),
            },
        ),
        (
            "batching",
            {
                "max_batch_size": 64,
                "max_queue_delay_ms": 2.0,
                "preferred_batch_sizes": [],
                "priority_levels": 2,
                "default_timeout_ms": 30000,
                "max_queue_size": 10000,
            },
        ),
        ("instances", {"count": 1}),
        *_preprocessing(modalities),
        *(
            [("postprocessing", {"label_output": OUTPUT_NAME, "labels": labels(modalities)})]
            if description is None and generation is None
            else []
        ),
        *([("generation", generation)] if generation is not None else []),
        ("training", training),
    ]
    lines: list[str] = []
    for header, table in sections:
        if header is not None:
            lines += ["", f"[{header}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def _preprocessing(modalities: tuple[str, ...]) -> list[tuple[str, dict[str, object]]]:
    sections: list[tuple[str, dict[str, object]]] = []
    if "text" in modalities:
        text = {
            "tokenizer": "tokenizer.json",
            "ids_input": "input_ids",
            "mask_input": "attention_mask",
            "max_length": MAX_LENGTH,
            "pad_id": PAD_ID,
        }
        sections.append(("preprocessing.text", text))
    if "image" in modalities:
        image = {
            "input": "image",
            "height": IMAGE_SIZE,
            "width": IMAGE_SIZE,
            "mean": list(IMAGE_MEAN),
            "std": list(IMAGE_STD),
        }
        sections.append(("preprocessing.image", image))
    if "audio" in modalities:
        audio = {"input": "audio", "sample_rate": SAMPLE_RATE, "samples": AUDIO_SAMPLES}
        sections.append(("preprocessing.audio", audio))
    return sections


def export_to_repository(
    model: FusionModel,
    repository: Path,
    name: str,
    version: int,
    strategy: str,
    accuracy: float | None,
    extra: dict[str, object] | None = None,
) -> ExportResult:
    """Export, check parity, then write the tokenizer and config next to the versioned model."""
    model_dir = Path(repository) / name
    model_path = export_onnx(model, model_dir / str(version) / "model.onnx")
    parity = check_parity(model, model_path)
    tokenizer_path = model_dir / "tokenizer.json"
    build_tokenizer().save(str(tokenizer_path))
    parameters = parameter_count(model)
    config_path = model_dir / "config.toml"
    config = render_config(name, strategy, accuracy, parameters, model.modalities, extra)
    config_path.write_text(config)
    return ExportResult(model_path, config_path, tokenizer_path, parity, parameters)
