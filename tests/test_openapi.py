"""``/openapi.json`` describes ``/v1`` and ``/v2``; schemathesis throws generated requests at the
real API (loopback HTTP, real Redis and worker): no response is a 500, every error has the JSON
error shape (``/v2``: the protocol's ``{"error": "<message>"}``), and every response matches
the document."""

from __future__ import annotations

import math

import httpx
import pytest
import schemathesis
import schemathesis.checks as checks
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

MODEL = "demo"


@pytest.fixture(scope="module")
def served(served_demo):
    return served_demo


@pytest.fixture(scope="module")
def api_schema(served):
    return schemathesis.openapi.from_url(f"{served.url}/openapi.json")


def test_the_document_is_openapi_31_from_the_pydantic_models(served) -> None:
    document = httpx.get(f"{served.url}/openapi.json", timeout=10).json()
    assert document["openapi"] == "3.1.0"
    assert "/v1/models/{name}/infer" in document["paths"]
    assert document["components"]["schemas"]["Submission"]["properties"]["items"]
    assert "BatchStatus" in document["components"]["schemas"]
    assert "/v2/models/{name}/infer" in document["paths"]
    tensor = document["components"]["schemas"]["V2Tensor"]["properties"]
    assert tensor["shape"]["items"] == {"minimum": 0, "type": "integer"}


CONFORMANCE = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]
"""What every answer must honour. Not positive_data_acceptance: a request can fit the
schema and still not fit the model (a 422 no JSON Schema can foresee)."""
EXAMPLES = 40
"""Generated requests per operation and mode (19 runs): bounded, a few seconds each."""


def strategies(operation, inputs: list[tuple[str, str]]):
    """Every operation with requests that fit the document; inference also with requests that
    do not (negative shapes, strings for numbers...), sent to the served model, not to a
    random name's 404, and for ``/v2`` aimed at its real inputs."""
    if not operation.path.endswith("/infer"):
        return [(GenerationMode.POSITIVE, operation.as_strategy())]
    served = {"name": MODEL}
    aim = (lambda case: onto_inputs(case, inputs)) if operation.path.startswith("/v2") else None
    return [
        (mode, operation.as_strategy(mode, path_parameters=served).map(aim or (lambda c: c)))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]


def onto_inputs(case, inputs: list[tuple[str, str]]):
    """Generated tensors renamed to the model's inputs, with their datatypes, and as many
    values as the shape's product says (negative dimensions included): random names would
    stop at "unknown input", far before the checks on shapes and values."""
    tensors = case.body.get("inputs") if isinstance(case.body, dict) else None
    for i, tensor in enumerate(tensors if isinstance(tensors, list) else []):
        if not isinstance(tensor, dict):
            continue
        tensor["name"], tensor["datatype"] = inputs[i % len(inputs)]
        shape = tensor.get("shape")
        if isinstance(shape, list) and all(type(d) is int for d in shape) and shape:
            count = math.prod(shape)
            if 0 <= count <= 4096 and (i % 2 == 0 or not isinstance(tensor.get("data"), list)):
                tensor["data"] = [1] * count  # the rest keep what was generated
    return case


def test_no_generated_request_gets_a_500_or_a_shapeless_error(api_schema, served) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 16
    assert any(o.path == "/v2/models/{name}/infer" for o in operations)
    metadata = httpx.get(f"{served.url}/v2/models/{MODEL}", timeout=10).json()
    inputs = [(t["name"], t["datatype"]) for t in metadata["inputs"]]
    inputs += [("text", "BYTES"), ("image", "BYTES")]  # raw text and images, as the demo takes
    for operation in operations:
        for mode, strategy in strategies(operation, inputs):
            fuzz(strategy, positive=mode is GenerationMode.POSITIVE)


def fuzz(strategy, positive: bool) -> None:
    @given(strategy)
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        response = case.call(timeout=30)
        where = f"{case.method} {case.formatted_path}: {response.text[:300]}"
        assert response.status_code < 500, where
        if response.status_code >= 400 and response.content:
            error = response.json()["error"]
            if case.path.startswith("/v2"):
                assert isinstance(error, str), where
            else:
                assert isinstance(error["code"], str), where
                assert isinstance(error["message"], str), where
        if positive:  # a request outside the document may get an answer outside it too
            case.validate_response(response, checks=CONFORMANCE)

    check()
