"""Raw audio as the server takes it: PCM WAV of any common width, rate and channel count."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np
import pytest

from batching.inputs import InvalidInput, decode_audio
from batching.model_config import AudioPreprocessing
from fusionserve.zoo import data

SETTINGS = AudioPreprocessing(input="audio", sample_rate=8000, samples=8000)


def wav(samples: np.ndarray, rate: int, width: int = 2) -> bytes:
    """``samples`` [frames, channels] in [-1, 1] as PCM of ``width`` bytes."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    scale = 2 ** (8 * width - 1) - 1
    if width == 1:
        raw = (frames * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = (frames * scale).astype("<i4").reshape(-1)
        raw = b"".join(int(v).to_bytes(4, "little", signed=True)[:3] for v in ints)
    else:
        raw = (frames * scale).astype(f"<i{width}").tobytes()
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(frames.shape[1])
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(raw)
    return buffer.getvalue()


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[spectrum.argmax()])


def test_the_data_sets_clips_round_trip_at_the_models_rate() -> None:
    [sample] = data.generate(1, 5, data.ALL_MODALITIES)
    decoded = decode_audio(data.wav_bytes(sample.audio), SETTINGS)
    assert decoded.dtype == np.float32 and decoded.shape == (8000,)
    assert np.abs(decoded - sample.audio).max() < 1e-4


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_every_pcm_width_decodes_to_the_same_wave(width: int) -> None:
    t = np.arange(8000) / 8000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    decoded = decode_audio(wav(tone, 8000, width), SETTINGS)
    assert np.abs(decoded - tone).max() < (0.02 if width == 1 else 1e-3)


def test_stereo_at_another_rate_is_mixed_and_resampled_keeping_its_pitch() -> None:
    rate = 44_100
    t = np.arange(rate // 2) / rate  # half a second
    left = 0.6 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, left], axis=1)
    decoded = decode_audio(wav(stereo, rate), SETTINGS)
    assert decoded.shape == (8000,)
    assert abs(dominant_hz(decoded[:4000], 8000) - 440) <= 2
    assert np.abs(decoded[4000:]).max() == 0  # padded with silence after half a second
    assert 0.55 < np.abs(decoded[:4000]).max() < 0.65


def test_long_clips_are_cut_to_the_models_length() -> None:
    decoded = decode_audio(wav(np.full(20_000, 0.25), 8000), SETTINGS)
    assert decoded.shape == (8000,) and np.allclose(decoded, 0.25, atol=1e-3)


def float_wav(samples: np.ndarray, rate: int) -> bytes:
    body = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt
    chunks += b"data" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"not a wav file at all", "PCM WAV"),
        (float_wav(np.zeros(100), 8000), "PCM WAV"),
        (wav(np.zeros(0), 8000), "samples"),
    ],
)
def test_what_is_not_pcm_wav_is_refused_with_the_reason(payload: bytes, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        decode_audio(payload, SETTINGS)
