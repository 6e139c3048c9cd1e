"""A kept Write API connection through a function instance that gets no CPU between requests: the
ingest function's whole process group is stopped (SIGSTOP: every thread, gRPC's own included, frozen, as
Cloud Functions gen2 may freeze an idle instance) and resumed, then the next request is written. A pause
shorter than the connection's spare life reuses the kept connection; a longer one opens a new one. With
insertAll the same pauses show the HTTP path survives them too."""

from __future__ import annotations

import http.client
import os
import signal
import time

import pytest
from google.cloud import bigquery

from infra.local.stack import Stack
from personas_warehouse.writers.storage_write import CONNECTION_SECONDS, MIN_CONNECTION_LIFE, default_stream
from tests.integration.conftest import identify, query, wait_rows
from tests.integration.test_group_commit_e2e import counters, push_body, storage_write


def post(stack: Stack, body: bytes) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", stack.config.ingest_port, timeout=60)
    try:
        connection.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        return answer.status
    finally:
        connection.close()


def frozen_for(stack: Stack, seconds: float) -> None:
    """No CPU for the ingest function during `seconds`."""
    group = stack.pids["ingest"]  # the launcher starts each process in a session (and group) of its own
    os.killpg(group, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.killpg(group, signal.SIGCONT)


@pytest.mark.both_writers
def test_writes_after_the_instance_had_no_cpu(stack: Stack, bq: bigquery.Client, space: str) -> None:
    def call(n: int) -> bytes:
        return push_body(identify(f"u{n}", f"{space}-m{n}", "2026-12-01T10:00:00Z"), f"{space}-p{n}", space)

    stream = default_stream(stack.config.project, f"personas_{space}", "identifies")

    def connections() -> int:
        """AppendRows connections opened to this test's table (other tests' redeliveries may open others)."""
        return int(counters(stack)["appendRowsConnectionsByStream"].get(stream, 0))

    assert post(stack, call(0)) == 204  # creates the table; the Write API's connection is kept
    before = connections()
    frozen_for(stack, 3)  # less than the connection's spare life: it is taken again
    assert post(stack, call(1)) == 204
    reused = connections()
    frozen_for(stack, CONNECTION_SECONDS - MIN_CONNECTION_LIFE)  # past it: a new connection
    assert post(stack, call(2)) == 204
    after = connections()
    rows = wait_rows(bq, f"SELECT id FROM `{stack.config.project}.personas_{space}.identifies`", 3)
    assert sorted(r["id"] for r in rows) == [f"{space}-m{n}" for n in range(3)]
    if storage_write(stack):
        assert (before, reused, after) == (1, 1, 2)
    assert query(bq, f"SELECT COUNT(*) AS n FROM `{stack.config.project}.personas_{space}.identifies`")[0]["n"] == 3
