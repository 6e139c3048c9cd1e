"""The local Cloud Scheduler stand-in keeps `users` current on its own: a call published to Pub/Sub
reaches `users` with nobody running the sync by hand (what `make up` does, every 60 s there)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from google.cloud import bigquery

from infra.local.scheduler import Scheduler
from infra.local.stack import Stack
from tests.integration.conftest import identify, query

pytestmark = pytest.mark.integration
P = "personas-local"


def test_scheduled_syncs_bring_a_published_trait_into_users(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str], space: str
) -> None:
    assert stack.config.sync_every_seconds == 0  # the session stack has no scheduler of its own
    lines: list[str] = []
    # spaces=[space]: the ticks touch this test's space only, never the spaces other tests sync by hand.
    # Every 10 s: a tick's request times out at 9 s, and a sync of users and identities on the emulator takes a
    # few seconds (the first one, a full rebuild of both, longer).
    scheduler = Scheduler(stack.config.sync_url, 10, [space], log=lines.append)
    scheduler.start()
    try:
        publish(identify("u1", "sched-1", "2026-11-01T10:00:00Z", plan="gold", seats=3), space=space)
        found: list[dict[str, Any]] = []
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                found = query(bq, f"SELECT * FROM `{P}.personas_{space}.users`")
            except Exception:  # no `users` before the first sync that saw the call
                found = []
            # A space's first run rebuilds every derived table and can outlast a tick; the next ones answer.
            if found and any(t.ok for t in scheduler.ticks):
                break
            time.sleep(0.5)
    finally:
        assert scheduler.stop(wait=10), "the scheduler did not stop"
    log = "\n".join(lines)
    assert [(r["id"], r["plan"], r["seats"]) for r in found] == [("u1", "gold", 3)], log
    assert len(scheduler.ticks) >= 1 and any(t.ok for t in scheduler.ticks), log
