"""The worker's ONNX Runtime layer: provider choice, GPU options, IO binding, warm-up.

No GPU here: provider selection and options are checked as logic, and the IO-binding
path (what a CUDA session runs) is run on CPU through ``FUSIONSERVE_IO_BINDING=1``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import DEMO

from batching.model_config import InstancesConfig
from fusionserve.zoo import data
from fusionserve.zoo.tokenizer import encode_batch
from worker.repository import scan
from worker.runtime import CPU, CUDA, TENSORRT, ModelRuntime, choose_providers, provider_options


def demo_files():
    [files] = scan(DEMO.parent, ["demo"])
    return files


def demo_batch(n: int) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    samples = data.generate(n, 99)
    tokenizer = Tokenizer.from_file(str(DEMO / "tokenizer.json"))
    ids, mask = encode_batch(tokenizer, [s.question for s in samples])
    images = data.normalize(np.stack([s.image for s in samples]))
    return {"input_ids": ids, "attention_mask": mask, "image": images}


@pytest.mark.parametrize(
    ("available", "tensorrt", "chosen"),
    [
        ([CPU], False, [CPU]),
        ([], False, [CPU]),
        ([CUDA, CPU], False, [CUDA, CPU]),
        ([TENSORRT, CUDA, CPU], False, [CUDA, CPU]),
        ([TENSORRT, CUDA, CPU], True, [TENSORRT, CUDA, CPU]),
        (["AzureExecutionProvider", CPU], True, [CPU]),
    ],
)
def test_providers_best_first(available, tensorrt, chosen) -> None:
    assert choose_providers(available, tensorrt=tensorrt) == chosen


def test_tensorrt_is_opt_in_through_the_environment(monkeypatch) -> None:
    available = [TENSORRT, CUDA, CPU]
    monkeypatch.delenv("FUSIONSERVE_TENSORRT", raising=False)
    assert choose_providers(available) == [CUDA, CPU]
    monkeypatch.setenv("FUSIONSERVE_TENSORRT", "1")
    assert choose_providers(available)[0] == TENSORRT


def test_provider_options_carry_device_memory_cap_and_engine_cache(tmp_path: Path) -> None:
    capped = InstancesConfig(device=1, gpu_memory_mb=512)
    trt, cuda, cpu = provider_options([TENSORRT, CUDA, CPU], capped, tmp_path)
    assert cuda == {
        "device_id": 1,
        "gpu_mem_limit": 512 * 2**20,
        "arena_extend_strategy": "kSameAsRequested",
    }
    assert trt["device_id"] == 1 and trt["trt_engine_cache_path"] == str(tmp_path)
    assert trt["trt_max_workspace_size"] == 512 * 2**20
    assert cpu == {}
    [uncapped] = provider_options([CUDA], InstancesConfig(), tmp_path)
    assert uncapped == {"device_id": 0}


ON_GPU = CUDA in ort.get_available_providers()


@pytest.mark.skipif(ON_GPU, reason="this onnxruntime has CUDA: there is no fallback to see")
def test_cpu_fallback_is_said_once_and_runs_plainly(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="worker.runtime"):
        runtime = ModelRuntime(demo_files(), threads=1)
    assert runtime.providers == [CPU]
    assert runtime.device is None
    said = [r.getMessage() for r in caplog.records if "runs on CPU" in r.getMessage()]
    assert len(said) == 1 and "no GPU provider" in said[0]


def test_gpu_sessions_bind_on_their_device() -> None:
    runtime = ModelRuntime(demo_files(), threads=1)
    runtime.providers = [CUDA, CPU]  # what a CUDA build reports: the capability check
    assert runtime._binding_device(1) == ("cuda", 1)
    runtime.providers = [TENSORRT, CUDA, CPU]
    assert runtime._binding_device(0) == ("cuda", 0)


def test_io_binding_path_gives_the_plain_results(monkeypatch) -> None:
    plain = ModelRuntime(demo_files(), threads=1)
    monkeypatch.setenv("FUSIONSERVE_IO_BINDING", "1")
    bound = ModelRuntime(demo_files(), threads=1)
    assert bound.device == (("cuda", 0) if ON_GPU else ("cpu", 0))
    for n in (1, 7, 64):
        batch = demo_batch(n)
        expected, got = plain.run(batch), bound.run(batch)
        assert got.keys() == expected.keys() == {"logits"}
        assert got["logits"].shape == (n, 10)
        np.testing.assert_allclose(got["logits"], expected["logits"], atol=1e-4 if ON_GPU else 1e-6)


def test_warm_up_runs_the_preferred_sizes_with_dummy_inputs() -> None:
    runtime = ModelRuntime(demo_files(), threads=1)
    assert runtime.warm_up() == [1, 64]  # no preferred sizes: 1 and max_batch_size
    batch = runtime.dummy_batch(3)
    assert batch["input_ids"].shape == (3, 8) and batch["input_ids"].dtype == np.int64
    assert batch["image"].shape == (3, 3, 64, 64) and batch["image"].dtype == np.float32
