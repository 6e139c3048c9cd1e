"""The thin BigQuery adapter of the operator commands (over a minimal fake client), time flags, and the
plain-text table."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import bigquery

from infra.ops import common, queries
from personas_warehouse.sql import UnsafeIdentifier
from schemas.tables import spec


class FakeClient:
    def __init__(self, datasets: dict[str, list[str]]) -> None:
        self.datasets = datasets
        self.created: list[Any] = []
        self.jobs: list[tuple[str, Any]] = []

    def list_datasets(self, project: str) -> list[Any]:
        return [SimpleNamespace(dataset_id=d) for d in self.datasets]

    def list_tables(self, ref: str) -> list[Any]:
        dataset = ref.split(".")[-1]
        if dataset not in self.datasets:
            raise gexc.NotFound(ref)
        return [SimpleNamespace(table_id=t) for t in self.datasets[dataset]]

    def get_dataset(self, ref: str) -> Any:
        if ref.split(".")[-1] not in self.datasets:
            raise gexc.NotFound(ref)
        return SimpleNamespace()

    def create_dataset(self, ref: str, exists_ok: bool = False) -> None:
        self.created.append(ref)
        self.datasets.setdefault(ref.split(".")[-1], [])

    def create_table(self, table: bigquery.Table, exists_ok: bool = False) -> None:
        self.created.append(table)

    def query(self, sql: str, job_config: Any, project: str) -> Any:
        self.jobs.append((sql, job_config))
        return SimpleNamespace(result=lambda: [{"n": 1}])


def test_space_tables_lists_only_space_datasets() -> None:
    client = FakeClient({"personas_mkt": ["identifies", "tracks"], "personas__ops": ["replays"], "other": ["x"]})
    warehouse = common.Warehouse(client, "personas-test", "personas__ops")
    assert warehouse.space_tables() == {"mkt": frozenset({"identifies", "tracks"})}
    assert warehouse.ops_tables() == frozenset({"replays"})


def test_ensure_ops_table_creates_it_from_tables_json_only_when_missing() -> None:
    client = FakeClient({"personas__ops": ["rejected_messages"]})
    warehouse = common.Warehouse(client, "personas-test", "personas__ops")
    warehouse.ensure_ops_table("rejected_messages")
    assert client.created == [], "an existing table is not created again (the operator may lack the right)"
    warehouse.ensure_ops_table("replays")
    [table] = client.created
    assert table.table_id == "replays"
    assert [(f.name, f.field_type) for f in table.schema] == [(c.name, c.type) for c in spec("replays").columns]
    assert table.time_partitioning.field == "replayed_at"


def test_ensure_ops_table_creates_a_missing_dataset() -> None:
    client = FakeClient({})
    common.Warehouse(client, "personas-test", "personas__ops").ensure_ops_table("replays")
    assert client.created[0] == "personas-test.personas__ops"


def test_run_sends_arrays_and_scalars_as_parameters() -> None:
    client = FakeClient({})
    warehouse = common.Warehouse(client, "personas-test", "personas__ops")
    at = datetime(2026, 11, 28, tzinfo=UTC)
    tables = [queries.SpaceTable("mkt", "personas_mkt", "identifies")]
    assert warehouse.run(queries.rows_written("personas-test", tables, at, at)) == [{"n": 1}]
    params = {p.name: p for p in client.jobs[0][1].query_parameters}
    assert isinstance(params["s0"], bigquery.ScalarQueryParameter) and params["s0"].value == "mkt"
    assert params["hour"].type_ == "TIMESTAMP"
    warehouse.run(queries.rejections_by_message("personas-test", "personas__ops", ["a", "b"], at))
    ids = client.jobs[1][1].query_parameters[0]
    assert isinstance(ids, bigquery.ArrayQueryParameter) and ids.values == ["a", "b"]


def test_unsafe_names_are_refused_before_any_query() -> None:
    with pytest.raises(UnsafeIdentifier):
        common.Warehouse(FakeClient({}), "personas-test", "ops`; DROP")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T10:00:00Z", datetime(2026, 11, 28, 10, tzinfo=UTC)),
        ("2026-11-28T12:00:00+02:00", datetime(2026, 11, 28, 10, tzinfo=UTC)),
        ("2026-11-28", datetime(2026, 11, 28, tzinfo=UTC)),
    ],
)
def test_time_flags(text: str, expected: datetime) -> None:
    assert common.time_arg(text) == expected


@pytest.mark.parametrize("text", ["2026-11-28T10:00:00", "yesterday"])
def test_time_flags_refuse_no_zone_or_nonsense(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        common.time_arg(text)


def test_render_table_aligns_numbers_right() -> None:
    text = common.render_table(["space", "rows"], [["a", 5], ["longer", 120], ["none", None]])
    assert text.splitlines() == ["space   rows", "a          5", "longer   120", "none       -"]
