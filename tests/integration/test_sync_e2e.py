"""The users sync through its HTTP function (and its command line) on the local stack."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.cloud import bigquery

from infra.local.stack import Stack, running
from tests.integration.conftest import OVERLAP_SECONDS, identify, integration_config, query, sync_cli, wait_rows

pytestmark = pytest.mark.integration
P = "personas-local"


def sync(stack: Stack, *, timeout: float = 600, **body: Any) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        stack.config.sync_url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def users(bq: bigquery.Client, space: str) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in query(bq, f"SELECT * FROM `{P}.personas_{space}.users`")}


def test_out_of_order_duplicates_and_anonymous(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str], space: str
) -> None:
    exit_call = identify("u1", "exit", "2026-11-01T11:00:00Z", first_time_shopper=False)
    publish(exit_call, space=space)  # the exit arrives first ...
    publish(identify("u1", "enter", "2026-11-01T10:00:00Z", first_time_shopper=True, revenue=450.0), space=space)
    publish(exit_call, space=space)  # ... and again: a duplicate of the same messageId
    publish(identify(None, "anon", "2026-11-01T12:00:00Z", first_time_shopper=True), space=space)
    wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.identifies`", 4)

    status, summary = sync(stack, spaces=[space])
    assert status == 200
    [space_result] = summary["spaces"]
    result = space_result["tables"]["users"]
    # Rows read: u1's three (the duplicate copy too); the anonymous call is never read.
    assert (space_result["status"], result["rows_inserted"], result["source_rows_read"]) == ("success", 1, 3)
    assert users(bq, space) == {
        "u1": {
            "id": "u1",
            "received_at": users(bq, space)["u1"]["received_at"],
            "first_time_shopper": False,
            "revenue": 450.0,
        }
    }
    history = query(bq, f"SELECT * FROM `{P}.personas__ops.sync_history` WHERE run_id = @r", r=summary["run_id"])
    # One row per derived table. identities inserted u1's user_id row and the anonymous profile's anonymous_id
    # row, and a message row per call (the duplicate's once).
    assert sorted(
        (h["space"], h["table_name"], h["status"], h["rows_inserted"])
        for h in history
        if h["table_name"] in ("identities", "users")
    ) == [
        (space, "identities", "success", 5),
        (space, "users", "success", 1),
    ]


def test_trait_added_between_runs_and_incremental_watermark(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str], space: str
) -> None:
    publish(identify("u2", "a2", "2026-11-01T10:00:00Z", first_time_shopper=False), space=space)
    publish(identify("u1", "a1", "2026-11-01T10:00:00Z", first_time_shopper=True), space=space)
    wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.identifies`", 2)
    _, first = sync(stack, spaces=[space])
    publish(identify("u1", "a3", "2026-11-01T11:00:00Z", total_revenue_180_days=450.0), space=space)
    wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.identifies`", 3)
    _, second = sync(stack, spaces=[space])
    got = users(bq, space)
    assert (got["u1"]["first_time_shopper"], got["u1"]["total_revenue_180_days"]) == (True, 450.0)
    assert (got["u2"]["first_time_shopper"], got["u2"]["total_revenue_180_days"]) == (False, None)
    a, b = first["spaces"][0]["tables"]["users"], second["spaces"][0]["tables"]["users"]
    assert a["watermark_from"] is None and a["mode"] == "full"  # a space's first run rebuilds, and says so
    # The second run starts SYNC_OVERLAP_SECONDS before the first one's end, so it reads its rows again.
    assert stamp(b["watermark_from"]) == stamp(a["watermark_to"]) - timedelta(seconds=OVERLAP_SECONDS)
    assert b["mode"] == "incremental" and b["source_rows_read"] == 3 and b["rows_inserted"] == 0
    _, full = sync(stack, spaces=[space], full=True)
    assert full["spaces"][0]["tables"]["users"]["mode"] == "full" and users(bq, space) == got


def stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_selective_sync_switched_off_and_on(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str], space: str, tmp_path: Path
) -> None:
    off = f"spaces:\n  {space}:\n    disabled_columns:\n      users: [vip]\n"
    publish(identify("u1", "v1", "2026-11-01T10:00:00Z", vip=True, level=1), space=space)
    wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.identifies`", 1)
    assert sync_cli(stack, space, off, tmp_path)["spaces"][0]["tables"]["users"]["status"] == "success"
    assert "vip" not in users(bq, space)["u1"] and users(bq, space)["u1"]["level"] == 1
    sync_cli(stack, space)  # switched on
    assert users(bq, space)["u1"]["vip"] is True
    publish(identify("u1", "v2", "2026-11-01T11:00:00Z", vip=False, level=2), space=space)
    wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.identifies`", 2)
    sync_cli(stack, space, off, tmp_path)  # off again: history stays, the column is left alone
    assert (users(bq, space)["u1"]["vip"], users(bq, space)["u1"]["level"]) == (True, 2)


def test_a_failing_space_does_not_stop_the_others(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str], space: str
) -> None:
    broken = space + "_broken"
    bq.create_dataset(f"{P}.personas_{broken}")
    bq.create_table(
        bigquery.Table(f"{P}.personas_{broken}.identifies", schema=[bigquery.SchemaField("user_id", "STRING")])
    )
    try:
        _failing_space_does_not_stop_the_others(stack, bq, publish, space, broken)
    finally:  # the broken space would break the other tests' syncs and operator commands
        bq.delete_dataset(f"{P}.personas_{broken}", delete_contents=True)


def _failing_space_does_not_stop_the_others(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str], space: str, broken: str
) -> None:
    publish(identify("u1", "f1", "2026-11-01T10:00:00Z", a=1), space=space)
    wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.identifies`", 1)
    status, summary = sync(stack, spaces=[broken, space])
    assert status == 500
    by_space = {s["space"]: s for s in summary["spaces"]}
    assert by_space[space]["status"] == "success" and by_space[broken]["status"] == "failure"
    assert by_space[broken]["error"]
    history = query(
        bq,
        f"SELECT space, status FROM `{P}.personas__ops.sync_history` WHERE run_id = @r AND table_name = 'users'",
        r=summary["run_id"],
    )  # one row per space and derived table
    assert {h["space"]: h["status"] for h in history} == {space: "success", broken: "failure"}
    assert users(bq, space)["u1"]["a"] == 1


def test_sync_without_spaces_finds_every_space_dataset(tmp_path: Path) -> None:
    """On a stack of its own, so that "every space" is the three this test makes: on the session's stack it
    would be every test's space, most never synced (a first run of four derived tables each: many minutes)."""
    config = replace(integration_config(18_200, BIGQUERY_WRITER="insert_all"), state_dir=str(tmp_path / "stack"))
    with running(config) as own:
        bq, publisher = own.config.bigquery_client(), own.config.publisher()
        topic = publisher.topic_path(own.config.project, own.config.topic)
        spaces = ["every_a", "every_b"]
        for n, space in enumerate(spaces):
            call = identify(f"u{n}", f"every{n}", "2026-11-01T10:00:00Z", a=n)
            publisher.publish(topic, json.dumps(call).encode(), space=space).result(timeout=30)
        for space in spaces:
            wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.identifies`", 1)
        bq.create_dataset(f"{P}.personas_every_broken")
        bq.create_table(
            bigquery.Table(f"{P}.personas_every_broken.identifies", schema=[bigquery.SchemaField("user_id", "STRING")])
        )
        status, summary = sync(own)
        assert status == 500
        assert {s["space"]: s["status"] for s in summary["spaces"]} == {
            "every_a": "success",
            "every_b": "success",
            "every_broken": "failure",
        }
        assert users(bq, "every_b")["u1"]["a"] == 1


def test_overlapping_runs_leave_users_and_watermark_right(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str], space: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    for i in range(6):
        publish(identify(f"u{i % 3}", f"o{i}", f"2026-11-01T10:0{i}:00Z", level=i), space=space)
    wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.identifies`", 6)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: sync(stack, spaces=[space]), range(3)))
    assert all(status == 200 for status, _ in results)
    assert {u: r["level"] for u, r in users(bq, space).items()} == {"u0": 3, "u1": 4, "u2": 5}
    publish(identify("u0", "o6", "2026-11-01T11:00:00Z", level=60), space=space)
    wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.identifies`", 7)
    _, after = sync(stack, spaces=[space])
    marks = [stamp(r["spaces"][0]["tables"]["users"]["watermark_to"]) for _, r in results]
    since = stamp(after["spaces"][0]["tables"]["users"]["watermark_from"])
    assert since == max(marks) - timedelta(seconds=OVERLAP_SECONDS)
    assert users(bq, space)["u0"]["level"] == 60 and len(users(bq, space)) == 3


def test_only_post_runs_a_sync(stack: Stack) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(stack.config.sync_url, timeout=30)
    assert refused.value.code == 405


def test_a_users_column_of_another_type_makes_the_run_partial(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str], space: str
) -> None:
    publish(identify("u1", "p1", "2026-11-01T10:00:00Z", score=5, kept=True), space=space)
    wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.identifies`", 1)
    bq.create_table(
        bigquery.Table(
            f"{P}.personas_{space}.users_state",
            schema=[
                bigquery.SchemaField("id", "STRING"),
                bigquery.SchemaField("received_at", "TIMESTAMP"),
                bigquery.SchemaField("_asof", "STRING"),
                bigquery.SchemaField("_rebuild", "BOOL"),
                bigquery.SchemaField("score", "STRING"),  # identifies has INT64
            ],
        )
    )
    status, summary = sync(stack, spaces=[space])
    [result] = summary["spaces"]
    assert (status, result["status"], result["tables"]["users"]["status"]) == (200, "partial", "partial")
    assert "score" in result["error"]
    assert users(bq, space)["u1"]["kept"] is True and users(bq, space)["u1"]["score"] is None
