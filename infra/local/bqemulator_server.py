"""Start bqemulator with its schema-update gaps closed. Local stack only: product code never knows.

1. bqemulator's tables.patch/update changes its catalog but not its DuckDB storage, so the next
   insertAll after adding a column fails with HTTP 500 (see shared/notes/local-stack-facts.md). Here
   every schema update that adds top-level columns also runs ALTER TABLE ADD COLUMN on the storage.
2. bqemulator ignores the table etag (If-Match), so a writer holding a stale schema silently drops
   the columns another writer just added from the catalog (storage keeps them, and rows land in the
   wrong columns). Real BigQuery answers 412 to the stale etag and never drops columns on patch;
   here an update that would drop a column gets that 412, which the product handles by re-reading.
3. bqemulator does not return a view's query (`view.query`) from tables.get, as BigQuery does; the
   users sync reads it to know which columns its view already hides. Here it is returned.
4. bqemulator copies a table into a time-travel snapshot after every write and keeps the copies 7
   days: about 1 MB of memory per insertAll, gigabytes within minutes of streaming (measured by the
   load test). Real BigQuery's time travel costs nothing per insert; here retention is 0 days (the
   emulator's GC drops the copies every minute) unless BQEMU_TIME_TRAVEL_RETENTION_DAYS says otherwise.
5. bqemulator reports `numDmlAffectedRows` but not `dmlStats` (inserted / updated / deleted rows),
   which BigQuery reports for every DML job and the users sync reads. Here a MERGE's job gets them:
   inserted = the target's row count after minus before, updated = affected minus inserted.
6. bqemulator's Storage Write API inserts appended rows (a registered Arrow table) on the one DuckDB
   connection its REST API also uses, from a gRPC thread: with a REST query running at the same time
   the whole emulator deadlocked (REST and gRPC hung for good; measured 2026-11-29 with the
   storage_write integration tests, which poll while the function appends). Here the append runs on a
   cursor of its own (DuckDB's thread-safe way: another connection to the same database).
7. bqemulator answers tables.insert into a dataset that does not exist with HTTP 500 (DuckDB: "Schema
   ... does not exist"), which a client retries as transient; BigQuery answers 404 "Not found:
   Dataset", which the functions read as "create the dataset first" (they create a space dataset only
   then, so that a caller without bigquery.datasets.create never needs it). Here such a request gets
   BigQuery's 404.
8. bqemulator answers its read-only REST routes (tables.get, tabledata.list, datasets.get/list, jobs.get)
   from FastAPI's thread pool and its write routes (insertAll, jobs.insert, queries) on the event loop,
   all on its one DuckDB connection. Two threads on one DuckDB connection deadlock: with insertAll
   unregistering its Arrow table on the loop while a pool thread ran tabledata.list's COUNT(*), REST hung
   for good (measured 2026-12-04: 16 client threads mixing insertAll, queries, tables.get and
   tabledata.list wedged it within 200 calls every time; CI hit it in the sync concurrency tests and
   ran out of time). Here every thread but the event loop's gets a cursor of its own, DuckDB's
   thread-safe way, as 6 does for the Write API's appends.

Also, for the benchmark (tests/bench): write requests are counted on the server side, and
`GET /_personas/counters` answers `{"insertAll": n, "appendRows": m, "appendRowsConnections": c,
"appendRowsConnectionsByStream": {stream: c}}`: POSTs that reached the tabledata.insertAll route,
AppendRowsRequests received on Storage Write API streams (one request is one write, however many rows it
carries), and AppendRows connections opened (in all, and per stream named by their first request). Local
tooling only; real BigQuery has no such route.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("BQEMU_TIME_TRAVEL_RETENTION_DAYS", "0")  # before bqemulator reads its settings

import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import bqemulator.api.routes.jobs as job_routes
import bqemulator.api.routes.tables as table_routes
import bqemulator.grpc_api.write_servicer as write_servicer
import bqemulator.server as emulator_server
from bqemulator.catalog.duckdb_repository import DuckDBCatalogRepository
from bqemulator.catalog.memory_repository import MemoryCatalogRepository
from bqemulator.cli import main
from bqemulator.domain.errors import DomainError
from bqemulator.grpc_api.write_servicer import BigQueryWriteHandler
from bqemulator.jobs.executor import JOB_RESULTS
from bqemulator.storage.engine import DuckDBEngine
from bqemulator.storage.sql_identifiers import quoted_table_ref
from bqemulator.storage.type_map import bq_schema_to_duckdb_columns


class PreconditionFailed(DomainError):
    http_status = 412
    bq_reason = "conditionNotMet"
    grpc_status_name = "FAILED_PRECONDITION"


def _also_alter_storage(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def update_table(self: Any, table: Any) -> Any:
        existing = self.get_table(table.project_id, table.dataset_id, table.table_id)
        engine = getattr(self, "_engine", None)
        if existing is not None and engine is not None and existing.table_type == "TABLE":
            known = {f.name.lower() for f in existing.schema_.fields}
            dropped = known - {f.name.lower() for f in table.schema_.fields}
            if dropped and table.schema_.fields:
                raise PreconditionFailed(f"Precondition check failed: the schema changed (lacks {sorted(dropped)})")
            ref = quoted_table_ref(table.project_id, table.dataset_id, table.table_id)
            for field in table.schema_.fields:
                if field.name.lower() in known:
                    continue
                raw = {"name": field.name, "type": field.type, "mode": field.mode or "NULLABLE"}
                [(name, dtype)] = bq_schema_to_duckdb_columns([raw])
                engine.execute(f'ALTER TABLE {ref} ADD COLUMN IF NOT EXISTS "{name}" {dtype}')
        return original(self, table)

    return update_table


_MERGE_TARGET = re.compile(r"^\s*MERGE\s+(?:INTO\s+)?(`[^`]+`|[\w.-]+)", re.IGNORECASE)
QueryJob = Callable[..., Awaitable[Any]]


def _with_dml_stats(original: QueryJob) -> QueryJob:
    async def execute_query_job(project_id: str, job_id: str, bq_sql: str, *args: Any, **kwargs: Any) -> Any:
        target = _MERGE_TARGET.match(bq_sql)
        if target is None:
            return await original(project_id, job_id, bq_sql, *args, **kwargs)

        async def count() -> int:
            probe = f"dmlstats_{uuid.uuid4().hex}"
            await original(project_id, probe, f"SELECT COUNT(*) AS n FROM {target.group(1)}", None, *args[1:])
            return int(JOB_RESULTS.pop(probe).column(0)[0].as_py())

        before = await count()
        meta = await original(project_id, job_id, bq_sql, *args, **kwargs)
        query = meta.statistics.get("query", {})
        if "numDmlAffectedRows" not in query:
            return meta
        inserted = max(0, await count() - before)
        updated = max(0, int(query["numDmlAffectedRows"]) - inserted)
        stats = {"insertedRowCount": str(inserted), "updatedRowCount": str(updated), "deletedRowCount": "0"}
        return meta.model_copy(update={"statistics": {**meta.statistics, "query": {**query, "dmlStats": stats}}})

    return execute_query_job


def _with_view_query(original: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    def table_to_rest(table: Any) -> dict[str, Any]:
        body = original(table)
        if getattr(table, "view_query", None):
            body["view"] = {"query": table.view_query, "useLegacySql": False}
        return body

    return table_to_rest


COUNTERS = {"insertAll": 0, "appendRows": 0, "appendRowsConnections": 0}
BY_STREAM: dict[str, int] = {}  # AppendRows connections per write stream
_COUNTERS_LOCK = threading.Lock()  # REST runs on the event loop, gRPC on a thread pool


def _count(name: str) -> None:
    with _COUNTERS_LOCK:
        COUNTERS[name] += 1


_TABLES_INSERT = re.compile(r"^/bigquery/v2/projects/([^/]+)/datasets/([^/]+)/tables/?$")


async def _answer(send: Any, status: int, body: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


class _CountingMiddleware:
    """Plain ASGI (no per-request task, unlike BaseHTTPMiddleware): counts POST .../insertAll, answers
    GET /_personas/counters itself, and 404 to a table insert into a missing dataset (7 above)."""

    def __init__(self, app: Any, context: Any = None) -> None:
        self.app = app
        self.context = context

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "")
            missing = _TABLES_INSERT.match(path) if scope["method"] == "POST" and self.context is not None else None
            if missing and self.context.catalog.get_dataset(missing[1], missing[2]) is None:
                message = f"Not found: Dataset {missing[1]}:{missing[2]}"
                error = {"code": 404, "message": message, "status": "NOT_FOUND"}
                await _answer(send, 404, {"error": {**error, "errors": [{"reason": "notFound", "message": message}]}})
                return
            if scope["method"] == "POST" and path.endswith("/insertAll"):
                _count("insertAll")
            elif scope["method"] == "GET" and path == "/_personas/counters":
                with _COUNTERS_LOCK:
                    body = json.dumps({**COUNTERS, "appendRowsConnectionsByStream": BY_STREAM}).encode()
                await send(
                    {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _with_counters(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def create_app(context: Any) -> Any:
        app = original(context)
        app.add_middleware(_CountingMiddleware, context=context)  # the outermost: it sees every request
        return app

    return create_app


def _counting_appends(original: Callable[..., Iterator[bytes]]) -> Callable[..., Iterator[bytes]]:
    def handle_append_rows(self: Any, request_iterator: Iterator[bytes], context: Any) -> Iterator[bytes]:
        _count("appendRowsConnections")  # one call of the handler per AppendRows connection

        def counted() -> Iterator[bytes]:
            first = True
            for request in request_iterator:
                _count("appendRows")
                if first:  # the connection's table, from its first request's stream name
                    from google.cloud.bigquery_storage_v1 import types

                    stream = types.AppendRowsRequest.deserialize(request).write_stream
                    with _COUNTERS_LOCK:
                        BY_STREAM[stream] = BY_STREAM.get(stream, 0) + 1
                    first = False
                yield request

        return original(self, counted(), context)

    return handle_append_rows


emulator_server.create_app = _with_counters(emulator_server.create_app)  # type: ignore[attr-defined]
BigQueryWriteHandler._handle_append_rows = _counting_appends(  # type: ignore[method-assign]
    BigQueryWriteHandler._handle_append_rows
)


def _flush_on_own_cursor(self: Any, stream: Any, rows: Any) -> None:
    """write_servicer's _flush_to_target, with the INSERT on a cursor of its own (see 6 above)."""
    target = quoted_table_ref(stream.project_id, stream.dataset_id, stream.table_id)
    registered = write_servicer.register_name(f"__bqemu_write_{uuid.uuid4().hex[:12]}")
    with self._write_lock:
        cursor = self._ctx.engine.connection.cursor()
        try:
            cursor.register(registered, rows)
            cursor.execute(f"INSERT INTO {target} SELECT * FROM {registered}")
            cursor.unregister(registered)
        finally:
            cursor.close()
        meta = self._ctx.catalog.get_table(stream.project_id, stream.dataset_id, stream.table_id)
        if meta is not None:
            self._ctx.catalog.update_table(meta.model_copy(update={"num_rows": meta.num_rows + rows.num_rows}))
        self._ctx.snapshots.record_change(stream.project_id, stream.dataset_id, stream.table_id)


_loop_connection = DuckDBEngine.connection
_thread_cursors = threading.local()


def _connection_of_this_thread(self: DuckDBEngine) -> Any:
    """The engine's connection on the event loop's thread (the main thread), and a cursor of this thread's
    own on any other (see 8 above). Pool threads live as long as the server, so each keeps its cursor."""
    connection = _loop_connection.fget(self)  # type: ignore[attr-defined]
    if threading.current_thread() is threading.main_thread():
        return connection
    if getattr(_thread_cursors, "of", None) is not connection:
        _thread_cursors.of, _thread_cursors.cursor = connection, connection.cursor()
    return _thread_cursors.cursor


DuckDBEngine.connection = property(_connection_of_this_thread)  # type: ignore[method-assign,assignment]
write_servicer.BigQueryWriteHandler._flush_to_target = _flush_on_own_cursor  # type: ignore[method-assign]
for cls in (MemoryCatalogRepository, DuckDBCatalogRepository):
    cls.update_table = _also_alter_storage(cls.update_table)
job_routes.execute_query_job = _with_dml_stats(job_routes.execute_query_job)  # type: ignore[assignment]
table_routes._table_to_rest = _with_view_query(table_routes._table_to_rest)

if __name__ == "__main__":
    main()
