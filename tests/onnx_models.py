"""Tests build their small models with the project's own builders."""

from fusionserve.zoo.tiny_models import (
    heavy_model,
    lookup_model,
    masked_sum_model,
    mlp_model,
    scale_model,
)

__all__ = ["heavy_model", "lookup_model", "masked_sum_model", "mlp_model", "scale_model"]
