"""BigQuery adapter: the table catalog and the queries of ingest and sync. It performs I/O; it decides
nothing about rows. It keeps a per-instance cache of table schemas, adds columns safely when several
instances race, and bounds every retry by the caller's deadline. Rows reach BigQuery through the writers
(writers/): the Warehouse runs each behind a group commit of its own, hands it rows, and is the `Tables`
a writer may ask about."""

from __future__ import annotations

import random
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar, cast

from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from personas_warehouse import group_commit, naming, sql
from personas_warehouse.deadline import FIRST_DELAY, pause
from personas_warehouse.deadline import Deadline as Deadline  # re-exported: ingest, sync and app import it here
from personas_warehouse.errors import TransientError
from personas_warehouse.settings import Settings, SpaceDatasets
from personas_warehouse.writers.contract import Deferred, Entry, Problems, Verdict, Writer
from personas_warehouse.writers.contract import RowRefusal as RowRefusal
from personas_warehouse.writers.contract import Schema as Schema
from personas_warehouse.writers.insert_all import InsertAllWriter
from schemas.tables import TableSpec

# BigQuery answers legacy type names; the core speaks standard SQL names.
_STANDARD_TYPES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL"}


def _access_entry(role: str, member: str) -> bigquery.AccessEntry:
    """An IAM member (`serviceAccount:`, `user:`, `group:`, `domain:`; settings.MEMBER) as a dataset access
    entry: service accounts and users by `userByEmail`, groups by `groupByEmail`
    (https://cloud.google.com/bigquery/docs/reference/rest/v2/datasets#Dataset.FIELDS.access)."""
    kind, _, who = member.partition(":")
    entity = {"serviceAccount": "userByEmail", "user": "userByEmail", "group": "groupByEmail", "domain": "domain"}
    return bigquery.AccessEntry(role, entity[kind], who)


def make_client(settings: Settings) -> bigquery.Client:
    if settings.bigquery_emulator_host:
        return bigquery.Client(
            project=settings.project or "personas-local",
            location=settings.location,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=settings.bigquery_emulator_host),
        )
    return bigquery.Client(project=settings.project, location=settings.location)


@dataclass(frozen=True)
class Described:
    kind: str  # TABLE or VIEW
    schema: Schema
    view_query: str | None


def query_parameters(params: Sequence[sql.Param]) -> list[bigquery.ScalarQueryParameter | bigquery.ArrayQueryParameter]:
    """The client's query parameters for the statement builders' `Param`s."""
    return [
        bigquery.ArrayQueryParameter(p.name, p.type, p.value)
        if isinstance(p.value, list)
        else bigquery.ScalarQueryParameter(p.name, p.type, p.value)
        for p in params
    ]


def _schema_of(table: bigquery.Table) -> Schema:
    return {f.name.lower(): _STANDARD_TYPES.get(f.field_type, f.field_type) for f in table.schema}


class Warehouse:
    """Every BigQuery call of ingest and sync."""

    def __init__(
        self,
        client: bigquery.Client,
        *,
        writers: Sequence[Writer] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        write_group_max_wait: float = 0.05,
        space_datasets: SpaceDatasets | None = None,
    ) -> None:
        """`writers` in order (default: insertAll alone): rows a writer defers, for a column BigQuery does
        not show it yet, go to the next one; the last one's are retried after a backoff."""
        self.client = client
        self.space_datasets = space_datasets or SpaceDatasets()  # how a dataset is created: access, default key
        self.writers: tuple[Writer, ...] = tuple(writers or (InsertAllWriter(client, sleep=sleep),))
        # One per writer and instance: the request threads' rows for one table meet here and share writes.
        self._groups = [
            group_commit.GroupCommit[Entry, Verdict, Deadline](
                partial(self._write_group, writer),
                max_items=writer.max_group_rows,
                max_size=writer.max_group_bytes,
                max_wait=write_group_max_wait,
            )
            for writer in self.writers
        ]
        self.project = client.project
        self._schemas: dict[tuple[str, str], Schema] = {}
        self._specs: dict[tuple[str, str], TableSpec] = {}  # to re-create a table BigQuery lost
        self._sleep = sleep

    def serving(self) -> AbstractContextManager[None]:
        """Around one request's work: its rows are on their way, so shared writes wait for them (the first
        writer's: the others only get rows it deferred)."""
        return self._groups[0].serving()

    def table_ref(self, dataset: str, table: str) -> str:
        return f"{self.project}.{dataset}.{table}"

    def forget(self, dataset: str, table: str) -> None:
        self._schemas.pop((dataset, table), None)

    def ensure_table(self, dataset: str, table: str, spec: TableSpec, deadline: Deadline) -> Schema:
        """The table's schema, creating the table (partitioned, clustered) and, when missing, its dataset."""
        key = (dataset, table)
        self._specs[key] = spec
        if key in self._schemas:
            return self._schemas[key]
        ref = self.table_ref(dataset, table)
        try:
            found = self.client.get_table(ref, retry=deadline.retry(), timeout=deadline.budget(10))
        except gexc.NotFound:
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
            try:
                found = self.client.create_table(
                    new, exists_ok=True, retry=deadline.retry(), timeout=deadline.budget(10)
                )
            except gexc.NotFound:  # "Not found: Dataset": the first table of a new space
                self._create_dataset(dataset, deadline)
                found = self.client.create_table(
                    new, exists_ok=True, retry=deadline.retry(), timeout=deadline.budget(10)
                )
            if spec.dedup_view:
                view = bigquery.Table(self.table_ref(dataset, naming.view_name(table)))
                view.view_query = sql.dedup_view_sql(self.project, dataset, table)
                view.description = f"{table} with one row per id."
                self.client.create_table(view, exists_ok=True, retry=deadline.retry(), timeout=deadline.budget(10))
        self._schemas[key] = _schema_of(found)
        return self._schemas[key]

    def _create_dataset(self, dataset: str, deadline: Deadline) -> None:
        """Create a dataset as `space_datasets` says: only after a table create found it missing, so that a
        caller without bigquery.datasets.create (the sync) never needs it for a dataset that exists. Access
        entries given at creation replace BigQuery's defaults, the creator's OWNER included ("Roles that
        you specify on dataset creation overwrite the default values":
        https://cloud.google.com/bigquery/docs/access-control-basic-roles), and a dataset needs an OWNER,
        so project owners are kept as one. The default key encrypts every table made in it later
        (https://cloud.google.com/bigquery/docs/customer-managed-encryption); BigQuery's service agent must
        hold encrypt/decrypt on it (Terraform grants it)."""
        new = bigquery.Dataset(f"{self.project}.{dataset}")
        options = self.space_datasets
        if options.writers or options.readers:
            new.access_entries = [
                bigquery.AccessEntry("OWNER", "specialGroup", "projectOwners"),
                *(_access_entry("WRITER", member) for member in options.writers),
                *(_access_entry("READER", member) for member in options.readers),
            ]
        if options.kms_key_name:
            new.default_encryption_configuration = bigquery.EncryptionConfiguration(kms_key_name=options.kms_key_name)
        self.client.create_dataset(new, exists_ok=True, retry=deadline.retry(), timeout=deadline.budget(10))

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

    def restore(self, dataset: str, table: str, deadline: Deadline) -> Schema:
        """The table read afresh; created again (partitioned, clustered, with its view) when it is gone."""
        self.forget(dataset, table)
        spec = self._specs.get((dataset, table))
        if spec is None:
            raise TransientError(f"{self.table_ref(dataset, table)} was not found and this instance never ensured it")
        return self.ensure_table(dataset, table, spec, deadline)

    def insert(
        self, dataset: str, table: str, rows: Sequence[dict[str, Any]], insert_ids: Sequence[str], deadline: Deadline
    ) -> list[RowRefusal]:
        """Stream rows with insert ids; returns the rows refused for themselves (BigQuery's verdict, or alone
        over a request's size) once every other row is written. The rows travel in a write shared with the
        other requests in flight in this instance (group_commit.py), by the first writer; a failed write
        raises here, in every request it carried (TransientError: Pub/Sub redelivers). Rows a writer defers
        (a column BigQuery does not show it yet) go to the next writer, or after a backoff to the last one
        again, within this request's deadline: they never hold back the other requests' rows."""
        if len(rows) != len(insert_ids):
            raise ValueError("one insert id per row")
        fitted_to = dict(self._schemas.get((dataset, table), {}))  # the schema the rows were fitted to
        refused: dict[int, Problems] = {}
        pending = list(range(len(rows)))
        stage, delay = 0, FIRST_DELAY
        while True:
            writer = self.writers[stage]
            sending, entries = [], []
            for i in pending:
                prepared = writer.prepare(dataset, table, rows[i], insert_ids[i], fitted_to)
                problems = writer.oversized(prepared)
                if problems is None:
                    sending.append(i)
                    entries.append(prepared)
                else:
                    refused[i] = problems
            verdicts = self._groups[stage].submit((dataset, table), entries, [e.size for e in entries], deadline)
            deferred: dict[int, Deferred] = {}
            for n, verdict in verdicts.items():
                if isinstance(verdict, Deferred):
                    deferred[sending[n]] = verdict
                else:
                    refused[sending[n]] = verdict
            if not deferred:
                return [RowRefusal(i, refused[i]) for i in sorted(refused)]
            pending = sorted(deferred)
            if stage + 1 < len(self.writers):
                stage += 1  # the next writer may see the column already
                continue
            if deadline.remaining() <= delay + 0.5:
                columns = sorted({c for verdict in deferred.values() for c in verdict.columns})
                raise TransientError(f"BigQuery does not show {dataset}.{table}'s {columns[:5]} yet; redeliver")
            delay = pause(self._sleep, delay, deadline)

    def _write_group(
        self, writer: Writer, key: Hashable, entries: list[Entry], deadline: Deadline
    ) -> dict[int, Verdict]:
        dataset, table = cast(tuple[str, str], key)
        return writer.write(dataset, table, entries, deadline, self)

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

    # -- forgetting users (forget.py) -----------------------------------------------------------

    def list_tables(self, dataset: str, deadline: Deadline) -> list[tuple[str, str]]:
        """(name, type) of every table and view of a dataset (type TABLE, VIEW, ...); [] when it is gone."""
        try:
            found = self.client.list_tables(
                f"{self.project}.{dataset}", retry=deadline.retry(), timeout=deadline.budget(30)
            )
            return sorted((t.table_id, str(t.table_type or "TABLE")) for t in found)
        except gexc.NotFound:
            return []

    def read_rows(
        self, dataset: str, table: str, columns: Sequence[tuple[str, str]], deadline: Deadline
    ) -> list[dict[str, Any]] | None:
        """Every row of a small table, these (name, type) columns only, by tabledata.list: no query job, so
        no bytes billed and no jobUser needed. None when the table is gone."""
        fields = [bigquery.SchemaField(name, kind) for name, kind in columns]
        try:
            rows = self.client.list_rows(
                self.table_ref(dataset, table),
                selected_fields=fields,
                retry=deadline.retry(),
                timeout=deadline.budget(30),
            )
            return [dict(row.items()) for row in rows]
        except gexc.NotFound:
            return None


_T = TypeVar("_T")


class PerWarehouse(Generic[_T]):
    """One value per Warehouse, that is per instance (app.py keeps one Warehouse per instance), made by
    `make` on first use and dropped with its Warehouse: the instance-wide caches of ingest hang here."""

    def __init__(self, make: Callable[[Warehouse], _T]) -> None:
        self._make = make
        self._made: weakref.WeakKeyDictionary[Warehouse, _T] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def __call__(self, warehouse: Warehouse) -> _T:
        with self._lock:
            found = self._made.get(warehouse)
            if found is None:
                found = self._made[warehouse] = self._make(warehouse)
            return found

    def put(self, warehouse: Warehouse, value: _T) -> None:
        """Give `warehouse` this value (tests: a cache with a clock of their own)."""
        with self._lock:
            self._made[warehouse] = value
