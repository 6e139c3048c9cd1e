"""An in-memory stand-in for google.cloud.bigquery.Client: just the calls the Warehouse adapter makes,
with failure injection, so ingest's error paths are tested without a network."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery


class FakeBigQuery:
    def __init__(self, project: str = "personas-test") -> None:
        self.project = project
        self.datasets: set[str] = set()
        self.tables: dict[str, bigquery.Table] = {}
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.insert_calls = 0
        # Hook per insert: (table_ref, rows) -> row errors to answer, or raise.
        self.on_insert: Callable[[str, list[dict[str, Any]]], list[dict[str, Any]]] | None = None

    def _key(self, ref: Any) -> str:
        return ref if isinstance(ref, str) else f"{ref.project}.{ref.dataset_id}.{ref.table_id}"

    def get_table(self, ref: Any, **_: Any) -> bigquery.Table:
        key = self._key(ref)
        if key not in self.tables:
            raise gexc.NotFound(f"table {key}")
        return self.tables[key]

    def create_dataset(self, dataset: bigquery.Dataset, **_: Any) -> bigquery.Dataset:
        self.datasets.add(dataset.dataset_id)
        return dataset

    def create_table(self, table: bigquery.Table, **_: Any) -> bigquery.Table:
        key = self._key(table.reference)
        if table.dataset_id not in self.datasets:
            raise gexc.NotFound(f"dataset {table.dataset_id}")
        self.tables.setdefault(key, table)
        self.rows.setdefault(key, [])
        return self.tables[key]

    def update_table(self, table: bigquery.Table, fields: list[str], **_: Any) -> bigquery.Table:
        key = self._key(table.reference)
        self.tables[key] = table
        return table

    def insert_rows_json(self, ref: Any, rows: list[dict[str, Any]], row_ids: list[str], **_: Any) -> list[Any]:
        key = self._key(ref)
        self.insert_calls += 1
        errors = self.on_insert(key, rows) if self.on_insert else []
        if errors:
            return errors
        known = {f.name for f in self.tables[key].schema}
        for row in rows:
            unknown = set(row) - known
            assert not unknown, f"row has fields the table lacks: {unknown}"  # real BigQuery refuses them
        self.rows[key].extend(rows)
        return []
