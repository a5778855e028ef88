"""``/openapi.json`` describes ``/v1``; schemathesis throws generated requests at the real API
(loopback HTTP, real Redis and worker): no response is a 500, every error has the JSON
error shape, and every response matches the document."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
import schemathesis.checks as checks
from hypothesis import HealthCheck, given, settings

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


CONFORMANCE = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]
"""What every answer must honour. Not positive_data_acceptance: a request can fit the
schema and still not fit the model (a 422 no JSON Schema can foresee)."""
EXAMPLES = 40
"""Generated requests per operation (13 operations): bounded, a few seconds each."""


def test_no_generated_request_gets_a_500_or_a_shapeless_error(api_schema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            response = case.call(timeout=30)
            assert response.status_code < 500, f"{case.method} {case.path}: {response.text[:300]}"
            if response.status_code >= 400:
                error = response.json()["error"]
                assert isinstance(error["code"], str) and isinstance(error["message"], str)
            case.validate_response(response, checks=CONFORMANCE)

        check()
