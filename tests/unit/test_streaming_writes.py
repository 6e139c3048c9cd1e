"""Streaming writes within BigQuery's rules, through the real Warehouse adapter and ingest() over a fake
as strict as BigQuery where bqemulator is lenient (tests.fakes.StrictFakeBigQuery): requests split within
insertAll's limits, a row too big alone refused and recorded, INT64 exact past 2**53, wrong-typed rows
refused with their neighbours written, insert-id dedup on redelivery, and tables BigQuery does not find
(just created, or dropped) re-ensured and retried within the deadline, never recorded as rejected."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery

import personas_warehouse.ingest as ingest_module
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.errors import TransientError
from personas_warehouse.ingest import ingest
from personas_warehouse.messages import PubSubMessage
from personas_warehouse.settings import Settings
from personas_warehouse.shaping import Fitted
from personas_warehouse.writers.insert_all import (
    INSERT_ALL_MAX_REQUEST_BYTES,
    INSERT_ALL_MAX_ROWS,
    INSERT_BYTES_PER_REQUEST,
    INSERT_ROWS_PER_REQUEST,
)
from schemas.tables import spec
from tests.fakes import (
    DEDUP_WINDOW_SECONDS,
    REQUEST_LIMIT_BYTES,
    REQUEST_LIMIT_ROWS,
    FakeClock,
    StrictFakeBigQuery,
)

PUBLISHED = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(ingest_deadline_seconds=30)
IDENTIFIES = "personas-test.personas_default.identifies"
REJECTED = "personas-test.personas__ops.rejected_messages"


def message(doc: Any, message_id: str = "m-1") -> PubSubMessage:
    data = json.dumps(doc).encode()
    return PubSubMessage(message_id, base64.b64encode(data).decode(), PUBLISHED, {}, "sub")


def identify(message_id: str = "c-1", **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": "u123", "messageId": message_id, "traits": traits}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> StrictFakeBigQuery:
    return StrictFakeBigQuery(clock=clock)


@pytest.fixture
def warehouse(fake: StrictFakeBigQuery, clock: FakeClock) -> Warehouse:
    return Warehouse(fake, sleep=clock.advance)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def deadline_on_the_fake_clock(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    """ingest()'s deadline runs on the fake clock, which only the warehouse's backoff sleeps move."""
    monkeypatch.setattr(ingest_module, "Deadline", lambda seconds: Deadline(seconds, clock=clock))


def request_sizes(fake: StrictFakeBigQuery, table: str) -> list[tuple[int, int]]:
    """(rows, bytes) of every insertAll request to `table`."""
    return [(len(json.loads(body)["rows"]), len(body.encode())) for key, body in fake.requests if key == table]


# -- the strict fake refuses what BigQuery refuses ---------------------------------------------------


def test_strict_fake_refuses_oversized_requests_and_bad_rows(fake: StrictFakeBigQuery) -> None:
    fake.datasets.add("d")
    fake.create_table(bigquery.Table("personas-test.d.t", schema=[bigquery.SchemaField("n", "INT64")]))
    with pytest.raises(gexc.BadRequest, match="Request payload size exceeds the limit: 10485760 bytes"):
        fake.insert_rows_json("personas-test.d.t", [{"n": "1" * REQUEST_LIMIT_BYTES}], row_ids=["a"])
    with pytest.raises(gexc.BadRequest, match="too many rows present in the request, limit: 50000"):
        fake.insert_rows_json("personas-test.d.t", [{"n": 1}] * 50_001, row_ids=[str(i) for i in range(50_001)])
    errors = fake.insert_rows_json("personas-test.d.t", [{"n": "7"}, {"n": "x"}, {"m": 1}], row_ids=["a", "b", "c"])
    assert [e["errors"][0]["reason"] for e in errors] == ["stopped", "invalid", "invalid"]
    assert errors[2]["errors"][0]["message"] == "no such field: m."
    assert fake.rows["personas-test.d.t"] == []  # nothing of a refused request is written


# -- requests within insertAll's limits --------------------------------------------------------------


def test_our_request_budget_is_safely_under_bigquerys_limits() -> None:
    assert (INSERT_ALL_MAX_REQUEST_BYTES, INSERT_ALL_MAX_ROWS) == (REQUEST_LIMIT_BYTES, REQUEST_LIMIT_ROWS)
    assert INSERT_ROWS_PER_REQUEST <= 500 < INSERT_ALL_MAX_ROWS
    assert INSERT_BYTES_PER_REQUEST <= 0.9 * INSERT_ALL_MAX_REQUEST_BYTES


def test_a_big_batch_is_split_by_rows(fake: StrictFakeBigQuery, warehouse: Warehouse) -> None:
    calls = [identify(f"c-{i}", n=i) for i in range(1_234)]
    outcome = ingest(message({"batch": calls}), warehouse, replace(SETTINGS, max_message_bytes=10_000_000))
    assert outcome.rows == {"personas_default.identifies": 1_234}
    assert len(fake.rows[IDENTIFIES]) == 1_234
    assert [rows for rows, _ in request_sizes(fake, IDENTIFIES)] == [500, 500, 234]
    assert INSERT_ROWS_PER_REQUEST == 500


def test_wide_rows_are_split_by_bytes(fake: StrictFakeBigQuery, warehouse: Warehouse, clock: FakeClock) -> None:
    schema = warehouse.ensure_table("personas_default", "identifies", spec("identifies"), Deadline(30, clock=clock))
    assert "note" not in schema
    warehouse.add_columns("personas_default", "identifies", {"note": "STRING"}, Deadline(30, clock=clock))
    rows = [{"id": f"r{i}", "note": "é" * 700_000} for i in range(30)]  # ~4.2 MB each as the client sends it
    refused = warehouse.insert(
        "personas_default", "identifies", rows, [f"r{i}" for i in range(30)], Deadline(30, clock=clock)
    )
    assert refused == []
    assert len(fake.rows[IDENTIFIES]) == 30
    sizes = request_sizes(fake, IDENTIFIES)
    assert max(size for _, size in sizes) <= INSERT_BYTES_PER_REQUEST < REQUEST_LIMIT_BYTES
    assert sum(n for n, _ in sizes) == 30 and len(sizes) == 15  # two 4.2 MB rows per 9 MB request


def test_a_row_too_big_alone_is_refused_and_its_neighbours_written(
    fake: StrictFakeBigQuery, warehouse: Warehouse
) -> None:
    huge = identify("big", note="x" * 10_500_000)  # over BigQuery's 10 MB on its own
    batch = {"batch": [identify("a", note="small"), huge, identify("c", note="small")]}
    settings = replace(SETTINGS, max_message_bytes=20_000_000)
    outcome = ingest(message(batch), warehouse, settings)
    assert [r["id"] for r in fake.rows[IDENTIFIES]] == ["a", "c"]
    assert outcome.rows == {"personas_default.identifies": 2}
    [rejected] = fake.rows[REJECTED]
    assert (rejected["error_class"], rejected["call_index"]) == ("row_refused", 1)
    assert "bytes as JSON" in json.loads(rejected["errors"])["identifies._row"][0]
    assert rejected["data"].startswith('{"batch":[{"type":"identify","userId":"u123","messageId":"big"')  # alone
    assert rejected["data_truncated"] is True
    assert max(size for _, size in request_sizes(fake, IDENTIFIES)) <= INSERT_BYTES_PER_REQUEST


# -- INT64 on the wire --------------------------------------------------------------------------------


def test_int64_past_2_53_travels_as_a_string_and_arrives_exact(fake: StrictFakeBigQuery, warehouse: Warehouse) -> None:
    big = 2**53 + 1
    ingest(message(identify(big=big, small=-7)), warehouse, SETTINGS)
    [row] = fake.rows[IDENTIFIES]
    assert row["big"] == big and row["small"] == -7
    [(_, body)] = [(k, b) for k, b in fake.requests if k == IDENTIFIES]
    sent = json.loads(body)["rows"][0]["json"]
    assert sent["big"] == "9007199254740993" and sent["small"] == "-7"


# -- rows refused for themselves ------------------------------------------------------------------------


def corrupt(monkeypatch: pytest.MonkeyPatch, row_id: str, column: str, value: Any) -> None:
    """Force a wrong-typed value into one fitted row (our own fitting never produces one)."""
    real = ingest_module.fit_rows

    def fit_rows(*args: Any) -> Fitted:
        fitted = real(*args)
        for row in fitted.rows:
            if row["id"] == row_id:
                row[column] = value
        return fitted

    monkeypatch.setattr(ingest_module, "fit_rows", fit_rows)


def test_the_adapter_returns_a_wrong_typed_row_and_writes_its_stopped_neighbours(
    fake: StrictFakeBigQuery, warehouse: Warehouse, clock: FakeClock
) -> None:
    deadline = Deadline(30, clock=clock)
    warehouse.ensure_table("personas_default", "identifies", spec("identifies"), deadline)
    warehouse.add_columns("personas_default", "identifies", {"score": "INT64"}, deadline)
    rows = [{"id": "a", "score": 1}, {"id": "b", "score": "high"}, {"id": "c", "score": 3}]
    [refusal] = warehouse.insert("personas_default", "identifies", rows, ["a", "b", "c"], deadline)
    assert refusal.index == 1 and refusal.errors[0]["reason"] == "invalid"
    assert [(r["id"], r["score"]) for r in fake.rows[IDENTIFIES]] == [("a", 1), ("c", 3)]
    assert [n for n, _ in request_sizes(fake, IDENTIFIES)] == [3, 2]  # the stopped two, resent


def test_a_wrong_typed_row_is_recorded_with_its_own_call_and_its_neighbours_written(
    fake: StrictFakeBigQuery, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    corrupt(monkeypatch, "b", "score", "high")
    calls = [identify("a", score=10), identify("b", score=11), identify("c", score=12)]
    outcome = ingest(message({"batch": calls}), warehouse, SETTINGS)
    assert [(r["id"], r.get("score")) for r in fake.rows[IDENTIFIES]] == [("a", 10), ("c", 12)]
    assert outcome.rows == {"personas_default.identifies": 2}
    [rejected] = fake.rows[REJECTED]
    assert (rejected["error_class"], rejected["call_index"]) == ("row_refused", 1)
    assert list(json.loads(rejected["errors"])) == ["identifies.score"]
    assert json.loads(rejected["data"]) == {"batch": [calls[1]]}  # that call alone in its envelope, not the batch
    assert rejected["data_truncated"] is False


def test_a_refusal_caused_by_a_stale_cache_is_redelivered_not_recorded(
    fake: StrictFakeBigQuery, warehouse: Warehouse
) -> None:
    ingest(message(identify("first", score=1)), warehouse, SETTINGS)  # score is INT64 in BigQuery
    warehouse._schemas[("personas_default", "identifies")]["score"] = "STRING"  # a stale cache, forced
    with pytest.raises(TransientError):
        ingest(message(identify("b", score="high"), "m-2"), warehouse, SETTINGS)
    outcome = ingest(message(identify("b", score="high"), "m-2"), warehouse, SETTINGS)  # the redelivery
    assert outcome.discards == 1 and outcome.rejections == []
    assert [(r["id"], r.get("score")) for r in fake.rows[IDENTIFIES]] == [("first", 1), ("b", None)]
    assert REJECTED not in fake.rows


def test_each_rejected_call_stores_its_own_data_and_a_whole_message_its_data(
    fake: StrictFakeBigQuery, warehouse: Warehouse
) -> None:
    good, bad1, bad2 = identify("a", x=1), {"type": "identify", "messageId": "b"}, {"type": "nope", "messageId": "c"}
    ingest(message({"batch": [bad1, good, bad2]}, "m-1"), warehouse, SETTINGS)
    ingest(message([1, 2], "m-2"), warehouse, SETTINGS)  # not a call nor a batch: the whole message
    rows = {(r["message_id"], r["call_index"]): r for r in fake.rows[REJECTED]}
    assert set(rows) == {("m-1", 0), ("m-1", 2), ("m-2", None)}
    assert json.loads(rows["m-1", 0]["data"]) == {"batch": [bad1]}
    assert json.loads(rows["m-1", 2]["data"]) == {"batch": [bad2]}
    assert rows["m-2", None]["data"] == "[1, 2]"


def test_a_refused_call_of_a_batch_is_stored_with_the_envelope_fields_decode_applied(
    fake: StrictFakeBigQuery, warehouse: Warehouse
) -> None:
    """`sentAt` and an object `context` apply to every call of the batch, so they are stored with the call;
    other envelope fields (never applied) are not, nor is a `context` that is no object."""
    bad = {"type": "identify", "messageId": "b"}  # no userId
    context = {"personas": {"space_id": "spa_x"}, "library": {"name": "segment"}}
    envelope = {"sentAt": "2026-11-01T12:00:09Z", "context": context, "writeKey": "k", "batch": [identify("a"), bad]}
    ingest(message(envelope, "m-1"), warehouse, SETTINGS)
    ingest(message({"context": "not an object", "batch": [bad]}, "m-2"), warehouse, SETTINGS)
    rows = {r["message_id"]: r for r in fake.rows[REJECTED]}
    assert json.loads(rows["m-1"]["data"]) == {"batch": [bad], "sentAt": "2026-11-01T12:00:09Z", "context": context}
    assert json.loads(rows["m-2"]["data"]) == {"batch": [bad]}


def test_a_call_refused_by_two_tables_is_one_row_with_both_errors(
    fake: StrictFakeBigQuery, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    corrupt(monkeypatch, "b", "context_score", "7.5")  # context columns go to tracks and the event table
    entered = {"type": "track", "userId": "u", "event": "Audience Entered", "context": {"score": 5}}
    ingest(message({**entered, "messageId": "b"}), warehouse, SETTINGS)
    [rejected] = fake.rows[REJECTED]
    assert sorted(json.loads(rejected["errors"])) == ["audience_entered.context_score", "tracks.context_score"]
    assert rejected["call_index"] == 0


# -- redelivery ------------------------------------------------------------------------------------------


def test_a_redelivered_message_is_deduplicated_by_insert_id(
    fake: StrictFakeBigQuery, warehouse: Warehouse, clock: FakeClock
) -> None:
    batch = {"batch": [identify("a", x=1), {"type": "identify", "messageId": "bad"}]}
    ingest(message(batch, "pubsub-7"), warehouse, SETTINGS)
    clock.advance(DEDUP_WINDOW_SECONDS / 2)
    ingest(message(batch, "pubsub-7"), warehouse, SETTINGS)  # Pub/Sub delivers it again
    assert [r["id"] for r in fake.rows[IDENTIFIES]] == ["a"]
    assert len(fake.rows[REJECTED]) == 1
    clock.advance(DEDUP_WINDOW_SECONDS)  # past BigQuery's best-effort window: the views dedup by id
    ingest(message(batch, "pubsub-7"), warehouse, SETTINGS)
    assert [r["id"] for r in fake.rows[IDENTIFIES]] == ["a", "a"]


# -- tables BigQuery does not find -----------------------------------------------------------------------


def test_a_table_not_found_right_after_creation_is_retried(
    fake: StrictFakeBigQuery, warehouse: Warehouse, clock: FakeClock
) -> None:
    fake.not_found_inserts = 3
    outcome = ingest(message(identify(plan="gold")), warehouse, SETTINGS)
    assert outcome.rows == {"personas_default.identifies": 1} and outcome.rejections == []
    assert [r["plan"] for r in fake.rows[IDENTIFIES]] == ["gold"]
    assert fake.insert_calls == 4
    assert 0 < clock() < SETTINGS.ingest_deadline_seconds
    assert REJECTED not in fake.rows


def test_a_dropped_and_recreated_table_is_reensured_and_written(fake: StrictFakeBigQuery, warehouse: Warehouse) -> None:
    ingest(message(identify("a", plan="gold", level=3)), warehouse, SETTINGS)  # caches plan, level
    fake.drop_table(IDENTIFIES)  # an operator drops it and re-creates it with the base columns only
    base = [bigquery.SchemaField(c.name, c.type) for c in spec("identifies").columns]
    fake.create_table(bigquery.Table(IDENTIFIES, schema=base))
    outcome = ingest(message(identify("b", plan="silver", level=4), "m-2"), warehouse, SETTINGS)
    assert outcome.rows == {"personas_default.identifies": 1} and outcome.rejections == []
    assert [(r["id"], r["plan"], r["level"]) for r in fake.rows[IDENTIFIES]] == [("b", "silver", 4)]
    types = {f.name: f.field_type for f in fake.tables[IDENTIFIES].schema}
    assert (types["plan"], types["level"]) == ("STRING", "INT64")
    assert REJECTED not in fake.rows


def test_a_dropped_table_is_created_again_and_written(fake: StrictFakeBigQuery, warehouse: Warehouse) -> None:
    ingest(message(identify("a", plan="gold")), warehouse, SETTINGS)
    fake.drop_table(IDENTIFIES)  # dropped, not re-created: insertAll answers 404
    outcome = ingest(message(identify("b", plan="silver"), "m-2"), warehouse, SETTINGS)
    assert outcome.rows == {"personas_default.identifies": 1}
    assert [(r["id"], r["plan"]) for r in fake.rows[IDENTIFIES]] == [("b", "silver")]
    assert fake.tables[IDENTIFIES].time_partitioning.field == "loaded_at"


def test_a_table_missing_past_the_deadline_raises_for_redelivery(
    fake: StrictFakeBigQuery, warehouse: Warehouse, clock: FakeClock
) -> None:
    fake.not_found_inserts = 1_000_000
    with pytest.raises(TransientError):
        ingest(message(identify(plan="gold")), warehouse, SETTINGS)
    assert clock() <= SETTINGS.ingest_deadline_seconds
    assert fake.rows[IDENTIFIES] == []
    assert REJECTED not in fake.rows  # a healthy message is never recorded as rejected


def test_a_recreated_table_with_another_column_type_is_redelivered_then_refitted(
    fake: StrictFakeBigQuery, warehouse: Warehouse
) -> None:
    ingest(message(identify("a", vip=True)), warehouse, SETTINGS)  # caches vip BOOL
    fake.drop_table(IDENTIFIES)  # re-created by an operator with vip as INT64
    base = [bigquery.SchemaField(c.name, c.type) for c in spec("identifies").columns]
    fake.create_table(bigquery.Table(IDENTIFIES, schema=[*base, bigquery.SchemaField("vip", "INT64")]))
    with pytest.raises(TransientError):  # the rows were fitted to BOOL: fit them again on redelivery
        ingest(message(identify("b", vip=False), "m-2"), warehouse, SETTINGS)
    outcome = ingest(message(identify("b", vip=False), "m-2"), warehouse, SETTINGS)  # the redelivery
    assert outcome.rows == {"personas_default.identifies": 1} and outcome.discards == 1
    assert [(r["id"], r.get("vip")) for r in fake.rows[IDENTIFIES]] == [("b", None)]
    assert REJECTED not in fake.rows
