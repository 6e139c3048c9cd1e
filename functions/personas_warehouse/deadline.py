"""The time one invocation may spend on BigQuery, and which of BigQuery's errors are worth retrying
within it. Every BigQuery call gets `retry=deadline.retry(), timeout=deadline.budget(...)`, so no
retry outlives the function's deadline (google-cloud-bigquery's own default retry runs 600 s)."""

from __future__ import annotations

import time
from collections.abc import Callable

import requests
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry

from personas_warehouse.errors import TransientError

_TRANSIENT = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    gexc.DeadlineExceeded,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT):
        return True
    if isinstance(exc, gexc.Forbidden):  # quota and rate limits come back as 403
        return any(e.get("reason") in ("rateLimitExceeded", "quotaExceeded") for e in exc.errors or [])
    return False


class Deadline:
    """The time left for one invocation; every retry inside it stops in time."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._end = clock() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - self._clock())

    def retry(self, cap: float = 30.0) -> Retry:
        return Retry(predicate=is_transient, initial=0.2, maximum=4.0, multiplier=2.0, timeout=self.budget(cap))

    def budget(self, cap: float) -> float:
        left = self.remaining()
        if left <= 0.5:
            raise TransientError("deadline reached before BigQuery answered; Pub/Sub will redeliver")
        return min(cap, left)


FIRST_DELAY, MAX_DELAY = 0.25, 4.0


def pause(sleep: Callable[[float], None], delay: float, deadline: Deadline) -> float:
    """Back off `delay` seconds (TransientError when the deadline leaves no time for it); the next delay."""
    sleep(min(deadline.budget(delay), delay))
    return min(delay * 2, MAX_DELAY)
