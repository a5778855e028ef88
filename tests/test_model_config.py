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
