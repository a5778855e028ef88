"""Real Triton clients against fusionserve: tritonclient.http with binary and JSON tensors."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest
from conftest import DEMO
from tokenizers import Tokenizer

from fusionserve.zoo import data
from fusionserve.zoo.tokenizer import encode_batch

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "demo"


@pytest.fixture(scope="module")
def triton(module_stack_factory) -> Iterator:
    stack = module_stack_factory(DEMO.parent)
    stack.start_api()
    stack.start_worker(MODEL)
    stack.wait_ready(MODEL, 1)
    client = httpclient.InferenceServerClient(stack.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def batch() -> dict[str, np.ndarray]:
    samples = data.generate(5, data.HELD_OUT_SEED)
    tokenizer = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    ids, mask = encode_batch(tokenizer, [s.question for s in samples])
    images = data.normalize(np.stack([s.image for s in samples]))
    return {"input_ids": ids, "attention_mask": mask, "image": images, "samples": samples}


def reference(batch: dict) -> np.ndarray:
    session = ort.InferenceSession(str(DEMO / "1" / "model.onnx"))
    feeds = {k: batch[k] for k in ("input_ids", "attention_mask", "image")}
    return session.run(["logits"], feeds)[0]


def inputs(batch: dict, binary: bool) -> list:
    out = []
    for name, datatype in (("input_ids", "INT64"), ("attention_mask", "INT64"), ("image", "FP32")):
        tensor = httpclient.InferInput(name, list(batch[name].shape), datatype)
        tensor.set_data_from_numpy(batch[name], binary_data=binary)
        out.append(tensor)
    return out


def test_health_and_metadata(triton) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready(MODEL)
    server = triton.get_server_metadata()
    assert server["name"] == "fusionserve" and "binary_tensor_data" in server["extensions"]
    meta = triton.get_model_metadata(MODEL)
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    shapes = {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]}
    assert shapes["input_ids"] == ("INT64", [-1, -1])
    assert shapes["image"] == ("FP32", [-1, 3, 64, 64])
    config = triton.get_model_config(MODEL)
    assert config["max_batch_size"] == 64
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert {i["name"]: i["dims"] for i in config["input"]}["image"] == [3, 64, 64]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_matches_onnxruntime(triton, batch, binary: bool) -> None:
    outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
    result = triton.infer(MODEL, inputs(batch, binary), outputs=outputs, request_id="r1")
    assert result.get_response()["id"] == "r1"
    np.testing.assert_allclose(result.as_numpy("logits"), reference(batch), atol=1e-4)


def test_bytes_text_input_is_tokenized_on_the_server(triton, batch) -> None:
    questions = np.array([s.question.encode() for s in batch["samples"]], dtype=np.object_)
    text = httpclient.InferInput("text", [len(questions)], "BYTES")
    text.set_data_from_numpy(questions)
    image = httpclient.InferInput("image", list(batch["image"].shape), "FP32")
    image.set_data_from_numpy(batch["image"])
    result = triton.infer(MODEL, [text, image])
    np.testing.assert_allclose(result.as_numpy("logits"), reference(batch), atol=1e-4)
    answers = result.as_numpy("logits").argmax(axis=1)
    assert [data.LABELS[a] for a in answers] == [data.LABELS[s.label] for s in batch["samples"]]


def test_errors_raise_with_the_servers_message(triton, batch) -> None:
    with pytest.raises(InferenceServerException, match="unknown model 'nosuch'"):
        triton.infer("nosuch", inputs(batch, True))
    with pytest.raises(InferenceServerException, match="unknown version '7'"):
        triton.infer(MODEL, inputs(batch, True), model_version="7")
    bad = inputs(batch, True)[:2]
    with pytest.raises(InferenceServerException, match=r"missing input\(s\) \['image'\]"):
        triton.infer(MODEL, bad)
    with pytest.raises(InferenceServerException, match="unknown output"):
        triton.infer(MODEL, inputs(batch, True), outputs=[httpclient.InferRequestedOutput("nope")])
    assert not triton.is_model_ready("nosuch")


def test_statistics_and_repository_index(triton, batch) -> None:
    triton.infer(MODEL, inputs(batch, True))
    [stats] = triton.get_inference_statistics(MODEL)["model_stats"]
    assert stats["name"] == MODEL and stats["version"] == "1"
    assert stats["inference_stats"]["success"]["count"] >= 1
    assert stats["inference_count"] >= len(batch["samples"])
    assert {b["batch_size"] for b in stats["batch_stats"]} >= {len(batch["samples"])}
    index = triton.get_model_repository_index()
    assert {"name": MODEL, "version": "1", "state": "READY", "reason": ""} in index
