"""The users sync's flow over a fake BigQuery: which statements a run sends, and that a column new to
users is filled from history even when the run that added it failed before doing so."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery

from personas_warehouse import naming, sql, sync
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.settings import Settings
from schemas.tables import spec
from tests.fakes import FakeBigQuery

DATASET = naming.space_dataset("default")
MARK = datetime(2026, 11, 28, tzinfo=UTC)  # the last successful run's watermark
SETTINGS = Settings(project="personas-test")


class Client(FakeBigQuery):
    """Answers the sync's SELECTs as if one user had new rows; can fail the backfill of new columns."""

    def __init__(self) -> None:
        super().__init__("personas-test")
        self.sent: list[str] = []
        self.fail_backfill = False

    def query(self, text: str, job_config: bigquery.QueryJobConfig | None = None, **_: Any) -> Any:
        self.sent.append(text)
        backfill = text.startswith("MERGE") and f"@{sql.SINCE}" not in text and f"@{sql.REBUILD_USERS}" not in text
        if backfill and self.fail_backfill:
            raise gexc.InternalServerError("backend error")
        row = {"rows_read": 1, "watermark_to": None, "touched": [7], "ids": None, "mark": None}
        row["mark"] = MARK if "sync_history" in text else None
        stats = SimpleNamespace(inserted_row_count=0, updated_row_count=1)
        return SimpleNamespace(result=lambda **_: [row], dml_stats=stats)

    def list_datasets(self, **_: Any) -> list[Any]:
        return []


def setup(client: Client, traits: dict[str, str]) -> Warehouse:
    warehouse = Warehouse(client)  # type: ignore[arg-type]
    deadline = Deadline(60)
    warehouse.ensure_table(DATASET, "identifies", spec("identifies"), deadline)
    warehouse.add_columns(DATASET, "identifies", traits, deadline)
    warehouse.ensure_table(SETTINGS.ops_dataset, "sync_history", spec("sync_history"), deadline)
    return warehouse


def backfills(client: Client) -> list[str]:
    return [t for t in client.sent if t.startswith("MERGE") and "@since" not in t and "@rebuild_users" not in t]


def test_a_new_column_is_filled_from_history_even_after_a_failed_run() -> None:
    client = Client()
    warehouse = setup(client, {"vip": "BOOL"})
    sync.run_sync(warehouse, SETTINGS, full=True, spaces=["default"])  # users_state and the view exist
    warehouse.add_columns(DATASET, "identifies", {"level": "INT64"}, Deadline(60))  # a new trait appears

    client.fail_backfill, client.sent = True, []
    [failed] = sync.run_sync(warehouse, SETTINGS, spaces=["default"])["spaces"]
    assert failed["status"] == sync.FAILURE and len(backfills(client)) == 1
    view = client.tables[f"personas-test.{DATASET}.users"]
    assert f"`{naming.asof_column('level')}`" not in (view.view_query or "")  # still pending

    client.fail_backfill, client.sent = False, []
    [done] = sync.run_sync(warehouse, SETTINGS, spaces=["default"])["spaces"]
    assert done["status"] == sync.SUCCESS
    [backfill] = backfills(client)
    assert "`level`" in backfill and "`vip`" not in backfill  # only the new column, from the whole history
    assert f"`{naming.asof_column('level')}`" in client.tables[f"personas-test.{DATASET}.users"].view_query

    client.sent = []
    sync.run_sync(warehouse, SETTINGS, spaces=["default"])
    assert backfills(client) == []  # nothing pending any more


def test_an_idle_run_reads_only_the_window() -> None:
    client = Client()
    warehouse = setup(client, {"vip": "BOOL"})
    sync.run_sync(warehouse, SETTINGS, full=True, spaces=["default"])
    client.query = lambda text, job_config=None, **_: (  # type: ignore[method-assign]
        client.sent.append(text)
        or SimpleNamespace(result=lambda **_: [{"rows_read": 0, "watermark_to": None, "touched": None, "mark": MARK}])
    )
    client.sent = []
    [result] = sync.run_sync(warehouse, SETTINGS, spaces=["default"])["spaces"]
    assert result["status"] == sync.SUCCESS
    assert not [t for t in client.sent if t.startswith("MERGE") or "_rebuild" in t]
