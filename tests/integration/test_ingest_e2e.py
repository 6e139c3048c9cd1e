"""Publish to Google's Pub/Sub emulator; the push subscription delivers to the ingest function
(functions-framework, staged source); read BigQuery (bqemulator) back with the real client."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable

import pytest
from google.cloud import bigquery

from infra.local.stack import Stack
from tests.integration.conftest import identify, query, wait_rows

pytestmark = pytest.mark.integration
P = "personas-local"


@pytest.mark.both_writers
def test_seed_calls_land_in_segment_layout(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str], space: str
) -> None:
    personas = {"personas": {"computation_class": "audience", "computation_key": "first_time_shopper"}}
    publish(
        {**identify("u123", "i1", "2026-11-01T10:00:00Z", first_time_shopper=True), "context": personas}, space=space
    )
    publish(identify("u123", "i2", "2026-11-01T10:05:00Z", total_revenue_180_days=450.00), space=space)
    publish(
        {
            "type": "track",
            "userId": "u123",
            "messageId": "t1",
            "event": "Audience Entered",
            "traits": {"audience_key": "first_time_shopper", "first_time_shopper": True},
        },
        space=space,
    )
    publish(
        {
            "type": "track",
            "userId": "u123",
            "messageId": "t2",
            "event": "Trait Computed",
            "properties": {"trait_key": "total_revenue_180_days", "total_revenue_180_days": 450.00},
        },
        space=space,
    )

    ds = f"`{P}.personas_{space}"
    rows = wait_rows(bq, f"SELECT * FROM {ds}.identifies` ORDER BY timestamp", 2)
    assert [(r["user_id"], r["first_time_shopper"], r["total_revenue_180_days"]) for r in rows] == [
        ("u123", True, None),
        ("u123", None, 450.0),
    ]
    assert rows[0]["context_personas_computation_key"] == "first_time_shopper"
    assert rows[0]["id"] == "i1" and rows[0]["loaded_at"] is not None
    [entered] = wait_rows(bq, f"SELECT * FROM {ds}.audience_entered`", 1)
    assert (entered["audience_key"], entered["first_time_shopper"]) == ("first_time_shopper", True)
    assert (entered["event"], entered["event_text"]) == ("audience_entered", "Audience Entered")
    [computed] = wait_rows(bq, f"SELECT * FROM {ds}.trait_computed`", 1)
    assert (computed["trait_key"], computed["total_revenue_180_days"]) == ("total_revenue_180_days", 450.0)
    tracks = wait_rows(bq, f"SELECT * FROM {ds}.tracks` ORDER BY id", 2)
    assert [t["event"] for t in tracks] == ["audience_entered", "trait_computed"]
    assert "audience_key" not in tracks[0]  # tracks carries no properties
    schema = {f.name: f.field_type for f in bq.get_table(f"{P}.personas_{space}.identifies").schema}
    assert schema["total_revenue_180_days"] in ("FLOAT", "FLOAT64")  # real BigQuery answers legacy names
    assert schema["first_time_shopper"] in ("BOOLEAN", "BOOL")
    table = bq.get_table(f"{P}.personas_{space}.identifies")
    assert table.time_partitioning.field == "loaded_at" and table.clustering_fields == ["loaded_at", "user_id"]


def test_malformed_message_is_rejected_once_and_acked(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str]
) -> None:
    message_id = publish(b'{"type": "identify", "userId": "u1", "traits": {')
    sql = f"SELECT * FROM `{P}.personas__ops.rejected_messages` WHERE message_id = @m"
    [row] = wait_rows(bq, sql, 1, m=message_id)
    assert row["error_class"] == "invalid_json"
    assert row["data"].startswith('{"type": "identify"')
    time.sleep(3)  # a nacked message would be redelivered within seconds (retry policy 1-10 s)
    assert len(query(bq, sql, m=message_id)) == 1


def test_hostile_names_are_made_safe_and_hostile_space_rejected(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str], space: str
) -> None:
    hostile = {"Robert'); DROP TABLE users;--": True, "_PARTITIONTIME": "x", "id": "spoof", "x" * 400: 1}
    publish(identify("u1", "h1", "2026-11-01T10:00:00Z", **hostile), space=space)
    [row] = wait_rows(bq, f"SELECT * FROM `{P}.personas_{space}.identifies`", 1)
    assert row["robert_drop_table_users"] is True
    assert row["partitiontime"] == "x"
    assert row["_id"] == "spoof" and row["id"] == "h1"
    long = [name for name in row if name.startswith("xxx")]
    assert len(long) == 1 and len(long[0]) == 300
    bad = publish(identify("u1", "h2", "2026-11-01T10:00:00Z", a=1), space="x`; DROP SCHEMA y")
    [rejected] = wait_rows(bq, f"SELECT * FROM `{P}.personas__ops.rejected_messages` WHERE message_id = @m", 1, m=bad)
    assert rejected["error_class"] == "unsafe_space"


@pytest.mark.both_writers
def test_batch_with_a_bad_call_writes_the_good_ones(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str], space: str
) -> None:
    batch = {
        "sentAt": "2026-11-01T10:00:05Z",
        "context": {"library": {"name": "e2e"}},
        "batch": [
            identify("u1", "b1", "2026-11-01T10:00:00Z", a=1),
            {"type": "page", "messageId": "b2"},
            identify(None, "b3", "2026-11-01T10:00:00Z", a=2),
        ],
    }
    message_id = publish(batch, space=space)
    rows = wait_rows(bq, f"SELECT * FROM `{P}.personas_{space}.identifies` ORDER BY id", 2)
    assert [(r["id"], r["user_id"], r["anonymous_id"]) for r in rows] == [("b1", "u1", None), ("b3", None, "anon-b3")]
    [rejected] = wait_rows(
        bq, f"SELECT * FROM `{P}.personas__ops.rejected_messages` WHERE message_id = @m", 1, m=message_id
    )
    assert rejected["call_index"] == 1 and rejected["error_class"] == "schema_violation"
    assert json.loads(rejected["errors"])["type"] == ["Must be one of: identify, track."]
    # stored alone in its envelope, with the envelope fields applied to it: a replay decodes it the same
    assert json.loads(rejected["data"]) == {
        "batch": [{"type": "page", "messageId": "b2"}],
        "sentAt": "2026-11-01T10:00:05Z",
        "context": {"library": {"name": "e2e"}},
    }


@pytest.mark.both_writers
def test_new_trait_becomes_a_column_and_type_conflict_a_discard(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str], space: str
) -> None:
    publish(identify("u1", "n1", "2026-11-01T10:00:00Z", score=10), space=space)
    wait_rows(bq, f"SELECT * FROM `{P}.personas_{space}.identifies`", 1)
    publish(identify("u1", "n2", "2026-11-01T10:01:00Z", score="high", new_audience=True), space=space)
    rows = wait_rows(bq, f"SELECT * FROM `{P}.personas_{space}.identifies` ORDER BY id", 2)
    assert [(r["score"], r["new_audience"]) for r in rows] == [(10, None), (None, True)]
    [discard] = wait_rows(bq, f"SELECT * FROM `{P}.personas_{space}.discards`", 1)
    assert (discard["column_name"], discard["column_value"], discard["reason"]) == ("score", '"high"', "type_conflict")


def test_oversized_message_is_rejected(stack: Stack, bq: bigquery.Client, publish: Callable[..., str]) -> None:
    message_id = publish(identify("u1", "big", "2026-11-01T10:00:00Z", blob="z" * 30_000))
    [row] = wait_rows(bq, f"SELECT * FROM `{P}.personas__ops.rejected_messages` WHERE message_id = @m", 1, m=message_id)
    assert row["error_class"] == "oversized"


def test_space_from_context_space_id_and_selective_sync(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str]
) -> None:
    context = {"personas": {"space_id": "spa_selective"}}
    publish({**identify("u1", "s1", "2026-11-01T10:00:00Z", secret_score=9, kept=True), "context": context})
    publish(
        {
            "type": "track",
            "userId": "u1",
            "messageId": "s2",
            "event": "Audience Exited",
            "context": context,
            "properties": {"audience_key": "a", "a": False},
        }
    )
    [row] = wait_rows(bq, f"SELECT * FROM `{P}.personas_selective.identifies` WHERE id = 's1'", 1)
    assert row["kept"] is True and "secret_score" not in row
    wait_rows(bq, f"SELECT * FROM `{P}.personas_selective.tracks` WHERE id = 's2'", 1)
    assert "audience_exited" not in {t.table_id for t in bq.list_tables(f"{P}.personas_selective")}


def test_concurrent_new_columns_keep_every_value_in_its_column(
    stack: Stack, bq: bigquery.Client, publisher: object, space: str
) -> None:
    """Many instances (here: concurrent requests) add different columns to one table at once: each
    value must land in its own column (caught a lost-update of the schema once)."""
    from google.cloud import pubsub_v1

    assert isinstance(publisher, pubsub_v1.PublisherClient)
    topic = publisher.topic_path(stack.config.project, stack.config.topic)
    names = [f"trait_{i}" for i in range(12)]
    futures = [
        publisher.publish(
            topic, json.dumps(identify("u1", name, "2026-11-01T10:00:00Z", **{name: i})).encode(), space=space
        )
        for i, name in enumerate(names)
    ]
    for future in futures:
        future.result(timeout=30)
    rows = wait_rows(bq, f"SELECT * FROM `{P}.personas_{space}.identifies`", len(names))
    for row in rows:
        assert {k: v for k, v in row.items() if k.startswith("trait_") and v is not None} == {
            row["id"]: names.index(row["id"])
        }


@pytest.mark.both_writers
def test_dedup_views_keep_one_row_per_id(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str], space: str
) -> None:
    call = identify("u1", "same-id", "2026-11-01T10:00:00Z", a=1)
    publish(call, space=space)
    publish(call, space=space)  # the source resent it: a new Pub/Sub message, the same messageId
    publish(
        {
            "type": "track",
            "userId": "u1",
            "messageId": "t-same",
            "event": "Audience Entered",
            "properties": {"audience_key": "a", "a": True},
        },
        space=space,
    )
    wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.identifies`", 2)
    assert [r["id"] for r in query(bq, f"SELECT * FROM `{P}.personas_{space}.identifies_view`")] == ["same-id"]
    [entered] = wait_rows(bq, f"SELECT * FROM `{P}.personas_{space}.audience_entered_view`", 1)
    assert entered["a"] is True
    wait_rows(bq, f"SELECT * FROM `{P}.personas_{space}.tracks_view`", 1)


def _post(url: str, body: bytes, method: str = "POST") -> int:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.both_writers
def test_push_without_data_posted_to_ingest_is_recorded_and_acked(stack: Stack, bq: bigquery.Client) -> None:
    """functions-framework's CloudEvent conversion answered 400 to this (legal Pub/Sub) message: Pub/Sub
    retried it until dead-lettered and rejected_messages never saw it."""
    message_id = "direct-" + uuid.uuid4().hex[:10]
    body = {
        "message": {"attributes": {"space": "x"}, "messageId": message_id, "publishTime": "2026-11-28T10:00:00.5Z"},
        "subscription": "projects/personas-local/subscriptions/direct-post",
        "deliveryAttempt": 2,
    }
    url = stack.config.ingest_url + "/"
    assert _post(url, json.dumps(body).encode()) == 204
    sql = f"SELECT * FROM `{P}.personas__ops.rejected_messages` WHERE message_id = @m"
    [row] = query(bq, sql, m=message_id)  # written before the 204: no waiting
    assert row["error_class"] == "invalid_envelope"
    assert row["subscription"] == "projects/personas-local/subscriptions/direct-post"
    assert json.loads(row["attributes"]) == {"space": "x"}
    assert json.loads(row["errors"]) == {
        "message.data": ["Missing or empty: a message with only attributes carries no call."]
    }
    assert row["publish_time"].isoformat() == "2026-11-28T10:00:00.500000+00:00"

    garbage = b"not a push body " + uuid.uuid4().hex.encode()
    assert _post(url, garbage) == 204
    [kept] = query(bq, f"SELECT * FROM `{P}.personas__ops.rejected_messages` WHERE data = @d", d=garbage.decode())
    assert kept["error_class"] == "invalid_push" and kept["message_id"].startswith("sha256-")
    assert _post(url, b"", method="GET") == 405


def test_message_with_only_attributes_through_the_emulator_names_the_push_subscription(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str]
) -> None:
    message_id = publish(b"", marker=uuid.uuid4().hex)
    sql = f"SELECT * FROM `{P}.personas__ops.rejected_messages` WHERE message_id = @m"
    [row] = wait_rows(bq, sql, 1, m=message_id)
    assert row["subscription"] == f"projects/{P}/subscriptions/{stack.config.subscription}"
    assert row["error_class"] == "invalid_envelope"
    time.sleep(3)  # acked: a redelivery would add a second row within seconds
    assert len(query(bq, sql, m=message_id)) == 1
