"""The sync's flow over a model of BigQuery (tests/sync_fakes.py): which work a run sends, and that a
column switched back on by selective sync is filled from history even when the run that should have
filled it failed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.api_core import exceptions as gexc

from personas_warehouse import naming, sync
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.settings import Settings, SpaceConfig
from schemas.tables import spec
from tests.sync_fakes import ModelBigQuery

DATASET = naming.space_dataset("default")
START = datetime(2026, 11, 28, tzinfo=UTC)
ON = Settings(project="personas-test")
OFF = Settings(project="personas-test", spaces={"default": SpaceConfig(disabled_columns={"*": frozenset({"level"})})})


def setup(traits: dict[str, str]) -> tuple[ModelBigQuery, Warehouse]:
    client = ModelBigQuery("personas-test")
    warehouse = Warehouse(client)  # type: ignore[arg-type]
    deadline = Deadline(60)
    warehouse.ensure_table(DATASET, "identifies", spec("identifies"), deadline)
    warehouse.add_columns(DATASET, "identifies", traits, deadline)
    client.add_rows(DATASET, "identifies", [(7, START - timedelta(hours=1))])
    return client, warehouse


def run(warehouse: Warehouse, settings: Settings, minutes: int) -> dict[str, object]:
    [space] = sync.run_sync(warehouse, settings, spaces=["default"], now=lambda: START + timedelta(minutes=minutes))[
        "spaces"
    ]
    return space["tables"]["users"]  # type: ignore[no-any-return]


def users_dml(client: ModelBigQuery) -> list[str]:
    """The statements the users table's run sent (the other derived tables' are theirs to test)."""
    return [text for text, _ in client.dml if text.startswith(f"MERGE `personas-test.{DATASET}.users_state`")]


def backfills(client: ModelBigQuery) -> list[str]:
    return [text for text in users_dml(client) if "`level` IS NOT NULL" in text]


def test_a_column_switched_back_on_is_filled_from_history_even_after_a_failed_run() -> None:
    client, warehouse = setup({"vip": "BOOL", "level": "INT64"})
    assert run(warehouse, OFF, 0)["skipped_columns"] == '["level"]'  # first run: full, level left out

    client.dml.clear()
    client.fail = lambda text: gexc.InternalServerError("backend error") if "`level` IS NOT NULL" in text else None
    failed = run(warehouse, ON, 1)
    assert failed["status"] == sync.FAILURE and len(backfills(client)) == 1

    client.dml.clear()
    client.fail = lambda text: None
    done = run(warehouse, ON, 2)
    assert done["status"] == sync.SUCCESS and done["skipped_columns"] == "[]"
    [backfill] = backfills(client)
    assert "`level`" in backfill and "`vip`" not in backfill  # only that column, from the whole history
    assert "@since" not in backfill

    client.dml.clear()
    run(warehouse, ON, 3)
    assert backfills(client) == []  # nothing pending any more


def test_a_column_new_to_identifies_needs_no_backfill() -> None:
    """It can only hold values in rows loaded after the last run read the schema: the window has them."""
    client, warehouse = setup({"vip": "BOOL"})
    run(warehouse, ON, 0)
    warehouse.add_columns(DATASET, "identifies", {"level": "INT64"}, Deadline(60))
    client.add_rows(DATASET, "identifies", [(9, START + timedelta(seconds=30))])
    client.dml.clear()
    result = run(warehouse, ON, 1)
    assert result["status"] == sync.SUCCESS and backfills(client) == []
    [fold] = users_dml(client)
    assert "`level`" in fold and "@since" in fold


def test_an_idle_run_sends_no_dml_and_moves_the_watermark() -> None:
    client, warehouse = setup({"vip": "BOOL"})
    first = run(warehouse, ON, 0)
    client.dml.clear()
    idle = run(warehouse, ON, 1)
    assert idle["status"] == sync.SUCCESS and idle["mode"] == "incremental" and client.dml == []
    assert idle["watermark_to"] > first["watermark_to"]  # type: ignore[operator]
