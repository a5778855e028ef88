"""The shipped three-modality model (avqa) through the server: raw text, PNG and WAV in."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from conftest import DEMO
from helpers import b64

from fusionserve.zoo import data

MODEL = "avqa"
REPOSITORY = DEMO.parent


def raw_item(sample: data.Sample, rate: int = data.SAMPLE_RATE) -> dict:
    audio = sample.audio
    if rate != data.SAMPLE_RATE:  # a client recording at another rate: the server resamples
        n = int(len(audio) * rate / data.SAMPLE_RATE)
        audio = np.interp(np.arange(n) * data.SAMPLE_RATE / rate, np.arange(len(audio)), audio)
    return {
        "text": sample.question,
        "image": b64(data.png_bytes(sample.image)),
        "audio": b64(data.wav_bytes(audio, rate)),
    }


@pytest.fixture(scope="module")
def avqa(module_stack_factory):
    stack = module_stack_factory(REPOSITORY)
    stack.start_api()
    stack.start_worker(MODEL, "demo")
    stack.wait_ready(MODEL, 1)
    stack.wait_ready("demo", 1)
    return stack


def test_audio_questions_are_answered_through_the_server(avqa) -> None:
    samples = [
        s
        for s in data.generate(600, data.HELD_OUT_SEED, data.ALL_MODALITIES)
        if s.kind in data.AUDIO_KINDS
    ][:200]
    assert {s.kind for s in samples} == {"beeps", "pitch"}
    with httpx.Client(base_url=avqa.url, timeout=60) as http:
        described = http.get(f"/v1/models/{MODEL}").json()
        assert described["config"]["modalities"] == ["text", "image", "audio"]
        ids: list[str] = []
        for start in range(0, len(samples), 25):
            items = [raw_item(s) for s in samples[start : start + 25]]
            response = http.post(f"/v1/models/{MODEL}/infer", json={"items": items})
            assert response.status_code == 202, response.text
            ids += response.json()["job_ids"]
        answers = [http.get(f"/v1/jobs/{i}", params={"wait": 30}).json() for i in ids]
    right = [a["labels"][0]["label"] == s.answer for a, s in zip(answers, samples, strict=True)]
    accuracy = float(np.mean(right))
    assert accuracy >= 0.9, f"audio-question accuracy {accuracy:.3f} through the server"


def test_audio_at_another_rate_and_through_v2_bytes(avqa) -> None:
    samples = [s for s in data.generate(60, 7, data.ALL_MODALITIES) if s.kind == "pitch"][:2]
    with httpx.Client(base_url=avqa.url, timeout=60) as http:
        job = http.post(f"/v1/models/{MODEL}/infer", json=raw_item(samples[0], rate=22_050)).json()
        result = http.get(f"/v1/jobs/{job['job_id']}", params={"wait": 30}).json()
    assert result["labels"][0]["label"] == samples[0].answer

    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(avqa.url.removeprefix("http://"))
    raw = {
        "text": [s.question.encode() for s in samples],
        "image": [data.png_bytes(s.image) for s in samples],
        "audio": [data.wav_bytes(s.audio) for s in samples],
    }
    inputs = []
    for name, values in raw.items():
        tensor = httpclient.InferInput(name, [len(samples)], "BYTES")
        tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=True)
        inputs.append(tensor)
    logits = client.infer(MODEL, inputs).as_numpy("logits")
    labels = data.labels(data.ALL_MODALITIES)
    assert [labels[i] for i in logits.argmax(axis=1)] == [s.answer for s in samples]
    client.close()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"audio": None}, "needs ['text', 'image', 'audio']"),
        ({"audio": "%%%"}, "'audio' is not valid base64"),
        ({"audio": b64(b"RIFF....WAVEjunk")}, "PCM WAV"),
    ],
)
def test_bad_audio_is_refused_with_the_reason(avqa, change, needle) -> None:
    [sample] = data.generate(1, 3, data.ALL_MODALITIES)
    item = {k: v for k, v in (raw_item(sample) | change).items() if v is not None}
    response = httpx.post(f"{avqa.url}/v1/models/{MODEL}/infer", json=item, timeout=30)
    assert response.status_code == 422
    assert needle in response.json()["error"]["message"]


def test_a_model_without_audio_refuses_it(avqa) -> None:
    [sample] = data.generate(1, 4, data.ALL_MODALITIES)
    response = httpx.post(f"{avqa.url}/v1/models/demo/infer", json=raw_item(sample), timeout=30)
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "model demo takes no 'audio'"
