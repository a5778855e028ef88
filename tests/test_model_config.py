import pytest
from pydantic import ValidationError

from batching.model_config import ModelConfig, VersionPolicy


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ({}, [7]),
        ({"latest": 2}, [3, 7]),
        ({"all": True}, [1, 3, 7]),
        ({"specific": [1, 7, 9]}, [1, 7]),
    ],
)
def test_version_policy_selects_from_the_versions_on_disk(policy: dict, served: list[int]) -> None:
    assert VersionPolicy(**policy).select([7, 1, 3]) == served


def test_config_rejects_unknown_batching_keys() -> None:
    with pytest.raises(ValidationError, match="max_batch"):
        ModelConfig.model_validate({"name": "m", "batching": {"max_batch": 3}})


def test_a_generation_model_names_its_two_graphs_and_its_limits() -> None:
    config = ModelConfig.model_validate(
        {"name": "g", "task": "generate", "generation": {"bos_id": 3, "eos_id": 4}}
    )
    assert config.graph_files == ("encoder.onnx", "decoder.onnx")
    assert config.generation is not None and config.generation.max_new_tokens == 32
    assert ModelConfig.model_validate({"name": "c"}).graph_files == ("model.onnx",)


@pytest.mark.parametrize(
    "raw",
    [
        {"name": "g", "task": "generate"},  # no [generation]
        {"name": "g", "generation": {"bos_id": 3, "eos_id": 4}},  # [generation], not its task
        {"name": "g", "task": "generate", "generation": {"bos_id": 3}},  # no eos_id
        {
            "name": "g",
            "task": "generate",
            "generation": {"bos_id": 3, "eos_id": 4, "max_active": 0},
        },
        {"name": "g", "task": "generate", "generation": {"bos_id": 3, "eos_id": 4, "top": 1}},
    ],
)
def test_generation_config_is_checked(raw: dict) -> None:
    with pytest.raises(ValidationError):
        ModelConfig.model_validate(raw)
