"""Group commit through the real stack, with each writer: single-call push requests in flight at once
share writes (insertAll requests, or Storage Write API appends), and every call answered 204 is in
BigQuery once."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from google.cloud import bigquery

from infra.local.stack import Stack
from tests.integration.conftest import identify, query

CALLS = 96
IN_FLIGHT = 32


def counters(stack: Stack) -> dict[str, Any]:
    """What bqemulator received so far (the local launcher counts it): insertAll POSTs, AppendRows requests
    and AppendRows connections (in all, and per stream in "appendRowsConnectionsByStream")."""
    with urllib.request.urlopen(f"{stack.config.bigquery_url}/_personas/counters", timeout=10) as answer:
        return dict(json.load(answer))


def storage_write(stack: Stack) -> bool:
    return stack.config.function_env.get("BIGQUERY_WRITER") == "storage_write"


def write_requests(stack: Stack) -> int:
    """Write requests of the stack's writer bqemulator received so far."""
    return int(counters(stack)["appendRows" if storage_write(stack) else "insertAll"])


def push_body(call: dict[str, object], message_id: str, space: str) -> bytes:
    data = base64.b64encode(json.dumps(call).encode()).decode()
    message = {
        "data": data,
        "messageId": message_id,
        "publishTime": "2026-11-29T02:00:00Z",
        "attributes": {"space": space},
    }
    return json.dumps({"message": message, "subscription": "projects/personas-local/subscriptions/test"}).encode()


@pytest.mark.both_writers
def test_requests_in_flight_share_writes_and_every_acked_call_lands_once(
    stack: Stack, bq: bigquery.Client, space: str
) -> None:
    bodies = [
        push_body(identify(f"u{i}", f"{space}-m{i}", "2026-11-29T01:00:00Z", score=i), f"{space}-p{i}", space)
        for i in range(CALLS)
    ]
    # The first call creates the dataset, table and column alone, so the rest measure writes only.
    connection = http.client.HTTPConnection("127.0.0.1", stack.config.ingest_port, timeout=60)
    connection.request("POST", "/", body=bodies[0], headers={"Content-Type": "application/json"})
    assert connection.getresponse().status == 204
    local = threading.local()

    def post(body: bytes) -> int:
        if not hasattr(local, "connection"):
            local.connection = http.client.HTTPConnection("127.0.0.1", stack.config.ingest_port, timeout=60)
        local.connection.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
        answer = local.connection.getresponse()
        answer.read()
        return answer.status

    before, connections = write_requests(stack), int(counters(stack)["appendRowsConnections"])
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        statuses = list(pool.map(post, bodies[1:]))
    writes = write_requests(stack) - before
    connections = int(counters(stack)["appendRowsConnections"]) - connections
    assert statuses == [204] * (CALLS - 1)
    rows = query(bq, f"SELECT id, score FROM `{stack.config.project}.personas_{space}.identifies`")
    assert sorted((r["id"], r["score"]) for r in rows) == [(f"{space}-m{i}", i) for i in sorted(range(CALLS), key=str)]
    # One write per request would be 95; sharing must bring it to a third of that or fewer.
    assert writes <= (CALLS - 1) // 3, writes
    if storage_write(stack):  # and the appends share kept connections (one per table, more only while they overlap)
        assert connections <= max(2, writes // 3), (connections, writes)
