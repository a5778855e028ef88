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
import warnings
import wave
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from batching import assembly
from batching.items import Item
from batching.model_config import TensorSpec
from batching.registry import PublishedModel
from batching.settings import get_settings

# decode_image refuses anything over the limit from the header, before decoding: PIL's own
# check is a backstop (it raises at twice its limit), and its warning below that is noise
Image.MAX_IMAGE_PIXELS = get_settings().max_image_pixels
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
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
        check_values(tensors, model)
    except InvalidInput:
        return None
    return tensors


def pad_values(model: PublishedModel) -> dict[str, int]:
    return model.meta.config.preprocessing.pad_values()


def item_tensors(item: Item, model: PublishedModel) -> dict[str, np.ndarray]:
    """One item's tensors, each with a leading batch dimension of 1."""
    if item.inputs is not None:
        tensors = named_tensors(item.inputs, model)
    else:
        tensors = raw_tensors(item, model)
    check_values(tensors, model)
    return tensors


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
    if dtype.kind != "b" and (array.dtype.kind == "b" or _holds_bool(value, dtype)):
        raise invalid(f"input '{name}' expects {spec.datatype} numbers, not booleans")
    if dtype.kind in "iu" and array.dtype.kind == "f":
        raise invalid(f"input '{name}' expects {spec.datatype} integers, got floating-point values")
    if dtype.kind == "b" and array.dtype.kind != "b":
        raise invalid(f"input '{name}' expects BOOL values (true/false)")
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise invalid(f"input '{name}' has values outside the range of {spec.datatype}")
    return array.astype(dtype, copy=False)


def _holds_bool(value: Any, dtype: np.dtype) -> bool:
    """True/false among integers: numpy would read them as 1/0. Scanned for integer inputs
    only (token ids: short); a walk of every float of an image would cost the hot path."""
    if dtype.kind not in "iu":
        return False
    pending = [value]
    while pending:
        x = pending.pop()
        if isinstance(x, list):
            pending.extend(x)
        elif isinstance(x, bool):
            return True
    return False


def check_values(tensors: dict[str, np.ndarray], model: PublishedModel) -> None:
    """Values the model cannot run on, refused before they are queued: NaN or infinity
    (also a float32 overflow such as 1e39) and token ids outside the vocabulary (the
    embedding's rows; its Gather would fail the whole batch)."""
    for name, array in tensors.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise invalid(f"input '{name}' holds NaN or infinity (or a value its type overflows)")
    text = model.meta.config.preprocessing.text
    if text is None or model.tokenizer is None or text.ids_input not in tensors:
        return
    ids, vocab = tensors[text.ids_input], model.tokenizer.get_vocab_size()
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise invalid(
            f"input '{text.ids_input}' has token ids outside [0, {vocab}) "
            f"(the vocabulary of model {model.name})"
        )


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
    limit = get_settings().max_text_chars
    rows = []
    for text in texts:
        if len(text) > limit:  # before the tokenizer, whose memory grows with the text
            raise invalid(f"'text' is {len(text)} characters, longer than {limit}")
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


_PCM = {1: np.dtype("u1"), 2: np.dtype("<i2"), 4: np.dtype("<i4")}


def decode_audio(data: bytes, settings: Any) -> np.ndarray:
    """A PCM WAV file as the model's waveform: float32 [samples] in [-1, 1], mono, at
    ``settings.sample_rate`` (band-limited FFT resampling), cut or zero-padded."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.getnframes()
            limit_s = get_settings().max_audio_seconds
            if frames > limit_s * rate:
                raise invalid(f"'audio' is longer than {limit_s:g} s")
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
    """An encoded PNG or JPEG as the model's normalised image tensor (no batch dim).

    Its size is checked from the header (``Image.open`` reads no pixels) before decoding.
    """
    limit = get_settings().max_image_pixels
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            width, height = img.size
            if width * height > limit:
                raise invalid(f"'image' is {width}x{height} pixels; the limit is {limit} pixels")
            img = img.convert("RGB")
    except InvalidInput:
        raise
    except Image.DecompressionBombError as exc:
        raise invalid(f"'image' is over the limit of {limit} pixels: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise invalid(f"'image' could not be decoded as PNG or JPEG: {exc}") from None
    return preprocess_image(img, settings)


def preprocess_image(img: Image.Image, settings: Any) -> np.ndarray:
    """Resize to the model's size, scale to [0, 1], normalise per channel, lay out as CHW."""
    if img.size != (settings.width, settings.height):
        img = img.resize((settings.width, settings.height), Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.float32) / 255.0
    pixels = (pixels - np.array(settings.mean, np.float32)) / np.array(settings.std, np.float32)
    return pixels.transpose(2, 0, 1).copy() if settings.layout == "NCHW" else pixels
