"""Limits and hostile input, one policy each (docs/errors.md, "Errors, retries and acks" > "Limits and hostile
input"), through the whole ingest path over an in-memory BigQuery as strict as the real one
(tests.fakes.StrictFakeBigQuery): a message at Pub/Sub's 10 MB maximum, more traits than the column
budget, an unbounded stream of distinct event names, deep nesting, integers beyond INT64, timestamps
without a zone or far in the past or future, and every field of a call missing or of the wrong type.

The common promise: whatever arrives, the push is answered 204 (acked) with every call either a row or
a rejection row saying why; never a 500, which would make Pub/Sub redeliver the same input forever.
Where another test already holds a policy, the docs/errors.md table names it and nothing is repeated here.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personas_warehouse import app
from personas_warehouse.bigquery import Warehouse
from personas_warehouse.ingest import ingest
from personas_warehouse.messages import PubSubMessage
from personas_warehouse.settings import Settings
from personas_warehouse.shaping import MAX_DEPTH
from personas_warehouse.writers.insert_all import INSERT_BYTES_PER_REQUEST
from schemas.tables import spec
from tests.fakes import REQUEST_LIMIT_BYTES, StrictFakeBigQuery
from tests.unit._support import FAST, json_documents

PUBLISHED = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
RECEIVED = datetime(2026, 11, 29, 0, 0, 1, tzinfo=UTC)
SETTINGS = Settings(ingest_deadline_seconds=3)
PROJECT = "personas-test"
REJECTED = f"{PROJECT}.personas__ops.rejected_messages"
IDENTIFIES = f"{PROJECT}.personas_default.identifies"
TRACKS = f"{PROJECT}.personas_default.tracks"
DISCARDS = f"{PROJECT}.personas_default.discards"
PUBSUB_MAX_MESSAGE_BYTES = 10_000_000  # Pub/Sub's limit on a message's data (and on a publish request)


def push_body(data: bytes, message_id: str = "p-1") -> bytes:
    """A push body as Google's emulator and Cloud Pub/Sub send it."""
    message = {
        "data": base64.b64encode(data).decode(),
        "messageId": message_id,
        "publishTime": "2026-11-29T00:00:00Z",
        "attributes": {},
    }
    return json.dumps({"message": message, "subscription": "projects/p/subscriptions/s"}).encode()


def post(fake: StrictFakeBigQuery, data: bytes, settings: Settings = SETTINGS, message_id: str = "p-1") -> int:
    """The ingest function's answer to one push of `data`."""
    warehouse = Warehouse(fake, sleep=lambda _: None)  # type: ignore[arg-type]
    _, status, _ = app.handle_push("POST", push_body(data, message_id), lambda: warehouse, settings, lambda: RECEIVED)
    return status


def message(doc: Any, message_id: str = "p-1") -> PubSubMessage:
    return PubSubMessage(message_id, base64.b64encode(json.dumps(doc).encode()).decode(), PUBLISHED, {}, "s")


def identify(message_id: str = "c-1", traits: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": "u-1", "messageId": message_id, "traits": traits or {}, **fields}


def rejections(fake: StrictFakeBigQuery) -> list[dict[str, Any]]:
    return fake.rows.get(REJECTED, [])


def row_of(fake: StrictFakeBigQuery, table: str = IDENTIFIES) -> dict[str, Any]:
    [row] = fake.rows[table]
    return row


def columns(fake: StrictFakeBigQuery, table: str) -> dict[str, str]:
    return {f.name: f.field_type for f in fake.tables[table].schema}


@pytest.fixture
def fake() -> StrictFakeBigQuery:
    return StrictFakeBigQuery(PROJECT)


@pytest.fixture
def warehouse(fake: StrictFakeBigQuery) -> Warehouse:
    return Warehouse(fake, sleep=lambda _: None)  # type: ignore[arg-type]


# -- a message at Pub/Sub's 10 MB maximum ----------------------------------------------------------------


def test_the_size_limits_are_the_documented_defaults() -> None:
    settings = Settings()
    assert (settings.max_message_bytes, settings.max_rejected_data_bytes) == (1_000_000, 65_536)
    assert INSERT_BYTES_PER_REQUEST < PUBSUB_MAX_MESSAGE_BYTES < REQUEST_LIMIT_BYTES


def padded_call(size: int) -> bytes:
    """A valid identify whose JSON is exactly `size` bytes (one long trait)."""
    empty = json.dumps(identify(traits={"note": ""})).encode()
    data = json.dumps(identify(traits={"note": "x" * (size - len(empty))})).encode()
    assert len(data) == size
    return data


def test_a_10_mb_message_is_rejected_as_oversized_and_stored_cut(fake: StrictFakeBigQuery) -> None:
    data = padded_call(PUBSUB_MAX_MESSAGE_BYTES)
    assert post(fake, data, Settings(ingest_deadline_seconds=3)) == 204
    [row] = rejections(fake)
    assert row["error_class"] == "oversized" and row["call_index"] is None
    assert json.loads(row["errors"]) == {"data": ["10000000 bytes, over the limit of 1000000."]}
    assert len(row["data"].encode()) == 65_536 and data.decode().startswith(row["data"])
    assert row["data_truncated"] is True
    assert IDENTIFIES not in fake.rows  # nothing of it became a row
    assert all(len(body.encode()) < 100_000 for _, body in fake.requests)  # the rejection stays small


def test_with_the_limit_raised_to_10_mb_the_call_is_refused_by_the_request_budget(fake: StrictFakeBigQuery) -> None:
    """An operator who raises MAX_MESSAGE_BYTES to Pub/Sub's maximum gets the call decoded, but its row
    alone is over one insertAll request's budget: it is row_refused, recorded cut, and acked."""
    settings = Settings(ingest_deadline_seconds=3, max_message_bytes=PUBSUB_MAX_MESSAGE_BYTES)
    assert post(fake, padded_call(PUBSUB_MAX_MESSAGE_BYTES), settings) == 204
    [row] = rejections(fake)
    assert row["error_class"] == "row_refused" and row["data_truncated"] is True
    assert len(row["data"].encode()) == 65_536
    assert fake.rows[IDENTIFIES] == []
    assert max(len(body.encode()) for _, body in fake.requests) < REQUEST_LIMIT_BYTES


# -- more traits than the column budget ------------------------------------------------------------------


def test_traits_past_the_column_budget_are_column_limit_discards(
    fake: StrictFakeBigQuery, warehouse: Warehouse
) -> None:
    base = len(spec("identifies").columns)
    settings = replace(SETTINGS, max_columns_per_table=base + 3)
    traits = {f"t{i:02d}": i for i in range(10)}
    outcome = ingest(message(identify(traits=traits)), warehouse, settings)
    assert outcome.rows == {"personas_default.identifies": 1} and outcome.discards == 7
    assert len(columns(fake, IDENTIFIES)) == base + 3
    row = row_of(fake)
    assert {k: row[k] for k in ("t00", "t01", "t02")} == {"t00": 0, "t01": 1, "t02": 2}
    lost = fake.rows[DISCARDS]
    assert {d["original_key"] for d in lost} == {f"traits.t{i:02d}" for i in range(3, 10)}
    assert {(d["reason"], d["column_type"], d["row_id"]) for d in lost} == {("column_limit", None, "c-1")}
    assert sorted(json.loads(d["column_value"]) for d in lost) == list(range(3, 10))
    # a full table keeps taking rows: known columns are written, new keys are discarded
    ingest(message(identify("c-2", {"t00": 5, "fresh": True}), "p-2"), warehouse, settings)
    assert fake.rows[IDENTIFIES][1]["t00"] == 5
    assert fake.rows[DISCARDS][-1]["original_key"] == "traits.fresh"


def test_the_default_budget_caps_a_table_at_5000_columns(fake: StrictFakeBigQuery, warehouse: Warehouse) -> None:
    """BigQuery allows 10,000 columns per table; `users_state` keeps an `_asof_` twin beside every synced
    column, so 5,000 in `identifies` is what still fits there. 5,100 traits fill the table to exactly 5,000."""
    base = len(spec("identifies").columns)
    traits = {f"trait_{i:04d}": i for i in range(5_100)}
    outcome = ingest(message(identify(traits=traits)), warehouse, SETTINGS)
    assert len(columns(fake, IDENTIFIES)) == SETTINGS.max_columns_per_table == 5_000
    assert outcome.discards == 5_100 - (5_000 - base)
    assert len(fake.rows[DISCARDS]) == outcome.discards


@FAST
@given(extra=st.integers(0, 12), count=st.integers(0, 20), later=st.integers(0, 5))
def test_every_trait_is_a_column_value_or_a_discard_whatever_the_budget(extra: int, count: int, later: int) -> None:
    fake = StrictFakeBigQuery(PROJECT)
    warehouse = Warehouse(fake, sleep=lambda _: None)  # type: ignore[arg-type]
    base = len(spec("identifies").columns)
    settings = replace(SETTINGS, max_columns_per_table=base + extra)
    sent = 0
    for n, traits in enumerate(({f"a{i}": i for i in range(count)}, {f"b{i}": i for i in range(later)})):
        ingest(message(identify(f"c-{n}", traits), f"p-{n}"), warehouse, settings)
        sent += len(traits)
    assert len(columns(fake, IDENTIFIES)) <= base + extra
    written = sum(1 for row in fake.rows[IDENTIFIES] for key in row if key[0] in "ab")
    assert written + len(fake.rows.get(DISCARDS, [])) == sent


# -- an unbounded stream of distinct event names ---------------------------------------------------------


class CountingFake(StrictFakeBigQuery):
    """Counts the metadata calls (tables.get/insert/update, datasets.insert/list) ingest makes."""

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.metadata_calls = 0

    def get_table(self, ref: Any, **kw: Any) -> Any:
        self.metadata_calls += 1
        return super().get_table(ref, **kw)

    def create_dataset(self, dataset: Any, **kw: Any) -> Any:
        self.metadata_calls += 1
        return super().create_dataset(dataset, **kw)

    def create_table(self, table: Any, **kw: Any) -> Any:
        self.metadata_calls += 1
        return super().create_table(table, **kw)

    def list_datasets(self, **kw: Any) -> Any:
        self.metadata_calls += 1
        return super().list_datasets(**kw)

    def update_table(self, table: Any, fields: list[str], **kw: Any) -> Any:
        self.metadata_calls += 1
        return super().update_table(table, fields, **kw)


def track(message_id: str, event: str, **properties: Any) -> dict[str, Any]:
    return {"type": "track", "userId": "u-1", "messageId": message_id, "event": event, "properties": properties}


def test_200_distinct_event_names_each_get_a_table_and_nothing_is_lost() -> None:
    """There is no cap on tables per dataset (BigQuery has none); each new event name costs one table, one
    view and a handful of metadata calls once per instance, then nothing: the schema is cached."""
    fake = CountingFake()
    warehouse = Warehouse(fake, sleep=lambda _: None)  # type: ignore[arg-type]
    ingest(message(track("warm", "Warm Up", n=1), "p-warm"), warehouse, SETTINGS)  # dataset and tracks exist
    before = fake.metadata_calls
    for i in range(200):
        ingest(message(track(f"c-{i}", f"Event {i:03d}", n=i), f"p-{i}"), warehouse, SETTINGS)
    per_new_event = (fake.metadata_calls - before) / 200
    tables = {key.rsplit(".", 1)[1] for key in fake.tables}
    events = {f"event_{i:03d}" for i in range(200)}
    assert events <= tables and {f"{e}_view" for e in events} <= tables
    for i in range(200):
        [row] = fake.rows[f"{PROJECT}.personas_default.event_{i:03d}"]
        assert (row["id"], row["event_text"], row["n"]) == (f"c-{i}", f"Event {i:03d}", i)
    assert len(fake.rows[TRACKS]) == 201 and rejections(fake) == []
    assert per_new_event == 5  # get (404), create table, view; get + update for its column (the dataset exists)
    before = fake.metadata_calls
    for i in range(200):
        ingest(message(track(f"d-{i}", f"Event {i:03d}", n=i), f"q-{i}"), warehouse, SETTINGS)
    assert fake.metadata_calls == before  # known events cost no metadata call
    assert len(fake.rows[TRACKS]) == 401


def test_event_names_that_name_alike_share_a_table_and_keep_their_text(
    fake: StrictFakeBigQuery, warehouse: Warehouse
) -> None:
    for i, event in enumerate(("Audience Entered", "audience_entered", "AUDIENCE ENTERED", "Audience-Entered!")):
        ingest(message(track(f"c-{i}", event), f"p-{i}"), warehouse, SETTINGS)
    rows = fake.rows[f"{PROJECT}.personas_default.audience_entered"]
    assert [r["event_text"] for r in rows] == [
        "Audience Entered",
        "audience_entered",
        "AUDIENCE ENTERED",
        "Audience-Entered!",
    ]


# -- deep nesting ----------------------------------------------------------------------------------------


def nested(depth: int, leaf: str = "1") -> str:
    return '{"a":' * depth + leaf + "}" * depth


def test_nesting_past_max_depth_is_json_text_in_the_column_at_that_depth(fake: StrictFakeBigQuery) -> None:
    data = f'{{"type":"identify","userId":"u","messageId":"m","traits":{nested(50)}}}'.encode()
    assert post(fake, data) == 204
    column = "_".join(["a"] * MAX_DEPTH)
    assert columns(fake, IDENTIFIES)[column] == "STRING"
    assert json.loads(row_of(fake)[column]) == json.loads(nested(50 - MAX_DEPTH))


def test_nesting_past_the_parser_is_invalid_json(fake: StrictFakeBigQuery) -> None:
    data = f'{{"type":"identify","userId":"u","messageId":"m","traits":{nested(5_000)}}}'.encode()
    assert post(fake, data) == 204
    [row] = rejections(fake)
    assert (row["error_class"], json.loads(row["errors"])) == ("invalid_json", {"data": ["Nested too deeply."]})


def at_stack_depth(frames: int, fn: Callable[[], int]) -> int:
    """Call `fn` with `frames` more frames on the stack: functions-framework, Flask and gunicorn's threads
    call the function from deeper than a test does, and Python's parser limit counts the caller's frames."""
    return fn() if frames == 0 else at_stack_depth(frames - 1, fn)


@FAST
@given(
    depth=st.integers(1, 1_100) | st.integers(sys.getrecursionlimit() - 150, sys.getrecursionlimit() + 10),
    frames=st.integers(0, 200),
    where=st.sampled_from(["traits", "context", "array", "batch-refused"]),
)
def test_any_nesting_is_a_row_or_a_rejection_never_a_redelivery(depth: int, frames: int, where: str) -> None:
    """Around the parser's limit, decoding succeeds but a later step at a deeper stack (flattening, the
    JSON text of a column, re-serializing a refused call of a batch) could still overflow: that would be
    a 500 and a redelivery loop. Every depth at every stack depth is acked with a row or a rejection."""
    call = {
        "traits": f'{{"type":"identify","userId":"u","messageId":"m","traits":{nested(depth)}}}',
        "context": f'{{"type":"identify","userId":"u","messageId":"m","context":{nested(depth)}}}',
        "array": f'{{"type":"identify","userId":"u","messageId":"m","traits":{{"x":{"[" * depth}1{"]" * depth}}}}}',
        "batch-refused": f'{{"batch":[{{"type":"identify","messageId":"m","traits":{nested(depth)}}}]}}',
    }[where]
    fake = StrictFakeBigQuery(PROJECT)
    assert at_stack_depth(frames, lambda: post(fake, call.encode())) == 204
    refused = [r["error_class"] for r in rejections(fake)]
    written = len(fake.rows.get(IDENTIFIES, []))
    if where == "batch-refused":
        assert written == 0 and refused in (["schema_violation"], ["invalid_json"])
    else:
        assert (written, refused) in ((1, []), (0, ["invalid_json"]))


# -- numbers beyond INT64 --------------------------------------------------------------------------------


def test_integers_beyond_int64_make_a_string_column_or_a_type_conflict(
    fake: StrictFakeBigQuery, warehouse: Warehouse
) -> None:
    ingest(message(identify("c-1", {"big": 2**63, "small": 1})), warehouse, SETTINGS)
    assert columns(fake, IDENTIFIES)["big"] == "STRING" and columns(fake, IDENTIFIES)["small"] == "INT64"
    assert row_of(fake)["big"] == "9223372036854775808"
    ingest(message(identify("c-2", {"small": 2**63 - 1}), "p-2"), warehouse, SETTINGS)
    ingest(message(identify("c-3", {"small": -(2**63)}), "p-3"), warehouse, SETTINGS)
    ingest(message(identify("c-4", {"small": -(2**63) - 1}), "p-4"), warehouse, SETTINGS)
    assert [r.get("small") for r in fake.rows[IDENTIFIES]] == [1, 2**63 - 1, -(2**63), None]
    [lost] = fake.rows[DISCARDS]
    assert (lost["reason"], lost["column_type"], lost["row_id"]) == ("type_conflict", "INT64", "c-4")
    assert lost["column_value"] == "-9223372036854775809"  # exact, as sent


def test_an_integer_past_pythons_digit_limit_is_invalid_json(fake: StrictFakeBigQuery) -> None:
    data = b'{"type":"identify","userId":"u","messageId":"m","traits":{"n":' + b"9" * 4_301 + b"}}"
    assert post(fake, data) == 204
    [row] = rejections(fake)
    assert row["error_class"] == "invalid_json" and "4300 digits" in row["errors"]


@FAST
@given(value=st.integers(-(2**70), 2**70) | st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1]))
def test_an_integer_into_an_int64_column_is_exact_or_discarded_exactly(value: int) -> None:
    fake = StrictFakeBigQuery(PROJECT)
    warehouse = Warehouse(fake, sleep=lambda _: None)  # type: ignore[arg-type]
    ingest(message(identify("c-0", {"n": 0}), "p-0"), warehouse, SETTINGS)
    ingest(message(identify("c-1", {"n": value}), "p-1"), warehouse, SETTINGS)
    stored = fake.rows[IDENTIFIES][1].get("n")
    if -(2**63) <= value < 2**63:
        assert stored == value and DISCARDS not in fake.rows
    else:
        assert stored is None and json.loads(fake.rows[DISCARDS][0]["column_value"]) == value


# -- timestamps without a zone, far in the past or future ------------------------------------------------


@pytest.mark.parametrize(
    ("value", "column_type", "stored"),
    [
        ("2026-11-01T10:00:00", "STRING", "2026-11-01T10:00:00"),  # no zone: not a moment, kept as sent
        ("2026-11-01 10:00", "STRING", "2026-11-01 10:00"),
        ("0001-01-01T00:00:00Z", "TIMESTAMP", "0001-01-01T00:00:00.000000Z"),
        ("9999-12-31T23:59:59.999999Z", "TIMESTAMP", "9999-12-31T23:59:59.999999Z"),
        ("9999-12-31T23:59:59-01:00", "STRING", "9999-12-31T23:59:59-01:00"),  # past 9999 once in UTC
        ("+10000-01-01T00:00:00Z", "STRING", "+10000-01-01T00:00:00Z"),
    ],
)
def test_trait_timestamps(
    fake: StrictFakeBigQuery, warehouse: Warehouse, value: str, column_type: str, stored: str
) -> None:
    ingest(message(identify(traits={"seen": value})), warehouse, SETTINGS)
    assert columns(fake, IDENTIFIES)["seen"] == column_type and row_of(fake)["seen"] == stored


@pytest.mark.parametrize(
    ("fields", "event_time"),
    [
        ({"timestamp": "2026-11-01T10:00:00"}, "2026-11-01T10:00:00.000000Z"),  # no zone: read as UTC
        ({"timestamp": "0001-01-01T00:00:00Z"}, "0001-01-01T00:00:00.000000Z"),
        ({"timestamp": "9999-12-31T23:59:59Z"}, "9999-12-31T23:59:59.000000Z"),
        # absurd client clocks: the skew correction would overflow, originalTimestamp is used
        (
            {"sentAt": "9999-12-30T00:00:00Z", "originalTimestamp": "0001-01-02T00:00:00Z"},
            "0001-01-02T00:00:00.000000Z",
        ),
        ({}, "2026-11-29T00:00:00.000000Z"),  # nothing sent: the publish time
    ],
)
def test_call_timestamps_far_off_are_kept_and_partitions_stay_on_arrival_time(
    fake: StrictFakeBigQuery, warehouse: Warehouse, fields: dict[str, str], event_time: str
) -> None:
    ingest(message({**identify(), **fields}), warehouse, SETTINGS, now=lambda: RECEIVED)
    row = row_of(fake)
    assert row["timestamp"] == event_time
    # partitions are by arrival (identifies: loaded_at, tracks: received_at), never by the client's clock
    assert (row["received_at"], row["loaded_at"]) == ("2026-11-29T00:00:00.000000Z", "2026-11-29T00:00:01.000000Z")
    assert spec("identifies").partition_field == "loaded_at" and spec("tracks").partition_field == "received_at"


@pytest.mark.parametrize(
    ("fields", "path", "reason"),
    [
        ({"timestamp": "9999-12-31T23:59:59-01:00"}, "timestamp", "Outside the years 1-9999 once in UTC."),
        ({"sentAt": "10000-01-01T00:00:00Z"}, "sentAt", "Not a valid datetime."),
        ({"originalTimestamp": "2026-13-01T00:00:00Z"}, "originalTimestamp", "Not a valid datetime."),
    ],
)
def test_a_call_timestamp_that_is_no_moment_is_a_schema_violation(
    fake: StrictFakeBigQuery, warehouse: Warehouse, fields: dict[str, str], path: str, reason: str
) -> None:
    ingest(message({**identify(), **fields}), warehouse, SETTINGS)
    [row] = rejections(fake)
    assert (row["error_class"], json.loads(row["errors"])) == ("schema_violation", {path: [reason]})


# -- every field of a call missing or of the wrong type --------------------------------------------------

MISSING = object()
VALUES: dict[str, Any] = {
    "missing": MISSING,
    "null": None,
    "0": 0,
    "1.5": 1.5,
    "true": True,
    '""': "",
    '"x"': "x",
    "[]": [],
    "[1]": [1],
    "{}": {},
    '{"a":1}': {"a": 1},
}
VALID_TRACK = {
    "type": "track",
    "event": "Audience Entered",
    "userId": "u",
    "anonymousId": "a",
    "messageId": "m",
    "timestamp": "2026-11-01T00:00:00Z",
    "sentAt": "2026-11-01T00:00:01Z",
    "originalTimestamp": "2026-11-01T00:00:00Z",
    "traits": {"k": 1},
    "properties": {"p": True},
    "context": {"personas": {"space_id": "spa_1"}},
}
# Which replacements of a field still give a row; every other one is a schema_violation naming the field.
# (userId and anonymousId: the call keeps the other one. Identifiers take strings and integers, as
# Segment does; timestamps must be ISO-8601 or null; traits, properties and context objects or null.)
GIVES_A_ROW = {
    "type": set(),
    "event": {'"x"'},
    "userId": {"missing", "null", "0", '""', '"x"'},
    "anonymousId": {"missing", "null", "0", '""', '"x"'},
    "messageId": {"0", '"x"'},
    "timestamp": {"missing", "null"},
    "sentAt": {"missing", "null"},
    "originalTimestamp": {"missing", "null"},
    "traits": {"missing", "null", "{}", '{"a":1}'},
    "properties": {"missing", "null", "{}", '{"a":1}'},
    "context": {"missing", "null", "{}", '{"a":1}'},
}


def outcome_of(fake: StrictFakeBigQuery, data: bytes) -> tuple[str, set[str]]:
    """("row", set()) or (error class, the top-level fields its errors name), after a 204."""
    assert post(fake, data) == 204
    refused = rejections(fake)
    written = len(fake.rows.get(TRACKS, [])) + len(fake.rows.get(IDENTIFIES, []))
    if not refused:
        assert written == 1
        return "row", set()
    assert written == 0 and len(refused) == 1
    [refused_row] = refused
    return refused_row["error_class"], {path.split(".")[0] for path in json.loads(refused_row["errors"])}


@pytest.mark.parametrize("value_name", list(VALUES))
@pytest.mark.parametrize("name", list(VALID_TRACK))
def test_each_call_field_missing_or_of_the_wrong_type(fake: StrictFakeBigQuery, name: str, value_name: str) -> None:
    assert set(GIVES_A_ROW) == set(VALID_TRACK)
    doc = {k: v for k, v in VALID_TRACK.items() if k != name}
    if VALUES[value_name] is not MISSING:
        doc[name] = VALUES[value_name]
    expected = ("row", set()) if value_name in GIVES_A_ROW[name] else ("schema_violation", {name})
    assert outcome_of(fake, json.dumps(doc).encode()) == expected


def test_a_call_with_no_field_at_all_names_every_required_one(fake: StrictFakeBigQuery) -> None:
    assert outcome_of(fake, b"{}") == ("schema_violation", {"type", "messageId"})


@FAST
@given(
    name=st.sampled_from(sorted(VALID_TRACK)),
    value=json_documents(),
    kind=st.sampled_from(["identify", "track"]),
)
def test_any_json_in_any_call_field_is_a_row_or_a_schema_violation_naming_it(name: str, value: Any, kind: str) -> None:
    doc = {**VALID_TRACK, "type": kind, name: value}
    result, paths = outcome_of(StrictFakeBigQuery(PROJECT), json.dumps(doc).encode())
    assert (result, paths) == ("row", set()) or (result, paths) == ("schema_violation", {name})
