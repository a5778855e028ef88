"""The console's playground with a model that writes text, in a real browser.

The tiny generation model (tests/generation_models.py) is served; the playground asks it
a generated question and shows the answer as its tokens stream in (``fetch`` reading the
Server-Sent Events of ``POST /v1/models/<m>/generate``). The page exposes the job id
(from ``X-Job-Id``) and counts the token events on the answer element, so the test
compares what streamed with the job's final record.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from browser import checked, chromium, needs_chromium, text
from generation_models import tiny_generator
from helpers import b64, wait_until

from fusionserve.zoo import data

pytestmark = needs_chromium
MODEL = "tiny_gen"
CAP = 24


@pytest.fixture(scope="module")
def stack(module_stack_factory, tmp_path_factory: pytest.TempPathFactory):
    repository = tmp_path_factory.mktemp("repository")
    tiny_generator(repository, MODEL, max_new_tokens=CAP, max_active=4, eos_slope=0.2)
    stack = module_stack_factory(repository)
    stack.start_api()
    stack.start_worker(MODEL)
    stack.wait_ready(MODEL, 1)
    return stack


@pytest.fixture
def browser(stack, tmp_path: Path, request) -> Iterator:
    driver = chromium()
    yield driver
    checked(driver, stack.url, tmp_path / f"{request.node.name}.png")


def open_playground(browser, stack, sample_seed: int) -> None:
    """The playground on the generator (its controls shown) with a generated sample."""
    from selenium.webdriver.support.ui import Select

    browser.get(f"{stack.url}/console#playground")
    controls = browser.find_element("id", "pg-gen")
    wait_until(lambda: controls.get_attribute("data-model") == MODEL, "the model was not read")
    assert Select(browser.find_element("id", "pg-model")).first_selected_option.text == MODEL
    assert controls.is_displayed()
    assert browser.find_element("id", "pg-max-tokens").get_attribute("max") == str(CAP)
    seed = browser.find_element("id", "pg-seed")
    seed.clear()
    seed.send_keys(str(sample_seed))
    browser.find_element("id", "pg-sample").click()
    question = browser.find_element("id", "pg-question")
    wait_until(lambda: question.get_attribute("value"), "no sample")


def fill(browser, element_id: str, value: str) -> None:
    field = browser.find_element("id", element_id)
    field.clear()
    field.send_keys(value)


def answer(browser) -> dict:
    """The answer element's data attributes (jobId, tokens, status...), read in one go."""
    return browser.execute_script(
        "const e = document.getElementById('pg-answer'); return e ? {...e.dataset} : {}"
    )


def test_the_playground_streams_a_generated_answer_as_it_is_written(stack, browser) -> None:
    described = httpx.get(f"{stack.url}/v1/models/{MODEL}", timeout=30).json()
    assert described["config"]["task"] == "generate"  # how the console tells a generator
    open_playground(browser, stack, 3)
    fill(browser, "pg-max-tokens", str(CAP))
    fill(browser, "pg-temperature", "0.8")
    fill(browser, "pg-gen-seed", "42")
    browser.find_element("id", "pg-submit").click()
    wait_until(lambda: answer(browser).get("status"), "the answer never finished")
    shown = answer(browser)
    assert shown["status"] == "done", text(browser, "pg-result")
    job = httpx.get(f"{stack.url}/v1/jobs/{shown['jobId']}", timeout=30).json()
    assert job["status"] == "done"
    assert len(job["tokens"]) > 1  # a question whose answer takes several tokens
    assert int(shown["tokens"]) == len(job["tokens"])  # a token event per token, before done
    assert "replaced" not in shown  # the streamed pieces alone made the text
    assert text(browser, "pg-answer") == job["text"]
    assert text(browser, "pg-finish") == job["finish_reason"]
    timings = text(browser, "pg-timings")
    assert "first token after" in timings and "tokens/s" in timings
    assert f"{len(job['tokens'])} tokens" in timings

    # Asked again with the same seed: the same text (the parameters were sent).
    browser.find_element("id", "pg-submit").click()
    wait_until(
        lambda: (
            answer(browser).get("jobId") not in (None, shown["jobId"])
            and answer(browser).get("status")
        ),
        "the second answer never finished",
    )
    assert answer(browser)["status"] == "done"
    assert text(browser, "pg-answer") == job["text"]


def test_a_refused_generation_request_shows_the_servers_error(stack, browser) -> None:
    browser.expected_errors = [
        f"/v1/models/{MODEL}/generate - Failed to load resource: "
        "the server responded with a status of 422"
    ]
    open_playground(browser, stack, 4)
    fill(browser, "pg-max-tokens", str(CAP + 1))
    browser.find_element("id", "pg-submit").click()
    wait_until(lambda: text(browser, "pg-error"), "no error shown")
    assert "HTTP 422" in text(browser, "pg-error")
    assert f"max_new_tokens must be at most {CAP}" in text(browser, "pg-error")
    assert browser.find_element("id", "pg-submit").is_enabled()


REPLAY = """
const [wire, size, job] = arguments;
const bytes = new Uint8Array(wire);
const real = window.fetch;
window.fetch = (url, options) => {
  if (!String(url).endsWith("/generate")) return real(url, options);
  let at = 0;
  const body = new ReadableStream({
    pull(controller) {
      if (at >= bytes.length) return controller.close();
      controller.enqueue(bytes.slice(at, at + size));
      at += size;
    },
  });
  const headers = { "Content-Type": "text/event-stream", "X-Job-Id": job };
  return Promise.resolve(new Response(body, { status: 200, headers }));
};
"""
"""Answers the page's next /generate with ``wire`` (bytes), ``size`` bytes per read."""


def test_a_restart_mid_stream_starts_the_answer_again(stack, browser) -> None:
    """A worker lost mid-sequence: the events a client then reads (a real job's wire bytes,
    its first tokens, a restart, all of them again) in small reads that split events."""
    [sample] = data.generate(1, 5)
    question = {"text": sample.question, "image": b64(data.png_bytes(sample.image))}
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        submitted = http.post(f"/v1/models/{MODEL}/generate", json=question)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        job = http.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()
        wire = http.get(f"/v1/jobs/{job_id}/events").content
    events = wire.split(b"\n\n")
    assert len(job["tokens"]) > 1 and events[0].startswith(b"id: ")
    restart = b'id: 0-1\nevent: restart\ndata: {"reason": "the worker was lost"}\n\n'
    replayed = b"\n\n".join(events[:2]) + b"\n\n: keep-alive\n\n" + restart + wire
    open_playground(browser, stack, 5)
    browser.execute_script(REPLAY, list(replayed), 7, job_id)
    browser.find_element("id", "pg-submit").click()
    wait_until(lambda: answer(browser).get("status"), "the answer never finished")
    shown = answer(browser)
    assert shown["status"] == "done" and shown["jobId"] == job_id
    assert shown["restarts"] == "1"
    assert int(shown["tokens"]) == len(job["tokens"])  # counted again from the restart
    assert "replaced" not in shown
    assert text(browser, "pg-answer") == job["text"]
