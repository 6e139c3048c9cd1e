"""No statement of the sync modifies more than BigQuery's 4,000 partitions, on any path, at a million users
and more: first run, --full, a column switched back on, the fold of a backlog. Driven through run_sync
over a model of BigQuery that refuses such a job as BigQuery does (tests/sync_fakes.py); with the budget
lifted, the same runs are refused, so the check is not blind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from personas_warehouse import naming, sync
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.derived import DERIVED, frame
from personas_warehouse.settings import Settings, SpaceConfig
from schemas.tables import spec
from tests.sync_fakes import BIGQUERY_MAX_PARTITIONS_PER_JOB, ModelBigQuery

SPACE = "big"
DATASET = naming.space_dataset(SPACE)
START = datetime(2026, 12, 1, tzinfo=UTC)
TRAITS = {"plan": "STRING", "score": "INT64", "vip": "BOOL"}
PERSONAS = {"context_personas_computation_class": "STRING", "context_personas_computation_key": "STRING"}


# Every table a derived table may read: identifies, tracks and the Personas events' tables. The model answers
# for all of them with identifies' rows.
SOURCES = {
    "identifies": "identifies",
    "tracks": "tracks",
    **{e: "track_event" for e in ("audience_entered", "audience_exited", "trait_computed")},
}


def warehouse_with(users: int) -> tuple[ModelBigQuery, Warehouse]:
    """A space whose source tables hold one row for each of `users` users, loaded before START."""
    client = ModelBigQuery(every_source_like="identifies")
    warehouse = Warehouse(client)  # type: ignore[arg-type]
    deadline = Deadline(60)
    for table, kind in SOURCES.items():
        warehouse.ensure_table(DATASET, table, spec(kind), deadline)
    warehouse.add_columns(DATASET, "identifies", TRAITS | PERSONAS, deadline)
    for table in ("audience_entered", "audience_exited"):
        warehouse.add_columns(DATASET, table, {"audience_key": "STRING", **PERSONAS}, deadline)
    total = spec("users_state").buckets or 0
    client.add_rows(DATASET, "identifies", (((i * 7919) % total, START - timedelta(days=1)) for i in range(users)))
    return client, warehouse


def sync_at(
    warehouse: Warehouse, moment: datetime, settings: Settings | None = None, **kw: object
) -> dict[str, object]:
    [space] = sync.run_sync(warehouse, settings or Settings(), spaces=[SPACE], now=lambda: moment, **kw)["spaces"]  # type: ignore[arg-type]
    return space


def check(client: ModelBigQuery, space: dict[str, object]) -> None:
    assert client.refused == []
    assert space["status"] == sync.SUCCESS, space
    assert {name: t["status"] for name, t in space["tables"].items()} == {d.name: sync.SUCCESS for d in DERIVED}  # type: ignore[attr-defined]
    assert client.dml and max(n for _, n in client.dml) <= frame.PARTITION_BUDGET <= BIGQUERY_MAX_PARTITIONS_PER_JOB


def test_a_first_run_at_a_million_users_stays_within_the_partition_limit() -> None:
    client, warehouse = warehouse_with(1_000_000)
    space = sync_at(warehouse, START)
    check(client, space)
    users = space["tables"]["users"]  # type: ignore[index]
    assert users["mode"] == "full" and users["statements"] == 3 and users["largest_chunk"] == 4_000


def test_full_rebuild_and_the_fold_of_a_backlog_stay_within_it() -> None:
    client, warehouse = warehouse_with(1_000_000)
    sync_at(warehouse, START)
    # An outage: half a million users' calls arrive in one window.
    client.add_rows(
        DATASET, "identifies", (((i * 104_729) % 10_000, START + timedelta(hours=1)) for i in range(500_000))
    )
    client.dml.clear()
    space = sync_at(warehouse, START + timedelta(hours=2))
    check(client, space)
    users = space["tables"]["users"]  # type: ignore[index]
    assert users["mode"] == "incremental" and users["partitions"] == 10_000 and users["statements"] == 3
    client.dml.clear()
    check(client, sync_at(warehouse, START + timedelta(hours=3), full=True))


def test_a_column_switched_back_on_is_filled_from_history_within_it() -> None:
    client, warehouse = warehouse_with(1_000_000)
    off = Settings(spaces={SPACE: SpaceConfig(disabled_columns={"users": frozenset({"vip"})})})
    first = sync_at(warehouse, START, off)
    assert first["tables"]["users"]["skipped_columns"] == '["vip"]'  # type: ignore[index]
    client.dml.clear()
    space = sync_at(warehouse, START + timedelta(minutes=1))  # no new rows; vip is on again
    check(client, space)
    backfills = [text for text, _ in client.dml if "`vip` IS NOT NULL" in text and ".users_state`" in text]
    assert len(backfills) == 3, "the history of vip, for every user, in three chunks"


def test_a_quiet_run_sends_no_dml() -> None:
    client, warehouse = warehouse_with(1_000)
    sync_at(warehouse, START)
    client.dml.clear()
    space = sync_at(warehouse, START + timedelta(minutes=1))
    assert space["status"] == sync.SUCCESS and client.dml == []


def test_without_the_budget_the_same_runs_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """What BigQuery would answer the sync if it did not chunk its keys."""
    monkeypatch.setattr(frame, "PARTITION_BUDGET", 10_000)
    client, warehouse = warehouse_with(1_000_000)
    space = sync_at(warehouse, START)
    assert space["status"] == sync.FAILURE and "Too many partitions produced by query, allowed 4000" in str(
        space["error"]
    )
    assert client.refused


@pytest.mark.parametrize("derived", DERIVED, ids=lambda d: d.name)
def test_every_derived_table_is_partitioned_for_the_frame(derived: frame.Derived) -> None:
    """The frame keeps only tables split into integer ranges on `_bucket`, at most BigQuery's 10,000."""
    kept = spec(derived.table)
    assert kept.buckets and 1 <= kept.buckets <= 10_000
    assert kept.dataset == "space" and kept.partition_field is None
