"""An in-memory stand-in for google.cloud.bigquery.Client: just the calls the Warehouse adapter makes,
with failure injection, so ingest's error paths are tested without a network."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery

_CREATE_FUNCTION = re.compile(r"CREATE OR REPLACE TABLE FUNCTION `([^`]+)`")


class FakeBigQuery:
    def __init__(self, project: str = "personas-test") -> None:
        self.project = project
        self.datasets: set[str] = set()
        self.tables: dict[str, bigquery.Table] = {}
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.insert_calls = 0
        self.routines: set[str] = set()  # `project.dataset.name` of the functions the statements created
        # Hook per insert: (table_ref, rows) -> row errors to answer, or raise.
        self.on_insert: Callable[[str, list[dict[str, Any]]], list[dict[str, Any]]] | None = None

    def _key(self, ref: Any) -> str:
        return ref if isinstance(ref, str) else f"{ref.project}.{ref.dataset_id}.{ref.table_id}"

    def get_table(self, ref: Any, **_: Any) -> bigquery.Table:
        key = self._key(ref)
        if key not in self.tables:
            raise gexc.NotFound(f"table {key}")
        return self.tables[key]

    def get_routine(self, ref: str, **_: Any) -> Any:
        if ref not in self.routines:
            raise gexc.NotFound(f"routine {ref}")
        return ref

    def created_routine(self, text: str) -> None:
        """Keep the function a `CREATE OR REPLACE TABLE FUNCTION` statement (sent as a query) creates."""
        if made := _CREATE_FUNCTION.match(text):
            self.routines.add(made[1])

    def create_dataset(self, dataset: bigquery.Dataset, **_: Any) -> bigquery.Dataset:
        self.datasets.add(dataset.dataset_id)
        return dataset

    def create_table(self, table: bigquery.Table, exists_ok: bool = False, **_: Any) -> bigquery.Table:
        key = self._key(table.reference)
        if table.dataset_id not in self.datasets:
            raise gexc.NotFound(f"dataset {table.dataset_id}")
        if key in self.tables and not exists_ok:
            raise gexc.Conflict(f"Already Exists: Table {key}")
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


# BigQuery's answers the strict fake reproduces. The two request limits and their 400 texts are
# BigQuery's own (quoted in googleapis/google-cloud-go#2855 and wepay/kafka-connect-bigquery#298, the
# latter when the row limit was 10,000); the row-level shape is insertAll's `insertErrors`.
REQUEST_LIMIT_BYTES = 10_485_760
REQUEST_LIMIT_ROWS = 50_000
DEDUP_WINDOW_SECONDS = 60.0
_INT_TEXT = re.compile(r"^[+-]?\d+\Z")
_LEGACY = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}


class FakeClock:
    """Seconds that move only when told (the dedup window and test deadlines run on it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _type_error(kind: str, value: Any) -> str | None:
    """Why BigQuery would refuse `value` (as parsed from JSON) in a NULLABLE column of `kind`."""
    if value is None:
        return None
    if kind == "INT64":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return f"Cannot convert value to integer (bad value): {value!r}"
        if isinstance(value, str) and not _INT_TEXT.match(value):
            return f"Cannot convert value to integer (bad value): {value}"
        if isinstance(value, float) and not value.is_integer():
            return f"Cannot convert value to integer (bad value): {value}"
        if not -(2**63) <= int(value) < 2**63:
            return f"Value out of range for INT64: {value}"
        return None
    if kind == "FLOAT64":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"Cannot convert value to floating point (bad value): {value!r}"
    if kind == "BOOL":
        return None if isinstance(value, bool) else f"Cannot convert value to boolean (bad value): {value!r}"
    if kind == "TIMESTAMP":
        if isinstance(value, str):
            try:
                datetime.fromisoformat(value.replace("z", "Z"))
                return None
            except ValueError:
                pass
        return f"Could not parse {value!r} as a timestamp."
    if kind == "STRING":
        return None if isinstance(value, str) else f"Cannot convert value to string (bad value): {value!r}"
    return f"unsupported column type {kind}"


def _stored(kind: str, value: Any) -> Any:
    """The value BigQuery keeps. JSON numbers are read as IEEE doubles (as a proto3 JSON parser does), so an
    INT64 sent as a number past 2**53 is rounded; an integer string is parsed exactly."""
    if value is None:
        return None
    if kind == "INT64":
        return int(value) if isinstance(value, str) else int(float(value))
    if kind == "FLOAT64":
        return float(value)
    return value


class StrictFakeBigQuery(FakeBigQuery):
    """FakeBigQuery that is as strict as BigQuery where bqemulator is lenient: it refuses requests over
    insertAll's limits (400, whole request), refuses unknown fields and wrong types row by row (`invalid`
    for the bad row, `stopped` for its neighbours, nothing written), drops rows whose insertId it saw within
    the dedup window, and answers 404 to the first `not_found_inserts` inserts into a table after its
    creation (streaming metadata is eventually consistent). Every request body is kept, serialized as
    google-cloud-bigquery serializes it, in `requests` as (table, body)."""

    def __init__(self, project: str = "personas-test", *, clock: FakeClock | None = None) -> None:
        super().__init__(project)
        self.clock = clock or FakeClock()
        self.not_found_inserts = 0  # applies to tables created from now on
        self.requests: list[tuple[str, str]] = []
        self._seen: dict[tuple[str, str], float] = {}
        self._missing_for: dict[str, int] = {}

    def create_table(self, table: bigquery.Table, **kw: Any) -> bigquery.Table:
        key = self._key(table.reference)
        if key not in self.tables and self.not_found_inserts:
            self._missing_for[key] = self.not_found_inserts
        return super().create_table(table, **kw)

    def drop_table(self, ref: str) -> None:
        """What an operator's `DROP TABLE` does: the table, its rows and its dedup memory are gone."""
        self.tables.pop(ref, None)
        self.rows.pop(ref, None)
        self._seen = {k: v for k, v in self._seen.items() if k[0] != ref}

    def insert_rows_json(self, ref: Any, rows: list[dict[str, Any]], row_ids: list[str], **_: Any) -> list[Any]:
        key = self._key(ref)
        self.insert_calls += 1
        body = json.dumps({"rows": [{"json": r, "insertId": i} for r, i in zip(rows, row_ids, strict=True)]})
        self.requests.append((key, body))
        if len(body.encode()) > REQUEST_LIMIT_BYTES:
            raise gexc.BadRequest(f"Request payload size exceeds the limit: {REQUEST_LIMIT_BYTES} bytes.")
        if len(rows) > REQUEST_LIMIT_ROWS:
            raise gexc.BadRequest(
                f"too many rows present in the request, limit: {REQUEST_LIMIT_ROWS} row count: {len(rows)}."
            )
        if self._missing_for.get(key, 0) > 0:
            self._missing_for[key] -= 1
            raise gexc.NotFound(f"Table {key} not found.")
        if key not in self.tables:
            raise gexc.NotFound(f"Not found: Table {key}")
        parsed = json.loads(body)["rows"]  # what BigQuery receives, not the caller's Python objects
        schema = {f.name.lower(): _LEGACY.get(f.field_type, f.field_type) for f in self.tables[key].schema}
        bad: dict[int, list[dict[str, str]]] = {}
        for index, entry in enumerate(parsed):
            for name, value in entry["json"].items():
                kind = schema.get(name.lower())
                why = f"no such field: {name}." if kind is None else _type_error(kind, value)
                if why is not None:
                    problem = {"reason": "invalid", "location": name, "debugInfo": "", "message": why}
                    bad.setdefault(index, []).append(problem)
        if bad:
            stopped = [{"reason": "stopped", "location": "", "debugInfo": "", "message": ""}]
            return [{"index": i, "errors": bad.get(i, stopped)} for i in range(len(parsed))]
        for entry in parsed:
            seen = self._seen.get((key, entry["insertId"]))
            if seen is not None and self.clock() - seen < DEDUP_WINDOW_SECONDS:
                continue
            self._seen[(key, entry["insertId"])] = self.clock()
            self.rows[key].append({k: _stored(schema[k.lower()], v) for k, v in entry["json"].items()})
        return []
