"""Ingest's durable paths, through the real Warehouse adapter over an in-memory BigQuery: what is
written before the ack, what is retried, what is rejected, what raises for a redelivery."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.errors import TransientError
from personas_warehouse.ingest import ingest
from personas_warehouse.messages import PubSubMessage
from personas_warehouse.settings import Settings, SpaceConfig, SpaceDatasets
from schemas.tables import spec
from tests.fakes import FakeBigQuery

PUBLISHED = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(ingest_deadline_seconds=3)


def message(doc: Any, message_id: str = "m-1", **attributes: str) -> PubSubMessage:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return PubSubMessage(message_id, base64.b64encode(data).decode(), PUBLISHED, attributes, "sub")


def identify(message_id: str = "c-1", **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": "u123", "messageId": message_id, "traits": traits}


@pytest.fixture
def fake() -> FakeBigQuery:
    return FakeBigQuery()


@pytest.fixture
def warehouse(fake: FakeBigQuery) -> Warehouse:
    return Warehouse(fake, sleep=lambda _: None)  # type: ignore[arg-type]


def test_identify_creates_dataset_table_and_trait_column(fake: FakeBigQuery, warehouse: Warehouse) -> None:
    outcome = ingest(message(identify(first_time_shopper=True)), warehouse, SETTINGS)
    assert outcome.rows == {"personas_default.identifies": 1}
    table = fake.tables["personas-test.personas_default.identifies"]
    assert table.time_partitioning.field == "loaded_at"  # the users sync reads identifies by load time
    assert table.clustering_fields == ["loaded_at", "user_id"]
    assert {f.name: f.field_type for f in table.schema}["first_time_shopper"] == "BOOL"
    [row] = fake.rows["personas-test.personas_default.identifies"]
    assert row["first_time_shopper"] is True
    assert row["received_at"] == "2026-11-01T12:00:00.000000Z"
    view = fake.tables["personas-test.personas_default.identifies_view"]
    assert "PARTITION BY id" in view.view_query
    assert "`personas-test.personas_default.identifies`" in view.view_query


def test_insert_ids_derive_from_the_pubsub_message(fake: FakeBigQuery, warehouse: Warehouse) -> None:
    seen: list[list[str]] = []
    original = fake.insert_rows_json

    def spy(ref: Any, rows: list[dict[str, Any]], row_ids: list[str], **kw: Any) -> list[Any]:
        seen.append(list(row_ids))
        return original(ref, rows, row_ids, **kw)

    fake.insert_rows_json = spy  # type: ignore[method-assign]
    batch = {"batch": [identify("a", x=1), identify("b", x=2)]}
    ingest(message(batch, "pubsub-7"), warehouse, SETTINGS)
    ingest(message(batch, "pubsub-7"), warehouse, SETTINGS)  # a redelivery
    assert seen == [["pubsub-7:0", "pubsub-7:1"], ["pubsub-7:0", "pubsub-7:1"]]


def test_no_such_field_after_a_schema_change_is_retried(fake: FakeBigQuery, warehouse: Warehouse) -> None:
    answers = [[{"index": 0, "errors": [{"reason": "invalid", "location": "t", "message": "no such field: t."}]}]]
    fake.on_insert = lambda ref, rows: answers.pop() if answers and "identifies" in ref else []
    outcome = ingest(message(identify(t=1)), warehouse, SETTINGS)
    assert outcome.rows == {"personas_default.identifies": 1}
    assert fake.rows["personas-test.personas_default.identifies"][0]["t"] == "1"  # INT64 travels as a string


def test_row_refused_by_bigquery_is_recorded_and_its_neighbours_written(
    fake: FakeBigQuery, warehouse: Warehouse
) -> None:
    def refuse_second(ref: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if "identifies" not in ref or len(rows) < 2:
            return []
        return [
            {"index": 0, "errors": [{"reason": "stopped", "message": ""}]},
            {"index": 1, "errors": [{"reason": "invalid", "location": "x", "message": "value too big"}]},
        ]

    fake.on_insert = refuse_second
    outcome = ingest(message({"batch": [identify("a", x=1), identify("b", x=2)]}), warehouse, SETTINGS)
    assert [r["id"] for r in fake.rows["personas-test.personas_default.identifies"]] == ["a"]
    [rejected] = fake.rows["personas-test.personas__ops.rejected_messages"]
    assert rejected["error_class"] == "row_refused"
    assert rejected["call_index"] == "1"
    assert json.loads(rejected["errors"]) == {"identifies.x": ["value too big"]}
    assert outcome.rows == {"personas_default.identifies": 1}


@pytest.mark.parametrize(
    "failure",
    [gexc.ServiceUnavailable("down"), gexc.InternalServerError("boom"), ConnectionError("reset")],
)
def test_transient_bigquery_failure_raises_for_redelivery(
    fake: FakeBigQuery, warehouse: Warehouse, failure: Exception
) -> None:
    def fail(ref: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        raise failure

    fake.on_insert = fail
    with pytest.raises((TransientError, type(failure))):
        ingest(message(identify(x=1)), warehouse, replace(SETTINGS, ingest_deadline_seconds=1.5))
    assert fake.insert_calls >= 1
    assert fake.rows["personas-test.personas_default.identifies"] == []


def test_retrying_no_such_field_stops_at_the_deadline(fake: FakeBigQuery, warehouse: Warehouse) -> None:
    never = [{"index": 0, "errors": [{"reason": "invalid", "message": "no such field: t."}]}]
    fake.on_insert = lambda ref, rows: never
    clock = iter(range(0, 10_000, 1))  # every read of the clock is a second: 24 covers the reads before the 1st insert

    import personas_warehouse.ingest as ingest_module

    class TickingDeadline(ingest_module.Deadline):
        def __init__(self, seconds: float) -> None:
            super().__init__(seconds, clock=lambda: float(next(clock)))

    original = ingest_module.Deadline
    ingest_module.Deadline = TickingDeadline  # type: ignore[misc]
    try:
        with pytest.raises(TransientError):
            ingest(message(identify(t=1)), warehouse, replace(SETTINGS, ingest_deadline_seconds=34))
    finally:
        ingest_module.Deadline = original  # type: ignore[misc]
    assert 1 <= fake.insert_calls <= 30


def test_bad_json_is_rejected_with_raw_data_and_acked(fake: FakeBigQuery, warehouse: Warehouse) -> None:
    outcome = ingest(message(b"{not json", "bad-1", origin="test"), warehouse, SETTINGS)
    [rejection] = outcome.rejections
    assert rejection.error_class == "invalid_json"
    [row] = fake.rows["personas-test.personas__ops.rejected_messages"]
    assert row["data"] == "{not json"
    assert row["message_id"] == "bad-1"
    assert json.loads(row["attributes"]) == {"origin": "test"}
    assert row["call_index"] is None


def test_rejected_data_is_cut_to_the_limit(fake: FakeBigQuery, warehouse: Warehouse) -> None:
    settings = replace(SETTINGS, max_message_bytes=100, max_rejected_data_bytes=10)
    ingest(message(identify(x="y" * 200)), warehouse, settings)
    [row] = fake.rows["personas-test.personas__ops.rejected_messages"]
    assert row["error_class"] == "oversized"
    assert len(row["data"]) == 10
    assert row["data_truncated"] is True


def test_type_conflict_writes_null_and_a_discard(fake: FakeBigQuery, warehouse: Warehouse) -> None:
    ingest(message(identify("a", score=5)), warehouse, SETTINGS)
    outcome = ingest(message(identify("b", score="high"), "m-2"), warehouse, SETTINGS)
    assert outcome.discards == 1
    rows = fake.rows["personas-test.personas_default.identifies"]
    assert [r.get("score") for r in rows] == ["5", None]
    [discard] = fake.rows["personas-test.personas_default.discards"]
    assert discard["reason"] == "type_conflict"
    assert discard["column_type"] == "INT64"
    assert discard["column_value"] == '"high"'
    assert discard["row_id"] == "b"


def test_selective_sync_disabled_table_and_column_get_nothing(fake: FakeBigQuery, warehouse: Warehouse) -> None:
    settings = replace(
        SETTINGS,
        spaces={
            "default": SpaceConfig(
                disabled_tables=frozenset({"audience_exited"}), disabled_columns={"*": frozenset({"secret"})}
            )
        },
    )
    ingest(message(identify(secret="s", kept=1)), warehouse, settings)
    exited = {"type": "track", "userId": "u", "messageId": "e", "event": "Audience Exited", "properties": {"a": True}}
    outcome = ingest(message(exited, "m-2"), warehouse, settings)
    columns = {f.name for f in fake.tables["personas-test.personas_default.identifies"].schema}
    assert "kept" in columns and "secret" not in columns
    assert "personas-test.personas_default.audience_exited" not in fake.tables
    assert outcome.rows == {"personas_default.tracks": 1}


def test_columns_added_by_another_instance_keep_their_type(fake: FakeBigQuery, warehouse: Warehouse) -> None:
    other = Warehouse(fake, sleep=lambda _: None)  # type: ignore[arg-type]
    ingest(message(identify("a", base=1)), warehouse, SETTINGS)  # caches the schema
    ingest(message(identify("b", level="gold"), "m-2"), other, SETTINGS)  # adds level as STRING
    ingest(message(identify("c", level=3), "m-3"), warehouse, SETTINGS)  # stale cache: wants INT64
    types = {f.name: f.field_type for f in fake.tables["personas-test.personas_default.identifies"].schema}
    assert types["level"] == "STRING"
    assert fake.rows["personas-test.personas_default.identifies"][-1]["level"] == "3"


# -- how a space dataset is created -------------------------------------------------------------------------

KEY = "projects/p/locations/us/keyRings/r/cryptoKeys/k"


def test_a_new_space_dataset_gets_the_configured_access_entries_and_key(fake: FakeBigQuery) -> None:
    options = SpaceDatasets(
        writers=("serviceAccount:ingest@p.iam.gserviceaccount.com", "serviceAccount:sync@p.iam.gserviceaccount.com"),
        readers=("group:analysts@example.com", "domain:example.com", "user:ana@example.com"),
        kms_key_name=KEY,
    )
    warehouse = Warehouse(fake, sleep=lambda _: None, space_datasets=options)  # type: ignore[arg-type]
    ingest(message(identify(plan="pro")), warehouse, SETTINGS)
    created = fake.dataset_specs["personas_default"]
    entries = {(e.role, e.entity_type, e.entity_id) for e in created.access_entries}
    assert entries == {
        ("OWNER", "specialGroup", "projectOwners"),  # a dataset needs an owner; not the creating function
        ("WRITER", "userByEmail", "ingest@p.iam.gserviceaccount.com"),
        ("WRITER", "userByEmail", "sync@p.iam.gserviceaccount.com"),
        ("READER", "groupByEmail", "analysts@example.com"),
        ("READER", "domain", "example.com"),
        ("READER", "userByEmail", "ana@example.com"),
    }
    assert created.default_encryption_configuration.kms_key_name == KEY


def test_without_access_settings_bigquery_keeps_its_defaults(fake: FakeBigQuery, warehouse: Warehouse) -> None:
    ingest(message(identify(plan="pro")), warehouse, SETTINGS)
    created = fake.dataset_specs["personas_default"]
    assert created.access_entries == [] and created.default_encryption_configuration is None


def test_a_caller_without_datasets_create_makes_tables_in_an_existing_dataset(fake: FakeBigQuery) -> None:
    """The sync holds no bigquery.datasets.create: making users_state in a space dataset that exists must not
    ask for it (BigQuery checks the permission before it says the dataset exists)."""
    ingest(message(identify(plan="pro")), Warehouse(fake, sleep=lambda _: None), SETTINGS)  # type: ignore[arg-type]

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise gexc.Forbidden("Permission bigquery.datasets.create denied")

    fake.create_dataset = forbidden  # type: ignore[method-assign]
    sync_like = Warehouse(fake, sleep=lambda _: None)  # type: ignore[arg-type]
    schema = sync_like.ensure_table("personas_default", "users_state", spec("users_state"), Deadline(30))
    assert "_asof" in schema and "personas-test.personas_default.users_state" in fake.tables
