"""audience_memberships' pure pieces: where a track call's audience is read from, how a stored value is read,
when the table is skipped, and that a run with nothing new asks nothing. The rule itself is held to an oracle
on the local stack (tests/integration/test_memberships_property.py), every statement to ZetaSQL
(test_sql_analyzer.py) and to BigQuery's partition limit (test_sync_partitions.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from personas_warehouse import naming, sql, sync
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.derived import memberships
from personas_warehouse.settings import PersonasEvents, Settings, SpaceConfig
from schemas.tables import spec
from tests.sync_fakes import ModelBigQuery

SPACE = "aud"
DATASET = naming.space_dataset(SPACE)
PERSONAS = {"context_personas_computation_class": "STRING", "context_personas_computation_key": "STRING"}
NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({"audience_key": "STRING"}, "`audience_key`"),
        ({"context_personas_computation_key": "STRING"}, "`context_personas_computation_key`"),
        (
            {"audience_key": "STRING", "context_personas_computation_key": "STRING"},
            "COALESCE(`audience_key`, `context_personas_computation_key`)",
        ),
        ({"audience_key": "INT64"}, "CAST(`audience_key` AS STRING)"),  # someone sent a number first
        ({"vip": "BOOL"}, None),  # no column names the audience
    ],
)
def test_a_track_calls_audience_is_its_audience_key_else_the_computation_key(
    columns: dict[str, str], expected: str | None
) -> None:
    assert memberships._track_key(columns) == expected


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("BOOL", "`vip`"),
        ("STRING", "CASE `vip` WHEN 'true' THEN TRUE WHEN 'false' THEN FALSE END"),
        ("INT64", "CAST(NULL AS BOOL)"),  # 1 is not a membership; booleans sent later are in discards
        ("FLOAT64", "CAST(NULL AS BOOL)"),
        ("TIMESTAMP", "CAST(NULL AS BOOL)"),
        (None, "CAST(NULL AS BOOL)"),  # no column: the values are in discards, if anywhere
    ],
)
def test_a_stored_value_is_read_by_its_columns_type(kind: str | None, expected: str) -> None:
    assert memberships._read_column(memberships.Audience("vip", 1, "vip", kind)) == expected


def test_column_names_written_as_literals_are_identifiers_first() -> None:
    assert memberships._name("first_time_shopper") == "'first_time_shopper'"
    with pytest.raises(sql.UnsafeIdentifier):
        memberships._name("x' OR TRUE --")


RENAMED = SpaceConfig(personas_events=PersonasEvents("Joined Segment", "Left Segment", "Trait Computed"))


def test_the_event_tables_are_those_of_the_event_names_the_space_config_sets() -> None:
    assert memberships.audience_event_tables(SpaceConfig()) == ("audience_entered", "audience_exited")
    assert memberships.audience_event_tables(RENAMED) == ("joined_segment", "left_segment")


def warehouse(**tables: dict[str, str]) -> tuple[ModelBigQuery, Warehouse]:
    """A space with these tables (name -> extra columns), one row each loaded a day before NOW."""
    client = ModelBigQuery()
    made = Warehouse(client)  # type: ignore[arg-type]
    for name, columns in tables.items():
        made.ensure_table(DATASET, name, spec(name if name == "identifies" else "track_event"), Deadline(10))
        if columns:
            made.add_columns(DATASET, name, columns, Deadline(10))
        client.add_rows(DATASET, name, [(7, NOW - timedelta(days=1))])
    return client, made


def synced(made: Warehouse, settings: Settings | None = None, at: datetime = NOW) -> dict[str, Any]:
    [space] = sync.run_sync(made, settings or Settings(), spaces=[SPACE], now=lambda: at)["spaces"]
    return dict(space["tables"][memberships.NAME])


def test_skipped_when_disabled_by_selective_sync_or_with_no_audience_calls() -> None:
    _, made = warehouse(identifies=PERSONAS)
    off = Settings(spaces={SPACE: SpaceConfig(disabled_tables=frozenset({memberships.NAME}))})
    table = synced(made, off)
    assert (table["status"], table["error"]) == ("skipped", "audience_memberships is disabled by selective sync")
    _, plain = warehouse(identifies={"vip": "BOOL"})  # identify calls, none of an audience class
    table = synced(plain)
    assert (table["status"], table["error"]) == ("skipped", "no audience calls in this space yet")


def test_a_run_with_nothing_new_sends_no_query_of_its_own() -> None:
    """An idle space's run: the frame's window query only (the audiences are asked when statements are built)."""
    client, made = warehouse(identifies=PERSONAS, audience_entered={"audience_key": "STRING"})
    first = synced(made)
    assert first["status"] == "success" and first["mode"] == "full"
    assert any(" AS fingerprint" in q for q in client.queries), "a run with rows asks for their audiences"
    client.queries.clear()
    again = synced(made, at=NOW + timedelta(minutes=1))
    assert again["status"] == "success" and again["mode"] == "incremental" and again["statements"] == 0
    assert [q for q in client.queries if "fingerprint" in q or "MERGE" in q] == []


def test_a_space_that_renamed_its_audience_events_is_read_from_their_tables_and_only_them() -> None:
    """Engage's "Enter Event" / "Exit Event" are configurable: the config's names say which tables hold the
    space's audience track calls, so the default names' tables are no source there (and vice versa)."""
    client, made = warehouse(joined_segment={"audience_key": "STRING"}, audience_entered={"audience_key": "STRING"})
    table = synced(made, Settings(spaces={SPACE: RENAMED}))
    assert table["status"] == "success", table
    folds = [q for q in client.queries if q.startswith(f"MERGE `{client.project}.{DATASET}.audience_events`")]
    assert folds and all(f"{DATASET}.joined_segment`" in q for q in folds), "every fold reads the renamed table"
    assert not any(f"{DATASET}.audience_entered`" in q for q in client.queries)
    _, renamed_only = warehouse(joined_segment={"audience_key": "STRING"})
    table = synced(renamed_only)  # the default names: joined_segment is just another event
    assert (table["status"], table["error"]) == ("skipped", "no audience calls in this space yet")


def test_skipped_when_the_entered_and_exited_events_land_in_one_table() -> None:
    """Two names the config keeps apart ("Audience Entered", "audience entered") can share a table: its rows
    could not say in from out, so the table is skipped, said so in the history row."""
    clash = SpaceConfig(personas_events=PersonasEvents("Audience Entered", "audience entered", "Trait Computed"))
    _, made = warehouse(identifies=PERSONAS, audience_entered={"audience_key": "STRING"})
    table = synced(made, Settings(spaces={SPACE: clash}))
    assert (table["status"], table["error"]) == (
        "skipped",
        "the entered and exited events share the table audience_entered",
    )
