"""A submission whose answer Redis did not give in time may still be queued: the API says so."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from test_connection import TIMEOUT_S, settings

from batching import keys
from batching.broker import Broker, NewEntry
from batching.connection import client_from_url
from server.coalesce import OutcomeUnknown, SubmitCoalescer


def test_a_submission_sent_to_a_frozen_redis_is_outcome_unknown_and_may_land(frozen_able) -> None:
    client = client_from_url(frozen_able.url, settings(), purpose="api")
    broker = Broker(client)
    submitter = SubmitCoalescer(broker, TIMEOUT_S)
    entry = NewEntry(
        model="m",
        tensors={"x": np.zeros((1, 2), np.float32)},
        rows=1,
        priority=1,
        levels=1,
        reply_channel="",
        max_queue_size=0,
        deadline_ms=0,
    )
    submitter.submit(entry)  # loads the script and warms the connection
    os.kill(frozen_able.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown):
            submitter.submit(entry)
        assert time.monotonic() - started < 2 * TIMEOUT_S + 2
    finally:
        os.kill(frozen_able.process.pid, signal.SIGCONT)
    # The frozen server still had the command: the "failed" submission was queued after all.
    assert client.xlen(keys.stream("m", 1)) == 2
