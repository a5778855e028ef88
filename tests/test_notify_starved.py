"""A busy API process is not a dead Redis: the reply listener keeps what arrived meanwhile.

Under gevent one greenlet doing CPU-bound work (parsing a large JSON body) holds the
whole process: the listener's poll returns only when that work ends, long after its
PING interval. Silence it could not have heard is not Redis's silence: the
listener must not drop its connection for it (replies published while it resubscribes
are lost: synchronous requests that had run answered 503 ``reply_lost``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

TIMEOUT_S = 0.5

PUBLISHER = textwrap.dedent(
    """
    import sys, redis
    client = redis.Redis.from_url(sys.argv[1])
    for record in sys.argv[3:]:
        client.publish(sys.argv[2], record + "\\ndone\\nresult")
    """
)

STARVED_PROCESS = textwrap.dedent(
    """
    import json, logging, subprocess, sys, time
    from gevent import monkey

    monkey.patch_all()
    import gevent, redis
    from server.notify import ReplyListener

    url, timeout_s, publisher = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("server.notify").addHandler(handler)
    listener = ReplyListener(redis.Redis.from_url(url), timeout_s)
    listener.ensure_started()
    records = [f"fs:{{m}}:job:{i}-1" for i in range(4)]
    waiters = [listener.register(r) for r in records]
    gevent.sleep(0.1)
    # Busy for longer than the PING interval plus the Redis timeout, yielding nothing:
    # the listener cannot run meanwhile. Then the replies come, and the listener must
    # still be subscribed to hear them.
    busy_until = time.monotonic() + 4 * timeout_s
    while time.monotonic() < busy_until:
        pass
    gevent.sleep(2 * timeout_s)
    subprocess.run([sys.executable, "-c", publisher, url, listener.channel, *records], check=True)
    deadline = time.monotonic() + 10
    while not all(w.event.is_set() for w in waiters) and time.monotonic() < deadline:
        gevent.sleep(0.05)
    delivered = sum(w.result == b"result" for w in waiters)
    print(json.dumps({"delivered": delivered, "warnings": warnings}))
    """
)


def test_replies_that_arrive_while_the_process_is_busy_are_delivered(redis_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", STARVED_PROCESS, redis_url, str(TIMEOUT_S), PUBLISHER],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["warnings"] == [], report  # Redis answered: nothing was declared lost
    assert report["delivered"] == 4, report
