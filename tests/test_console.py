"""The console in a real browser (headless Chromium via Selenium): live overview, the
playground answering a generated question, a batch's progress to 100 % and its results.
Every page is checked for JavaScript console errors and for requests leaving the
machine; every test saves a screenshot next to its logs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from browser import checked, chromium, needs_chromium, text
from conftest import DEMO
from helpers import b64, wait_until

from fusionserve.zoo import data

pytestmark = needs_chromium
MODEL = "demo"


@pytest.fixture(scope="module")
def stack(served_demo):
    stack = served_demo
    stack.start_bulk_worker()
    return stack


@pytest.fixture
def browser(stack, tmp_path: Path, request) -> Iterator:
    driver = chromium()
    yield driver
    checked(driver, stack.url, tmp_path / f"{request.node.name}.png")


def test_overview_shows_live_throughput_after_traffic(stack, browser) -> None:
    browser.get(f"{stack.url}/console#overview")
    wait_until(lambda: text(browser, "workers-demo") == "1", "the overview never loaded")
    [sample] = data.generate(1, 11)
    item = {"text": sample.question, "image": b64(data.png_bytes(sample.image))}
    with httpx.Client(base_url=stack.url, timeout=30) as http:

        def traffic() -> bool:
            for _ in range(20):
                http.post(f"/v1/models/{MODEL}/infer", json={"items": [item] * 8})
            return float(text(browser, "throughput-demo") or 0) > 0

        wait_until(traffic, "throughput stayed at zero", timeout_s=30)
    assert "p50" not in text(browser, "latency-demo")  # figures, not placeholders
    assert text(browser, "depth-demo").startswith("1:")
    assert browser.find_element("id", "chart-demo").find_elements("css selector", "svg")


def test_playground_answers_a_generated_question(stack, browser) -> None:
    from selenium.webdriver.support.ui import Select

    browser.get(f"{stack.url}/console#playground")
    wait_until(lambda: len(Select(browser.find_element("id", "pg-model")).options) > 0, "no models")
    Select(browser.find_element("id", "pg-model")).select_by_value(MODEL)
    controls = browser.find_element("id", "pg-gen")
    wait_until(lambda: controls.get_attribute("data-model") == MODEL, "the model was not read")
    assert not controls.is_displayed()  # a classifier: no generation controls
    seed = browser.find_element("id", "pg-seed")
    seed.clear()
    seed.send_keys("20240601")
    browser.find_element("id", "pg-sample").click()
    wait_until(
        lambda: browser.find_element("id", "pg-question").get_attribute("value"), "no sample"
    )
    browser.find_element("id", "pg-submit").click()
    wait_until(lambda: text(browser, "pg-answer"), "no answer shown")
    [expected] = data.generate(1, 20240601)
    assert text(browser, "pg-answer") == expected.answer
    assert len(browser.find_elements("css selector", "#pg-labels tr")) == 5
    assert "batch of" in text(browser, "pg-timings") and "compute" in text(browser, "pg-timings")


def test_a_batch_reaches_100_percent_and_its_results_download(stack, browser) -> None:
    samples = data.generate(12, 5)
    lines = [
        orjson.dumps(
            {"custom_id": f"c{i}", "text": s.question, "image": b64(data.png_bytes(s.image))}
        )
        for i, s in enumerate(samples)
    ]
    created = httpx.post(
        f"{stack.url}/v1/batches", params={"model": MODEL}, content=b"\n".join(lines), timeout=30
    ).json()
    batch_id = created["batch_id"]
    browser.get(f"{stack.url}/console#batches")
    selector = f"progress[data-batch='{batch_id}']"

    def complete() -> bool:
        bars = browser.find_elements("css selector", selector)
        return bool(bars) and bars[0].get_attribute("value") == bars[0].get_attribute("max") == "12"

    wait_until(complete, "the progress bar never reached 100 %", timeout_s=60)
    assert "100 %" in browser.find_element("id", f"batch-{batch_id}").text
    browser.find_element("css selector", f"button[data-results='{batch_id}']").click()
    wait_until(lambda: browser.find_elements("id", f"download-{batch_id}"), "no download link")

    def refreshes() -> int:
        return int(browser.find_element("id", "batch-table").get_attribute("data-refreshes"))

    seen = refreshes()
    wait_until(lambda: refreshes() > seen + 1, "the batch table stopped refreshing")
    link = browser.find_element("id", f"download-{batch_id}")  # kept across the refreshes
    assert link.get_attribute("data-lines") == "12"
    assert link.get_attribute("download") == f"{batch_id}.jsonl"


def test_with_api_keys_the_console_asks_for_one_and_shows_only_its_batches(
    stack_factory, tmp_path: Path, request
) -> None:
    from batching.apikeys import ApiKeys

    keyed = stack_factory(
        DEMO.parent, FUSIONSERVE_AUTH="keys", FUSIONSERVE_DATA_DIR=str(tmp_path / "data")
    )
    keyed.start_api()
    keyed.start_worker(MODEL)
    keyed.wait_ready(MODEL, 1)
    store = ApiKeys(redis.Redis.from_url(keyed.env["REDIS_URL"]))
    _, alice = store.create("alice")
    _, bob = store.create("bob")
    [sample] = data.generate(1, 4)
    line = orjson.dumps({"text": sample.question, "image": b64(data.png_bytes(sample.image))})
    batches = {}
    for name, key in (("alice", alice), ("bob", bob)):
        batches[name] = httpx.post(
            f"{keyed.url}/v1/batches",
            params={"model": MODEL},
            content=line,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        ).json()["batch_id"]

    driver = chromium()
    try:
        driver.get(f"{keyed.url}/console#batches")
        keybox = driver.find_element("id", "keybox")
        wait_until(keybox.is_displayed, "the console never asked for a key")
        driver.find_element("id", "key").send_keys(alice)
        driver.find_element("id", "savekey").click()
        wait_until(lambda: driver.find_elements("id", f"batch-{batches['alice']}"), "no batch")
        assert not driver.find_elements("id", f"batch-{batches['bob']}")
        assert not keybox.is_displayed()
        driver.save_screenshot(str(tmp_path / f"{request.node.name}.png"))
    finally:
        driver.quit()
