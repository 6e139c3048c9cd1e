"""An in-memory stand-in for google.cloud.bigquery.Client: just the calls the Warehouse adapter makes,
with failure injection, so ingest's error paths are tested without a network."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery

from tests import fake_sql

_CREATE_FUNCTION = re.compile(r"CREATE OR REPLACE TABLE FUNCTION `([^`]+)`")


class FakeBigQuery:
    def __init__(self, project: str = "personas-test") -> None:
        self.project = project
        self.datasets: set[str] = set()
        self.dataset_specs: dict[str, bigquery.Dataset] = {}  # as created: access entries, default key
        self.dataset_listings = 0
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

    def create_dataset(self, dataset: bigquery.Dataset, exists_ok: bool = False, **_: Any) -> bigquery.Dataset:
        if dataset.dataset_id in self.datasets and not exists_ok:
            raise gexc.Conflict(f"Already Exists: Dataset {self.project}:{dataset.dataset_id}")
        self.datasets.add(dataset.dataset_id)
        self.dataset_specs.setdefault(dataset.dataset_id, dataset)
        return self.dataset_specs[dataset.dataset_id]

    def list_datasets(self, **_: Any) -> list[bigquery.DatasetReference]:
        self.dataset_listings += 1
        return [bigquery.DatasetReference(self.project, d) for d in sorted(self.datasets)]

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

    def list_tables(self, dataset: Any, **_: Any) -> list[SimpleNamespace]:
        """tables.list: every table and view of a dataset, with its type."""
        name = str(dataset).rsplit(".", 1)[-1]
        if name not in self.datasets:
            raise gexc.NotFound(f"Not found: Dataset {dataset}")
        return [
            SimpleNamespace(table_id=t.table_id, table_type="VIEW" if t.view_query is not None else "TABLE")
            for key, t in sorted(self.tables.items())
            if key.rsplit(".", 2)[1] == name
        ]

    def list_rows(self, ref: Any, selected_fields: Any = None, **_: Any) -> list[dict[str, Any]]:
        """tabledata.list: the rows, only the selected fields, TIMESTAMPs as datetimes (as the client gives)."""
        key = self._key(ref)
        if key not in self.tables:
            raise gexc.NotFound(f"Not found: Table {key}")
        fields = selected_fields or self.tables[key].schema
        out = []
        for row in self.rows.get(key, []):
            picked = {}
            for f in fields:
                value = row.get(f.name)
                if f.field_type == "TIMESTAMP" and isinstance(value, str):
                    value = datetime.fromisoformat(value.replace("Z", "+00:00"))
                picked[f.name] = value
            out.append(picked)
        return out


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
    the dedup window, answers 404 to the first `not_found_inserts` inserts into a table after its
    creation, and "no such field" for a column added less than `insert_all_lag_seconds` ago (streaming
    metadata is eventually consistent). Every request body is kept, serialized as
    google-cloud-bigquery serializes it, in `requests` as (table, body)."""

    def __init__(self, project: str = "personas-test", *, clock: FakeClock | None = None) -> None:
        super().__init__(project)
        self.clock = clock or FakeClock()
        self.not_found_inserts = 0  # applies to tables created from now on
        self.requests: list[tuple[str, str]] = []
        self._seen: dict[tuple[str, str], float] = {}
        self._missing_for: dict[str, int] = {}
        # BigQuery's streaming buffer: rows written by insertAll cannot be changed by DML for a while
        # (https://cloud.google.com/bigquery/docs/data-manipulation-language#limitations: "the last 30
        # minutes"; up to 90 per https://cloud.google.com/knowledge/kb/cannot-update-or-delete-over-
        # bigquery-streaming-tables-000004334). Rows written by DML are never in it.
        self.buffer_seconds = STREAMING_BUFFER_SECONDS
        self._streamed: dict[int, float] = {}  # id(row) -> when insertAll wrote it
        self.statements: list[tuple[str, dict[str, Any]]] = []  # every query: its SQL and parameters
        self.added_at: dict[tuple[str, str], float] = {}  # (table, column) -> when update_table added it
        # insertAll's own lag: a column added less than this ago is "no such field" (streaming metadata is
        # eventually consistent too).
        self.insert_all_lag_seconds = 0.0

    def create_table(self, table: bigquery.Table, **kw: Any) -> bigquery.Table:
        key = self._key(table.reference)
        if key not in self.tables and self.not_found_inserts:
            self._missing_for[key] = self.not_found_inserts
        return super().create_table(table, **kw)

    def get_table(self, ref: Any, **kw: Any) -> bigquery.Table:
        """A copy, as the real client returns: changing it changes nothing until update_table."""
        found = super().get_table(ref, **kw)
        return bigquery.Table.from_api_repr(found.to_api_repr())

    def update_table(self, table: bigquery.Table, fields: list[str], **kw: Any) -> bigquery.Table:
        """Also notes when each column was added (the Write API fake lags behind it)."""
        key = self._key(table.reference)
        before = {f.name.lower() for f in self.tables[key].schema} if key in self.tables else set()
        for column in table.schema:
            if column.name.lower() not in before:
                self.added_at[(key, column.name.lower())] = self.clock()
        return super().update_table(table, fields, **kw)

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
        schema = {
            f.name.lower(): _LEGACY.get(f.field_type, f.field_type)
            for f in self.tables[key].schema
            if self.clock() - self.added_at.get((key, f.name.lower()), -math.inf) >= self.insert_all_lag_seconds
        }
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
            stored = {k: _stored(schema[k.lower()], v) for k, v in entry["json"].items()}
            self.rows[key].append(stored)
            self._streamed[id(stored)] = self.clock()
        return []

    def in_buffer(self, row: dict[str, Any]) -> bool:
        written = self._streamed.get(id(row))
        return written is not None and self.clock() - written < self.buffer_seconds

    def query(self, sql: str, job_config: bigquery.QueryJobConfig | None = None, **_: Any) -> FakeQueryJob:
        """Runs the statements forget sends (tests/fake_sql.py), as BigQuery would: a DELETE that would
        touch a row still in the streaming buffer fails whole, with BigQuery's message, when its result
        is awaited."""
        params = _query_params(job_config)
        self.statements.append((sql, params))
        parsed = fake_sql.parse(sql)
        return FakeQueryJob(lambda: self._execute(parsed, params))

    def _table_rows(self, path: str) -> list[dict[str, Any]]:
        if path not in self.tables:
            raise gexc.NotFound(f"Not found: Table {path}")
        return self.rows.setdefault(path, [])

    def _execute(self, parsed: fake_sql.Parsed, params: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        if parsed.kind == "count":
            assert parsed.parts is not None
            return [
                {
                    "table_name": params[name],
                    "n": sum(fake_sql.holds(where, r, params, self._table_rows) for r in self._table_rows(table)),
                }
                for name, table, where in parsed.parts
            ], 0
        rows = self._table_rows(parsed.table)
        if parsed.kind == "delete":
            hit = [r for r in rows if fake_sql.holds(parsed.where, r, params, self._table_rows)]
            if any(self.in_buffer(r) for r in hit):
                raise gexc.BadRequest(
                    f"UPDATE or DELETE statement over table {parsed.table} would affect rows in the streaming "
                    "buffer, which is not supported"
                )
            gone = {id(r) for r in hit}
            rows[:] = [r for r in rows if id(r) not in gone]
            for i in gone:
                self._streamed.pop(i, None)
            return [], len(hit)
        assert parsed.columns is not None and parsed.values is not None
        known = {f.name for f in self.tables[parsed.table].schema}
        assert set(parsed.columns) <= known, f"INSERT names columns the table lacks: {set(parsed.columns) - known}"
        sources = [None] if parsed.unnest is None else list(params[parsed.unnest[0]])
        for value in sources:
            rows.append(
                {
                    column: value if kind == "ref" else params[ref]
                    for column, (kind, ref) in zip(parsed.columns, parsed.values, strict=True)
                }
            )
        return [], len(sources)


STREAMING_BUFFER_SECONDS = 30 * 60


class FakeQueryJob:
    """A query job: runs when its result is awaited (BigQuery reports a failed job there too)."""

    def __init__(self, run: Callable[[], tuple[list[dict[str, Any]], int]]) -> None:
        self._run = run
        self._rows: list[dict[str, Any]] | None = None
        self.num_dml_affected_rows: int | None = None
        self.dml_stats: SimpleNamespace | None = None

    def result(self, **_: Any) -> list[dict[str, Any]]:
        if self._rows is None:
            self._rows, affected = self._run()
            self.num_dml_affected_rows = affected
            self.dml_stats = SimpleNamespace(inserted_row_count=0, updated_row_count=0, deleted_row_count=affected)
        return self._rows


def _query_params(config: bigquery.QueryJobConfig | None) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for param in config.query_parameters if config else []:
        if isinstance(param, bigquery.ArrayQueryParameter):
            found[param.name] = list(param.values)
        elif isinstance(param, bigquery.ScalarQueryParameter):
            found[param.name] = param.value
        else:
            raise NotImplementedError(f"query parameter {param!r}")
    return found
