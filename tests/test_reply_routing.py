"""Results are published only to a process that waits for them.

A ``/v2`` request waits on the API process that submitted it: its result is published
to that process's reply channel. A ``/v1`` submission answers 202 and waits for
nothing: its result is stored and published to nobody, until a long-poll registers.
"""

from __future__ import annotations

import time

import httpx
from helpers import demo_item, wait_until
from test_versions import v2_body

from batching import keys
from fusionserve.zoo import data

MODEL = "demo"


def published(pubsub, quiet_s: float = 0.5) -> list[bytes]:
    """Channels of the reply messages that arrive until ``quiet_s`` passes with none."""
    channels = []
    last = time.monotonic()
    while time.monotonic() - last < quiet_s:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "pmessage":
            channels.append(message["channel"])
            last = time.monotonic()
    return channels


def test_a_v1_result_is_published_to_nobody_and_a_v2_result_to_its_submitter(
    served_demo, module_redis
) -> None:
    pubsub = module_redis.pubsub()
    pubsub.psubscribe(keys.reply_channel("*"))
    wait_until(
        lambda: (m := pubsub.get_message(timeout=0.1)) is not None and m["type"] == "psubscribe",
        "no psubscribe confirmation",
        10,
    )
    sample = data.generate(1, 11)[0]
    item = demo_item(sample, as_tensors=False, tokenizer=None)  # raw text and a PNG
    with httpx.Client(base_url=served_demo.url, timeout=30) as http:
        response = http.post(f"/v1/models/{MODEL}/infer", json=item)
        assert response.status_code == 202, response.text
        job = response.json()["job_id"]
        wait_until(
            lambda: http.get(f"/v1/jobs/{job}").json()["status"] == "done",
            "the /v1 job never finished",
            30,
        )
        assert published(pubsub) == []  # stored, read by a plain poll, published to no one

        response = http.post(f"/v2/models/{MODEL}/infer", json=v2_body(sample))
        assert response.status_code == 200, response.text
        assert len(published(pubsub)) == 1  # the submitting process's channel, once
    pubsub.close()
