"""When to retry, and how long to wait first (pure: shared by the sync and async clients).

Retried: 429 and 503 answers (the server enqueued nothing), and transport failures of
idempotent requests (GETs). A POST is retried after a transport failure only when the
request cannot have been sent (the connection was never made), and after a 503
``outcome_unknown`` (Redis got the submission but did not answer in time) never, so a
submission is never enqueued twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from fusionserve.client.errors import FusionServeError

RETRY_STATUSES = frozenset({429, 503})
OUTCOME_UNKNOWN = "outcome_unknown"
"""The 503 code of a request that may have taken effect: like a lost answer, not a refusal."""
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, ``max_retries`` retries after the first try.

    The n-th retry waits a random time in ``[b/2, b]`` with ``b = min(backoff_max,
    backoff * 2**n)`` ("equal jitter": never zero, and clients refused together spread
    out). A ``Retry-After`` from the server replaces the backoff (plus up to 10 % jitter),
    capped at ``retry_after_max``.
    """

    max_retries: int = 3
    backoff: float = 0.2
    backoff_max: float = 10.0
    retry_after_max: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_max) * random.uniform(1.0, 1.1)
        ceiling = min(self.backoff_max, self.backoff * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)

    def after_error(self, error: FusionServeError, idempotent: bool, attempt: int) -> float | None:
        """The delay before retrying an error answer, or None to give up."""
        if attempt >= self.max_retries or error.status not in RETRY_STATUSES:
            return None
        if error.code == OUTCOME_UNKNOWN and not idempotent:
            return None
        return self.delay(attempt, error.retry_after)

    def after_transport(
        self, exc: httpx.TransportError, idempotent: bool, attempt: int
    ) -> float | None:
        """The delay before retrying a request that got no answer, or None to give up."""
        if attempt >= self.max_retries:
            return None
        if idempotent or isinstance(exc, NOT_SENT):
            return self.delay(attempt)
        return None
