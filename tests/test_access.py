"""Who may read what with API keys on (``FUSIONSERVE_AUTH=keys``).

Global statistics and metrics count every tenant's work: operator data. ``/v1/stats``,
``/v2/models/<m>/stats`` and ``/metrics`` need an admin key (``/metrics`` also takes
its own token); a plain key gets 403. ``/console/sample`` needs a key (any key).
"""

from __future__ import annotations

import httpx
import pytest
from conftest import DEMO, METRICS_TOKEN

from batching.apikeys import ApiKeys

MODEL = "demo"

ADMIN_ONLY = (
    "/v1/stats",
    f"/v2/models/{MODEL}/stats",
    f"/v2/models/{MODEL}/versions/1/stats",
    "/metrics",
)


@pytest.fixture(scope="module")
def stack(keyed_demo):
    return keyed_demo


@pytest.fixture(scope="module")
def tokens(stack, module_redis) -> dict[str, str | None]:
    store = ApiKeys(module_redis)
    _, plain = store.create("plain")
    _, admin = store.create("admin", admin=True)
    return {"none": None, "wrong": "fsk_nope_nope", "plain": plain, "admin": admin}


def get(url: str, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{url}{path}", headers=headers, timeout=30)


def error_of(response: httpx.Response) -> str:
    """The message, in the /v1 shape or KServe's ``{"error": "<message>"}``."""
    error = response.json()["error"]
    return error if isinstance(error, str) else f"{error['code']}: {error['message']}"


@pytest.mark.parametrize("path", ADMIN_ONLY)
def test_global_statistics_need_an_admin_key(stack, tokens, path: str) -> None:
    for who in ("none", "wrong"):
        response = get(stack.url, path, tokens[who])
        assert response.status_code == 401, (who, response.text)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert error_of(response)
    plain = get(stack.url, path, tokens["plain"])
    assert plain.status_code == 403, plain.text
    assert "admin" in error_of(plain)
    if path.startswith("/v1") or path == "/metrics":
        assert plain.json()["error"]["code"] == "forbidden"
    admin = get(stack.url, path, tokens["admin"])
    assert admin.status_code == 200, admin.text
    if path == "/metrics":
        assert "fusionserve_queue_depth" in admin.text
    elif path == "/v1/stats":
        assert MODEL in admin.json()["models"]
    else:
        assert admin.json()["model_stats"][0]["name"] == MODEL


def test_metrics_still_take_their_own_token(stack, tokens) -> None:
    scrape = get(stack.url, "/metrics", METRICS_TOKEN)
    assert scrape.status_code == 200 and "fusionserve_ready_workers" in scrape.text


def test_metrics_need_an_admin_key_when_no_metrics_token_is_set(
    module_stack_factory, stack, tokens
) -> None:
    """Keys on and no metrics token: /metrics is not left open."""
    other = module_stack_factory(DEMO.parent, FUSIONSERVE_AUTH="keys")
    other.start_api()
    assert get(other.url, "/metrics", None).status_code == 401
    plain = get(other.url, "/metrics", tokens["plain"])
    assert plain.status_code == 403 and plain.json()["error"]["code"] == "forbidden"
    assert get(other.url, "/metrics", tokens["admin"]).status_code == 200


def test_console_sample_needs_a_key(stack, tokens) -> None:
    path = f"/console/sample?model={MODEL}&seed=3"
    anonymous = get(stack.url, path, None)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.json()["error"]["code"] == "unauthorized"
    assert get(stack.url, path, tokens["wrong"]).status_code == 401
    for who in ("plain", "admin"):
        response = get(stack.url, path, tokens[who])
        assert response.status_code == 200, (who, response.text)
        assert response.json()["question"]
    # The page and its scripts stay open: the page asks for the key.
    assert get(stack.url, "/console", None).status_code == 200
    assert get(stack.url, "/console/console.js", None).status_code == 200
