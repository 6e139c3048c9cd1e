"""BigQuery adapter: the only module that talks to BigQuery. It performs I/O; it decides nothing about
rows. It keeps a per-instance cache of table schemas, adds columns safely when several instances race,
and bounds every retry by the caller's deadline."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.api_core.retry import Retry
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from personas_warehouse import group_commit, naming, sql, values
from personas_warehouse.errors import TransientError
from personas_warehouse.settings import Settings
from schemas.tables import TableSpec

if TYPE_CHECKING:  # imported only when BIGQUERY_WRITER=storage_write (app.py): no cold-start cost otherwise
    from personas_warehouse.storage_write import StorageWriter

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
_NO_SUCH_FIELD = "no such field"  # BigQuery has not yet seen a column just added (or the table is new)
Schema = dict[str, str]

# insertAll's rules (https://cloud.google.com/bigquery/quotas#streaming_inserts), all in one place.
# BigQuery's hard limits: a bigger request is refused whole with HTTP 400 ("Request payload size exceeds
# the limit: 10485760 bytes." / "too many rows present in the request, limit: 50000 ...").
INSERT_ALL_MAX_REQUEST_BYTES = 10 * 1024 * 1024
INSERT_ALL_MAX_ROWS = 50_000
# What we send: BigQuery's recommended 500 rows, and a byte budget safely under the hard limit, measured on
# the request body exactly as google-cloud-bigquery serializes it (json.dumps of {"rows": [{"json": row,
# "insertId": id}, ...]}). A row whose JSON alone is over the budget is refused as row_refused, never sent.
INSERT_ROWS_PER_REQUEST = 500
INSERT_BYTES_PER_REQUEST = 9_000_000
_EMPTY_REQUEST_BYTES = len(json.dumps({"rows": []}))
_ROW_SEPARATOR_BYTES = len(", ")
_FIRST_DELAY, _MAX_DELAY = 0.25, 4.0


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
class Described:
    kind: str  # TABLE or VIEW
    schema: Schema
    view_query: str | None


Problems = list[dict[str, Any]]  # BigQuery's errors for one row: {"reason", "location", "message"}


@dataclass(frozen=True)
class RowRefusal:
    index: int
    errors: Problems


@dataclass(frozen=True)
class _Entry:
    """One row on its way: as sent, its insert id, the schema it was fitted to, its bytes in a request."""

    row: dict[str, Any]
    wire: dict[str, Any]
    insert_id: str
    expected: Schema
    size: int


def _entry(row: dict[str, Any], insert_id: str, expected: Schema) -> _Entry:
    wire = values.wire_row(row)
    return _Entry(row, wire, insert_id, expected, _entry_bytes(wire, insert_id))


def _schema_of(table: bigquery.Table) -> Schema:
    return {f.name.lower(): _STANDARD_TYPES.get(f.field_type, f.field_type) for f in table.schema}


def _no_such_field(problem: dict[str, Any]) -> bool:
    return _NO_SUCH_FIELD in str(problem.get("message", "")).lower()


def _retryable_row_error(problem: dict[str, Any]) -> bool:
    return problem.get("reason", "") in _RETRYABLE_ROW_REASONS or _no_such_field(problem)


def _entry_bytes(row: dict[str, Any], insert_id: str) -> int:
    """Bytes one row adds to an insertAll body, serialized as the client does (json.dumps defaults)."""
    return len(json.dumps({"json": row, "insertId": insert_id}).encode("utf-8"))


def _too_big(size: int) -> dict[str, Any]:
    limit = INSERT_BYTES_PER_REQUEST - _EMPTY_REQUEST_BYTES
    message = f"Row is {size} bytes as JSON; one insertAll request carries at most {limit} bytes of rows."
    return {"reason": "invalid", "location": "", "message": message}


def _requests(indices: Sequence[int], sizes: Sequence[int]) -> Iterator[list[int]]:
    """Consecutive runs of `indices`, each within INSERT_ROWS_PER_REQUEST and INSERT_BYTES_PER_REQUEST."""
    run: list[int] = []
    used = _EMPTY_REQUEST_BYTES
    for i in indices:
        grown = used + sizes[i] + (_ROW_SEPARATOR_BYTES if run else 0)
        if run and (len(run) == INSERT_ROWS_PER_REQUEST or grown > INSERT_BYTES_PER_REQUEST):
            yield run
            run, grown = [], _EMPTY_REQUEST_BYTES + sizes[i]
        run.append(i)
        used = grown
    if run:
        yield run


class Warehouse:
    """Every BigQuery call of ingest and sync."""

    def __init__(
        self,
        client: bigquery.Client,
        *,
        sleep: Callable[[float], None] = time.sleep,
        write_group_max_wait: float = 0.05,
        storage_writer: StorageWriter | None = None,
    ) -> None:
        self.client = client
        self.storage_writer = storage_writer  # BIGQUERY_WRITER=storage_write: rows go to the Write API
        # One per instance: the request threads' rows for one table meet here and share writes.
        self._groups: group_commit.GroupCommit[_Entry, Problems] = group_commit.GroupCommit(
            self._write_group,
            max_items=INSERT_ROWS_PER_REQUEST,
            max_size=INSERT_BYTES_PER_REQUEST - _EMPTY_REQUEST_BYTES,
            max_wait=write_group_max_wait,
        )
        self.project = client.project
        self._schemas: dict[tuple[str, str], Schema] = {}
        self._specs: dict[tuple[str, str], TableSpec] = {}  # to re-create a table BigQuery lost
        self._sleep = sleep

    def serving(self) -> AbstractContextManager[None]:
        """Around one request's work: its rows are on their way, so shared writes wait for them."""
        return self._groups.serving()

    def table_ref(self, dataset: str, table: str) -> str:
        return f"{self.project}.{dataset}.{table}"

    def forget(self, dataset: str, table: str) -> None:
        self._schemas.pop((dataset, table), None)

    def ensure_table(self, dataset: str, table: str, spec: TableSpec, deadline: Deadline) -> Schema:
        """The table's schema, creating the dataset and table (partitioned, clustered) when missing."""
        key = (dataset, table)
        self._specs[key] = spec
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
            if spec.buckets:
                whole = bigquery.PartitionRange(start=0, end=spec.buckets, interval=1)
                new.range_partitioning = bigquery.RangePartitioning(field=sql.BUCKET, range_=whole)
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
        """Stream rows with insert ids; returns the rows refused for themselves (BigQuery's verdict, or alone
        over the request budget) once every other row is written. The rows travel in a write shared with
        the other requests in flight in this instance (group_commit.py), by insertAll or, when configured,
        the Storage Write API (same contract); a failed write raises here, in every request it carried
        (TransientError: Pub/Sub redelivers)."""
        expected = dict(self._schemas.get((dataset, table), {}))  # the schema the rows were fitted to
        entries = [_entry(row, insert_id, expected) for row, insert_id in zip(rows, insert_ids, strict=True)]
        budget = INSERT_BYTES_PER_REQUEST - _EMPTY_REQUEST_BYTES
        refused = [RowRefusal(i, [_too_big(e.size)]) for i, e in enumerate(entries) if e.size > budget]
        fitting = [i for i, e in enumerate(entries) if e.size <= budget]
        sending = [entries[i] for i in fitting]
        written = self._groups.submit((dataset, table), sending, [e.size for e in sending], deadline)
        refused += [RowRefusal(fitting[i], errors) for i, errors in written.items()]
        return sorted(refused, key=lambda r: r.index)

    def _write_group(
        self, key: Hashable, entries: list[_Entry], deadline: group_commit.Deadline
    ) -> dict[int, Problems]:
        """One group's rows (of one or many requests): {index in entries: BigQuery's errors} for the rows
        refused for themselves, once every other row is written. By the Storage Write API when configured,
        else by insertAll in requests within its limits, each until its rows are written or refused."""
        dataset, table = cast(tuple[str, str], key)
        if self.storage_writer is not None:
            written = self.storage_writer.write(
                dataset, table, [e.row for e in entries], [e.insert_id for e in entries], cast(Deadline, deadline)
            )
            return {refusal.index: refusal.errors for refusal in written}
        expected: Schema = {}
        for schema in {id(e.expected): e.expected for e in entries}.values():
            expected.update(schema)
        wire = [e.wire for e in entries]
        ids = [e.insert_id for e in entries]
        refused: dict[int, Problems] = {}
        for request in _requests(range(len(entries)), [e.size for e in entries]):
            refused.update(self._send(dataset, table, wire, ids, request, expected, cast(Deadline, deadline)))
        return refused

    def _send(
        self,
        dataset: str,
        table: str,
        wire: Sequence[dict[str, Any]],
        insert_ids: Sequence[str],
        request: list[int],
        expected: Schema,
        deadline: Deadline,
    ) -> dict[int, Problems]:
        """insertAll: one request's rows until each is written or refused for itself: {index: BigQuery's errors}."""
        ref = self.table_ref(dataset, table)
        pending, refused, delay = request, {}, _FIRST_DELAY
        checked = False  # whether a refusal made us compare the table with the schema the rows were fitted to
        while pending:
            fields = {name for i in pending for name in wire[i]}
            try:
                errors = self.client.insert_rows_json(
                    ref,
                    [wire[i] for i in pending],
                    row_ids=[insert_ids[i] for i in pending],
                    retry=deadline.retry(),
                    timeout=deadline.budget(20),
                )
            except gexc.NotFound:
                self._reensure(dataset, table, expected, fields, deadline)
                delay = self._pause(delay, deadline)
                continue
            retry_next: list[int] = []
            only_stopped = True  # rows held back by a refused neighbour can be resent at once
            unseen = False
            refused_now = False
            for entry in errors:
                index = pending[entry["index"]]
                problems = entry.get("errors", [])
                if not all(_retryable_row_error(p) for p in problems):
                    refused[index] = problems
                    refused_now = True
                    continue
                retry_next.append(index)
                only_stopped = only_stopped and all(p.get("reason") == "stopped" for p in problems)
                unseen = unseen or any(_no_such_field(p) for p in problems)
            if unseen or (refused_now and not checked):
                # A refusal is only the row's fault if the table still has the types the rows were
                # fitted to; a table re-created with other types raises TransientError (re-fit on redelivery).
                checked = checked or refused_now
                self._reensure(dataset, table, expected, fields, deadline)
            if retry_next and not only_stopped:
                delay = self._pause(delay, deadline)
            pending = retry_next
        return refused

    def _reensure(self, dataset: str, table: str, expected: Schema, fields: set[str], deadline: Deadline) -> None:
        """Read the table afresh (creating it again if it is gone) and add back the columns the rows carry
        that it lacks, with the types the rows were fitted to. A column whose type changed cannot be
        fixed here: the message is redelivered and its rows fitted again."""
        ref = self.table_ref(dataset, table)
        self.forget(dataset, table)
        spec = self._specs.get((dataset, table))
        if spec is None:
            raise TransientError(f"{ref} was not found and this instance never ensured it")
        try:
            fresh = self.ensure_table(dataset, table, spec, deadline)
            changed = sorted(f for f in fields if f in fresh and f in expected and fresh[f] != expected[f])
            unknown = sorted(f for f in fields if f not in fresh and f not in expected)
            if changed or unknown:
                self.forget(dataset, table)
                raise TransientError(f"{ref} changed under this instance ({changed or unknown}); redeliver to re-fit")
            lacking = {f: expected[f] for f in sorted(fields) if f not in fresh}
            if lacking:
                self.add_columns(dataset, table, lacking, deadline)
        except gexc.NotFound:  # created, but not visible yet: the caller backs off and tries again
            self.forget(dataset, table)

    def _pause(self, delay: float, deadline: Deadline) -> float:
        """Sleep `delay` (raises TransientError when the deadline leaves no time); the next delay."""
        self._sleep(min(deadline.budget(delay), delay))
        return min(delay * 2, _MAX_DELAY)

    # -- the users sync --------------------------------------------------------------------------

    def space_slugs(self, deadline: Deadline) -> list[str]:
        datasets = self.client.list_datasets(retry=deadline.retry(), timeout=deadline.budget(30))
        return sorted(naming.space_of_dataset(d.dataset_id) for d in datasets if naming.is_space_dataset(d.dataset_id))

    def existing_schema(self, dataset: str, table: str, deadline: Deadline) -> Schema | None:
        """The table's current schema read fresh (the sync must see columns other instances added)."""
        found = self.describe(dataset, table, deadline)
        if found is None:
            return None
        self._schemas[(dataset, table)] = found.schema
        return found.schema

    def describe(self, dataset: str, table: str, deadline: Deadline) -> Described | None:
        """A table or view read fresh; None when there is none."""
        try:
            ref = self.table_ref(dataset, table)
            found = self.client.get_table(ref, retry=deadline.retry(), timeout=deadline.budget(10))
        except gexc.NotFound:
            return None
        kind = found.table_type or ("VIEW" if found.view_query else "TABLE")
        return Described(str(kind), _schema_of(found), found.view_query)

    def put_view(self, dataset: str, name: str, query: str, deadline: Deadline) -> None:
        """Create the view, or give the existing one this query."""
        view = bigquery.Table(self.table_ref(dataset, name))
        view.view_query = query
        try:
            self.client.create_table(view, retry=deadline.retry(), timeout=deadline.budget(10))
        except gexc.Conflict:
            current = self.client.get_table(view.reference, retry=deadline.retry(), timeout=deadline.budget(10))
            current.view_query = query
            self.client.update_table(current, ["view_query"], retry=deadline.retry(), timeout=deadline.budget(10))

    def routine_exists(self, dataset: str, name: str, deadline: Deadline) -> bool:
        """Whether the function (a table function, say) is there."""
        try:
            self.client.get_routine(self.table_ref(dataset, name), retry=deadline.retry(), timeout=deadline.budget(10))
        except gexc.NotFound:
            return False
        return True

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
