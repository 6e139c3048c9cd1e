"""BigQuery adapter: the only module that talks to BigQuery. It performs I/O; it decides nothing about
rows. It keeps a per-instance cache of table schemas, adds columns safely when several instances race,
and bounds every retry by the caller's deadline."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from personas_warehouse import naming, sql
from personas_warehouse.errors import TransientError
from personas_warehouse.settings import Settings
from schemas.tables import TableSpec

# BigQuery answers legacy type names; the core speaks standard SQL names.
_STANDARD_TYPES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}
_TRANSIENT = (
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    gexc.DeadlineExceeded,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    TimeoutError,
)
_RETRYABLE_ROW_REASONS = frozenset({"stopped", "backendError", "internalError", "timeout"})
_NO_SUCH_FIELD = "no such field"  # BigQuery has not yet seen a column just added
Schema = dict[str, str]


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT):
        return True
    if isinstance(exc, gexc.Forbidden):  # quota and rate limits come back as 403
        return any(e.get("reason") in ("rateLimitExceeded", "quotaExceeded") for e in exc.errors or [])
    return False


def make_client(settings: Settings) -> bigquery.Client:
    if settings.bigquery_emulator_host:
        return bigquery.Client(
            project=settings.project or "personas-local",
            location=settings.location,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=settings.bigquery_emulator_host),
        )
    return bigquery.Client(project=settings.project, location=settings.location)


class Deadline:
    """The time left for one invocation; every retry inside it stops in time."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._end = clock() + seconds

    def remaining(self) -> float:
        return max(0.0, self._end - self._clock())

    def retry(self, cap: float = 30.0) -> Retry:
        return Retry(predicate=is_transient, initial=0.2, maximum=4.0, multiplier=2.0, timeout=self.budget(cap))

    def budget(self, cap: float) -> float:
        left = self.remaining()
        if left <= 0.5:
            raise TransientError("deadline reached before BigQuery answered; Pub/Sub will redeliver")
        return min(cap, left)


@dataclass(frozen=True)
class RowRefusal:
    index: int
    errors: list[dict[str, Any]]


def _schema_of(table: bigquery.Table) -> Schema:
    return {f.name.lower(): _STANDARD_TYPES.get(f.field_type, f.field_type) for f in table.schema}


def _retryable_row_error(problem: dict[str, Any]) -> bool:
    reason = problem.get("reason", "")
    return reason in _RETRYABLE_ROW_REASONS or _NO_SUCH_FIELD in str(problem.get("message", "")).lower()


class Warehouse:
    """Every BigQuery call of ingest and sync."""

    def __init__(self, client: bigquery.Client, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.project = client.project
        self._schemas: dict[tuple[str, str], Schema] = {}
        self._sleep = sleep

    def table_ref(self, dataset: str, table: str) -> str:
        return f"{self.project}.{dataset}.{table}"

    def forget(self, dataset: str, table: str) -> None:
        self._schemas.pop((dataset, table), None)

    def ensure_table(self, dataset: str, table: str, spec: TableSpec, deadline: Deadline) -> Schema:
        """The table's schema, creating the dataset and table (partitioned, clustered) when missing."""
        key = (dataset, table)
        if key in self._schemas:
            return self._schemas[key]
        ref = self.table_ref(dataset, table)
        try:
            found = self.client.get_table(ref, retry=deadline.retry(), timeout=deadline.budget(10))
        except gexc.NotFound:
            self.client.create_dataset(
                bigquery.Dataset(f"{self.project}.{dataset}"),
                exists_ok=True,
                retry=deadline.retry(),
                timeout=deadline.budget(10),
            )
            new = bigquery.Table(
                ref, schema=[bigquery.SchemaField(c.name, c.type, description=c.description) for c in spec.columns]
            )
            new.description = spec.description
            if spec.partition_field:
                new.time_partitioning = bigquery.TimePartitioning(field=spec.partition_field)
            new.clustering_fields = list(spec.clustering) or None
            found = self.client.create_table(new, exists_ok=True, retry=deadline.retry(), timeout=deadline.budget(10))
            if spec.dedup_view:
                view = bigquery.Table(self.table_ref(dataset, naming.view_name(table)))
                view.view_query = sql.dedup_view_sql(self.project, dataset, table)
                view.description = f"{table} with one row per id."
                self.client.create_table(view, exists_ok=True, retry=deadline.retry(), timeout=deadline.budget(10))
        self._schemas[key] = _schema_of(found)
        return self._schemas[key]

    def add_columns(self, dataset: str, table: str, columns: dict[str, str], deadline: Deadline) -> Schema:
        """Add NULLABLE columns. Read-modify-write guarded by the table's etag: when another instance
        changed the schema first (412) we re-read and add only what is still missing; a column someone
        else created keeps their type."""
        ref = self.table_ref(dataset, table)
        for attempt in range(8):
            current = self.client.get_table(ref, retry=deadline.retry(), timeout=deadline.budget(10))
            known = _schema_of(current)
            missing = {name: kind for name, kind in columns.items() if name not in known}
            if not missing:
                self._schemas[(dataset, table)] = known
                return known
            current.schema = [*current.schema, *(bigquery.SchemaField(n, t) for n, t in missing.items())]
            try:
                updated = self.client.update_table(
                    current, ["schema"], retry=deadline.retry(), timeout=deadline.budget(10)
                )
            except (gexc.PreconditionFailed, gexc.Conflict, gexc.BadRequest) as exc:
                if isinstance(exc, gexc.BadRequest) and "already exists" not in str(exc).lower():
                    raise
                self._sleep(min(deadline.budget(2.0), 0.1 * 2**attempt * random.uniform(0.5, 1.5)))
                continue
            self._schemas[(dataset, table)] = _schema_of(updated)
            return self._schemas[(dataset, table)]
        raise TransientError(f"schema of {ref} kept changing while adding {sorted(columns)}")

    def insert(
        self, dataset: str, table: str, rows: Sequence[dict[str, Any]], insert_ids: Sequence[str], deadline: Deadline
    ) -> list[RowRefusal]:
        """Stream rows with insert ids. Rows BigQuery cannot see a new column for yet ("no such field",
        eventual consistency after a schema change) and rows stopped by a neighbour are retried with
        backoff; rows refused for themselves are returned. Raises TransientError when time runs out."""
        ref = self.table_ref(dataset, table)
        pending = list(range(len(rows)))
        refused: list[RowRefusal] = []
        delay = 0.25
        while pending:
            errors = self.client.insert_rows_json(
                ref,
                [rows[i] for i in pending],
                row_ids=[insert_ids[i] for i in pending],
                retry=deadline.retry(),
                timeout=deadline.budget(20),
            )
            retry_next: list[int] = []
            only_stopped = True  # rows held back by a refused neighbour can be resent at once
            for entry in errors:
                index = pending[entry["index"]]
                problems = entry.get("errors", [])
                if not all(_retryable_row_error(p) for p in problems):
                    refused.append(RowRefusal(index, problems))
                    continue
                retry_next.append(index)
                only_stopped = only_stopped and all(p.get("reason") == "stopped" for p in problems)
                if any(_NO_SUCH_FIELD in str(p.get("message", "")).lower() for p in problems):
                    self.forget(dataset, table)
            if retry_next and not only_stopped:
                self._sleep(min(deadline.budget(delay), delay))
                delay = min(delay * 2, 4.0)
            pending = retry_next
        return refused

    # -- the users sync --------------------------------------------------------------------------

    def space_slugs(self, deadline: Deadline) -> list[str]:
        datasets = self.client.list_datasets(retry=deadline.retry(), timeout=deadline.budget(30))
        return sorted(naming.space_of_dataset(d.dataset_id) for d in datasets if naming.is_space_dataset(d.dataset_id))

    def existing_schema(self, dataset: str, table: str, deadline: Deadline) -> Schema | None:
        """The table's current schema read fresh (the sync must see columns other instances added)."""
        found = self.describe(dataset, table, deadline)
        if found is None:
            return None
        self._schemas[(dataset, table)] = found[1]
        return found[1]

    def describe(self, dataset: str, table: str, deadline: Deadline) -> tuple[str, Schema] | None:
        """(TABLE or VIEW, schema) of a table or view read fresh; None when there is none."""
        try:
            ref = self.table_ref(dataset, table)
            found = self.client.get_table(ref, retry=deadline.retry(), timeout=deadline.budget(10))
        except gexc.NotFound:
            return None
        return str(found.table_type or "TABLE"), _schema_of(found)

    def run(self, sql: str, params: list[Any], deadline: Deadline) -> bigquery.QueryJob:
        """Run a query job to completion; a MERGE aborted by a concurrent one is run again."""
        config = bigquery.QueryJobConfig(query_parameters=params)
        for attempt in range(5):
            job = self.client.query(sql, job_config=config, retry=deadline.retry(), timeout=deadline.budget(30))
            try:
                job.result(retry=deadline.retry(), timeout=deadline.budget(600))
                return job
            except gexc.BadRequest as exc:
                # Two MERGEs on one table at once: BigQuery aborts one; it is safe to run it again.
                if "concurrent update" not in str(exc).lower() or attempt == 4:
                    raise
                self._sleep(min(deadline.budget(8.0), 2.0 * 2**attempt * random.uniform(0.5, 1.5)))
        raise AssertionError("unreachable")

    def query(self, sql: str, params: list[Any], deadline: Deadline) -> list[dict[str, Any]]:
        return [dict(row) for row in self.run(sql, params, deadline).result()]
