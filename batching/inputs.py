"""Turn validated request items into the tensors of one queue entry.

Named tensors are checked against the published signature (names, dtypes, shapes,
and that inputs sharing a symbolic dimension agree on it) so that one bad item can
never poison a micro-batch. Raw ``text`` and ``image`` go through the model's own
tokenizer and image settings. Every error names the item and the problem.
"""

from __future__ import annotations

import base64
import binascii
import io
import wave
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from batching import assembly
from batching.items import Item
from batching.model_config import TensorSpec
from batching.registry import PublishedModel

Image.MAX_IMAGE_PIXELS = 4096 * 4096
IMAGE_FORMATS = ("PNG", "JPEG")


class InvalidInput(ValueError):
    """An item does not fit the model; ``message`` says what is wrong (the API answers 422)."""

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message, self.extra = message, extra


def invalid(message: str) -> InvalidInput:
    return InvalidInput(message)


def entry_tensors(items: Sequence[Item], model: PublishedModel) -> dict[str, np.ndarray]:
    """All items as one entry: each input stacked along the batch axis, ragged dims padded."""
    many = len(items) > 1
    if many and all(item.inputs is not None for item in items):
        stacked = _stacked_named_tensors(items, model)
        if stacked is not None:
            return stacked
    rows = []
    for index, item in enumerate(items):
        try:
            rows.append(item_tensors(item, model))
        except InvalidInput as exc:
            if many:
                exc.message = f"items[{index}]: {exc.message}"
                exc.extra["item"] = index
            raise
    return assembly.stack(rows, pad_values(model))


def _stacked_named_tensors(
    items: Sequence[Item], model: PublishedModel
) -> dict[str, np.ndarray] | None:
    """A list of same-shaped named-tensor items converted in one numpy call per input.

    ``None`` when anything is off (ragged lengths, a bad item): the item-by-item path
    then pads, or names the offending item in its error.
    """
    names = {s.name for s in model.meta.inputs}
    if any(item.inputs.keys() != names for item in items):  # type: ignore[union-attr]
        return None
    tensors: dict[str, np.ndarray] = {}
    try:
        for spec in model.meta.inputs:
            array = to_array(spec.name, [item.inputs[spec.name] for item in items], spec)  # type: ignore[index]
            check_batch_shape(spec.name, array, spec)
            tensors[spec.name] = array
        check_shared_dims(tensors, model)
    except InvalidInput:
        return None
    return tensors


def pad_values(model: PublishedModel) -> dict[str, int]:
    text = model.meta.config.preprocessing.text
    return {text.ids_input: text.pad_id} if text else {}


def item_tensors(item: Item, model: PublishedModel) -> dict[str, np.ndarray]:
    """One item's tensors, each with a leading batch dimension of 1."""
    if item.inputs is not None:
        return named_tensors(item.inputs, model)
    return raw_tensors(item, model)


def named_tensors(given: dict[str, Any], model: PublishedModel) -> dict[str, np.ndarray]:
    check_names(given.keys(), model)
    tensors: dict[str, np.ndarray] = {}
    for spec in model.meta.inputs:
        array = to_array(spec.name, given[spec.name], spec)
        if array.ndim == len(spec.shape) and array.shape[:1] == (1,):
            array = array[0]  # a batch dimension of 1 is accepted too
        if not _fits(array.shape, spec.shape[1:]):
            raise invalid(
                f"input '{spec.name}' has shape {list(array.shape)}; one item must have shape "
                f"{spec.shape[1:]} (-1: any length of at least 1)"
            )
        tensors[spec.name] = array[None]
    check_shared_dims(tensors, model)
    return tensors


def check_names(given: Iterable[str], model: PublishedModel) -> None:
    specs = {s.name for s in model.meta.inputs}
    missing = sorted(specs - set(given))
    extra = sorted(set(given) - specs)
    if missing:
        raise invalid(f"missing input(s) {missing}; model {model.name} takes {sorted(specs)}")
    if extra:
        raise invalid(f"unknown input(s) {extra}; model {model.name} takes {sorted(specs)}")


def to_array(name: str, value: Any, spec: TensorSpec) -> np.ndarray:
    """``value`` (nested lists) as the input's dtype, refusing lossy or non-numeric values."""
    dtype = np.dtype(spec.numpy_dtype)
    try:
        array = np.array(value)
    except (ValueError, OverflowError) as exc:
        raise invalid(f"input '{name}' is not a rectangular array of numbers: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise invalid(
            f"input '{name}' must hold numbers of type {spec.datatype}, got {array.dtype}"
        )
    if dtype.kind in "iu" and array.dtype.kind == "f":
        raise invalid(f"input '{name}' expects {spec.datatype} integers, got floating-point values")
    if dtype.kind == "b" and array.dtype.kind != "b":
        raise invalid(f"input '{name}' expects BOOL values (true/false)")
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise invalid(f"input '{name}' has values outside the range of {spec.datatype}")
    return array.astype(dtype, copy=False)


def check_batch_shape(name: str, array: np.ndarray, spec: TensorSpec) -> None:
    """A batch of rows: any batch size of at least 1, the rest as the signature says."""
    if array.ndim == 0 or array.shape[0] == 0 or not _fits(array.shape[1:], spec.shape[1:]):
        raise invalid(
            f"input '{name}' has shape {list(array.shape)}; the model takes {spec.shape} "
            "(-1: any length of at least 1)"
        )


def _fits(shape: Sequence[int], wanted: Sequence[int]) -> bool:
    return len(shape) == len(wanted) and all(
        got > 0 and want in (-1, got) for got, want in zip(shape, wanted, strict=True)
    )


def check_shared_dims(tensors: dict[str, np.ndarray], model: PublishedModel) -> None:
    seen: dict[str, tuple[str, int]] = {}
    for spec in model.meta.inputs:
        for axis, dim in enumerate(spec.dim_names[1:], start=1):
            if dim is None:
                continue
            size = tensors[spec.name].shape[axis]
            if dim in seen and seen[dim][1] != size:
                other, other_size = seen[dim]
                raise invalid(
                    f"inputs '{other}' and '{spec.name}' must agree on dimension '{dim}' "
                    f"({other_size} vs {size})"
                )
            seen.setdefault(dim, (spec.name, size))


def raw_tensors(item: Item, model: PublishedModel) -> dict[str, np.ndarray]:
    pre = model.meta.config.preprocessing
    tensors: dict[str, np.ndarray] = {}
    if item.text is not None:
        tensors.update(text_tensors([item.text], model))
    if item.image is not None:
        if pre.image is None:
            raise invalid(f"model {model.name} takes no 'image'")
        tensors[pre.image.input] = decode_image(_base64(item.image, "image"), pre.image)[None]
    if item.audio is not None:
        if pre.audio is None:
            raise invalid(f"model {model.name} takes no 'audio'")
        tensors[pre.audio.input] = decode_audio(_base64(item.audio, "audio"), pre.audio)[None]
    needed = sorted({s.name for s in model.meta.inputs} - tensors.keys())
    if needed:
        wanted = pre.raw_modalities()
        raise invalid(f"model {model.name} needs {wanted} (missing input(s) {needed})")
    return tensors


def text_tensors(texts: Sequence[str], model: PublishedModel) -> dict[str, np.ndarray]:
    """Token ids (and mask) of ``texts`` with the model's tokenizer, padded to the longest."""
    pre = model.meta.config.preprocessing.text
    if pre is None or model.tokenizer is None:
        raise invalid(f"model {model.name} takes no 'text'")
    rows = []
    for text in texts:
        if not text.strip():
            raise invalid("'text' is empty")
        ids = model.tokenizer.encode(text).ids[: pre.max_length]
        row = {pre.ids_input: np.array([ids], dtype=np.int64)}
        if pre.mask_input:
            row[pre.mask_input] = np.ones((1, len(ids)), dtype=np.int64)
        rows.append(row)
    return assembly.stack(rows, {pre.ids_input: pre.pad_id})


def _base64(encoded: str, field: str) -> bytes:
    if "," in encoded[:64] and encoded.startswith("data:"):
        encoded = encoded.split(",", 1)[1]  # a data URL
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"'{field}' is not valid base64") from None


MAX_AUDIO_SECONDS = 600
_PCM = {1: np.dtype("u1"), 2: np.dtype("<i2"), 4: np.dtype("<i4")}


def decode_audio(data: bytes, settings: Any) -> np.ndarray:
    """A PCM WAV file as the model's waveform: float32 [samples] in [-1, 1], mono, at
    ``settings.sample_rate`` (band-limited FFT resampling), cut or zero-padded."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.getnframes()
            if frames > MAX_AUDIO_SECONDS * rate:
                raise invalid(f"'audio' is longer than {MAX_AUDIO_SECONDS} s")
            raw = wav.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise invalid(f"'audio' could not be decoded as a PCM WAV file: {exc}") from None
    if width == 3:  # 24-bit: widen each sample to 32 bits
        padded = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        raw = np.concatenate([np.zeros((len(padded), 1), np.uint8), padded], axis=1).tobytes()
        width = 4
    if width not in _PCM or not raw:
        raise invalid(
            f"'audio' must be 8-, 16-, 24- or 32-bit PCM with samples, got {width * 8}-bit"
        )
    samples = np.frombuffer(raw, _PCM[width]).astype(np.float32)
    if width == 1:
        samples = (samples - 128.0) / 128.0
    else:
        samples /= float(2 ** (8 * width - 1))
    samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    if rate != settings.sample_rate:
        n = max(1, round(len(samples) * settings.sample_rate / rate))
        samples = np.fft.irfft(np.fft.rfft(samples), n) * (n / len(samples))
    out = np.zeros(settings.samples, np.float32)
    out[: min(len(samples), settings.samples)] = samples[: settings.samples]
    return out


def decode_image(data: bytes, settings: Any) -> np.ndarray:
    """An encoded PNG or JPEG as the model's normalised image tensor (no batch dim)."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise invalid(f"'image' could not be decoded as PNG or JPEG: {exc}") from None
    return preprocess_image(img, settings)


def preprocess_image(img: Image.Image, settings: Any) -> np.ndarray:
    """Resize to the model's size, scale to [0, 1], normalise per channel, lay out as CHW."""
    if img.size != (settings.width, settings.height):
        img = img.resize((settings.width, settings.height), Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    pixels = (pixels - np.array(settings.mean, np.float32)) / np.array(settings.std, np.float32)
    return pixels.transpose(2, 0, 1).copy() if settings.layout == "NCHW" else pixels
