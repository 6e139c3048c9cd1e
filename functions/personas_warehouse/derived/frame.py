"""The frame every derived table is kept in. It owns what a run of any of them must get right, so that
each table's module (users.py, ...) owns only what is its own: its layout in schemas/tables.json, the
SQL that folds new source rows in, and the SQL that rebuilds a set of keys from history.

- Window. A run reads the source rows with `loaded_at` in [since, until]. `until` is taken when the
  run starts, before any schema is read; `since` is the last successful run's `until` minus
  SYNC_OVERLAP_SECONDS, which settings keep above the latest a row can become visible after its
  `loaded_at` (settings.MIN_SYNC_OVERLAP). So a row is read by a run once it is visible, and a row read
  twice is folded twice, which changes nothing: every module's fold is idempotent and order-free.
- Keys. Every derived table is partitioned into `buckets` integer ranges (tables.json) by a hash of
  its key (the user id). The window query finds the partitions of the keys the window's rows carry;
  every statement then reads and writes only a chunk of them, named in its text as constants, where
  the source rows are filtered and in the merge condition on the kept table (BigQuery prunes
  partitions on constant filters on the partitioning column:
  https://cloud.google.com/bigquery/docs/using-dml-with-partitioned-tables#using_a_merge_statement).
  A row that becomes visible between two statements is read by the later ones if its key is in their
  chunk (and folded, idempotently), else left to the next run, whose window re-reads it: it is never
  inserted twice.
- Partition budget. BigQuery refuses a job that modifies more than 4,000 partitions; a chunk holds at
  most PARTITION_BUDGET partitions, so no statement of the sync can, whatever the number of keys.
- Statements run one at a time; counts come from their own DML statistics (those of the table users
  query: a statement that keeps a module's internal table is marked `Internal` and not counted); a
  window with no rows sends no DML.
- History. One sync_history row per space and table per run: the watermark the next run starts from,
  the layout version (a module that changes what its rows mean bumps it, and the next run rebuilds),
  the columns the module left out (so that a column switched back on is filled from history), and the
  module's own counts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from google.cloud import bigquery

from personas_warehouse import sql, values
from personas_warehouse.bigquery import Deadline, Described, Warehouse
from personas_warehouse.settings import Settings, SpaceConfig
from schemas.tables import spec

# BigQuery's limit, "Number of partitions modified by a single job: 4,000"
# (https://cloud.google.com/bigquery/quotas#partitioned_tables): the one budget of the sync. No statement
# it sends reads or writes more partitions of the table it keeps.
PARTITION_BUDGET = 4_000
SINCE, UNTIL = "since", "until"  # query parameters: the window's bounds on loaded_at
SYNC_HISTORY = "sync_history"
SUCCESS, PARTIAL, FAILURE, SKIPPED = "success", "partial", "failure", "skipped"
FULL, INCREMENTAL = "full", "incremental"
# How far back the last successful run is looked for: a day first (the history is partitioned by day, so
# this reads a day of it), then RECENT_DAYS. A table with no success in RECENT_DAYS is rebuilt.
RECENT_DAYS = 30


@dataclass(frozen=True)
class Window:
    """The source rows a run reads: loaded at or before `until`, and at or after `since` (None: all)."""

    since: datetime | None
    until: datetime

    @property
    def params(self) -> list[bigquery.ScalarQueryParameter]:
        bounds = [bigquery.ScalarQueryParameter(UNTIL, "TIMESTAMP", self.until)]
        if self.since is not None:
            bounds.append(bigquery.ScalarQueryParameter(SINCE, "TIMESTAMP", self.since))
        return bounds

    def rows(self, column: str = "loaded_at") -> str:
        bound = f"{column} <= @{UNTIL}"
        return bound if self.since is None else f"{column} >= @{SINCE} AND {bound}"


@dataclass(frozen=True)
class Keys:
    """The keys one statement may read and write: some partitions of the kept table (of `total`), at most
    PARTITION_BUDGET, written into the statement as constants."""

    buckets: tuple[int, ...]
    total: int

    def bucket(self, key: str) -> str:
        """The partition of a key (a SQL expression over source columns)."""
        return sql.bucket(key, self.total)

    def rows(self, key: str) -> str:
        """Source rows whose key (a SQL expression) falls in these partitions."""
        return sql.in_buckets(self.bucket(key), self.buckets)

    def partitions(self, alias: str) -> str:
        """The kept table's rows (under `alias`) in these partitions: a constant filter on its partitioning
        column, for the merge condition and the WHEN clauses."""
        return sql.in_buckets(f"{alias}.{sql.quote(sql.BUCKET)}", self.buckets)


def chunks(buckets: Iterable[int], total: int, budget: int | None = None) -> list[Keys]:
    """`buckets` in order, PARTITION_BUDGET (or `budget`) at a time."""
    size = budget or PARTITION_BUDGET
    ordered = sorted(set(buckets))
    return [Keys(tuple(ordered[i : i + size]), total) for i in range(0, len(ordered), size)]


@dataclass(frozen=True)
class Source:
    """Rows of one source table that a derived table reads (`where`, SQL), and the key (a SQL expression
    over that table's columns) each of them changes. `counts` are the module's own counts of what the
    window holds (name, SQL expression over a row: an INT64 summed over the window's rows): the window
    query adds them up at no extra scan, and the run's history row reports them (`Plan.report`)."""

    table: str
    key: str
    where: str = "TRUE"
    counts: tuple[tuple[str, str], ...] = ()


# The statements that do one piece of work for one chunk of keys (more than one only when the table is
# too wide for one statement, or when an internal table is kept beside it: the first counted one is the one
# that inserts rows).
Statements = Callable[[Keys, Window], list[str]]


class Internal(str):
    """A statement that keeps a module's internal table (users_history_calls, say), not the one its users
    query: run in its chunk like the others, its rows not counted in the history row."""


@dataclass(frozen=True)
class Backfill:
    """Work over the whole history (up to the window's end) for the keys its sources' rows carry: a
    column switched back on by selective sync, say. Runs after the fold of an incremental run."""

    label: str
    sources: list[Source]
    statements: Statements


@dataclass
class Plan:
    """What a derived table's module asks of one run, once its table and columns are in place."""

    sources: list[Source]
    fold: Statements  # fold the window's rows of a chunk of keys in (idempotent, order-free)
    rebuild: Statements  # make a chunk of keys what the whole history up to `until` says (a full run)
    backfills: list[Backfill] = field(default_factory=list)
    finish: Callable[[], None] = lambda: None  # after every statement: views
    partial: str | None = None  # why some of the table was not kept (the run is then partial)
    skipped_columns: Sequence[str] = ()  # source columns left out, by selective sync or a type clash
    report: dict[str, Any] = field(default_factory=dict)  # the module's own counts, for the history row


@dataclass(frozen=True)
class Previous:
    """The last successful (or partial) run of a table in a space, with the layout in use now."""

    watermark: datetime
    skipped_columns: frozenset[str]


@dataclass
class Context:
    """What a module's `plan` may use, for one space."""

    warehouse: Warehouse
    settings: Settings
    space: str
    config: SpaceConfig
    dataset: str
    deadline: Deadline
    previous: Previous | None


class Derived(Protocol):
    """One derived table: a module of derived/ and an entry of schemas/tables.json (with "buckets")."""

    name: str  # the table analysts query: selective sync and sync_history call it this (e.g. users)
    table: str  # the table kept (e.g. users_state)
    layout: int  # bumped when what the kept rows mean changes: the next run then rebuilds the table

    def plan(self, context: Context) -> Plan | str:
        """Put the kept table and its columns in place; the work of this run, or why there is none."""
        ...


@dataclass
class TableResult:
    """One derived table's run in one space: the sync_history row."""

    space: str
    table_name: str
    layout: int
    status: str = SUCCESS
    mode: str = INCREMENTAL
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0
    source_rows_read: int = 0
    partitions: int = 0  # partitions of the kept table the run's statements covered
    statements: int = 0  # DML jobs sent
    largest_chunk: int = 0  # the most partitions one of them could modify (at most PARTITION_BUDGET)
    watermark_from: str | None = None
    watermark_to: str | None = None
    skipped_columns: str | None = None  # JSON array
    report: str | None = None  # JSON object
    error: str | None = None
    started_at: str = ""
    finished_at: str = ""


def existing_view(warehouse: Warehouse, dataset: str, view: str, kept: str, deadline: Deadline) -> Described | None:
    """The derived table's view as it stands (None if not made yet). A table holding its name (an older
    layout, or someone's own) is refused, never dropped: its rows may be all someone has."""
    found = warehouse.describe(dataset, view, deadline)
    if found is not None and found.kind != "VIEW":
        raise RuntimeError(
            f"{dataset}.{view} is a {found.kind.lower()}, not a view: an older layout? Drop or rename it; the sync "
            f"keeps {kept} and makes {view} a view of it"
        )
    return found


def run_table(derived: Derived, context: Context, until: datetime, result: TableResult) -> None:
    """One derived table in one space: plan, window, chunks, statements, views. Fills `result`; raises
    when a statement fails (the watermark then stays where it was)."""
    if not context.config.table_enabled(derived.name):
        result.status, result.error = SKIPPED, f"{derived.name} is disabled by selective sync"
        return
    plan = derived.plan(context)
    if isinstance(plan, str):
        result.status, result.error = SKIPPED, plan
        return
    total = spec(derived.table).buckets
    if not total:
        raise ValueError(f"tables.json: {derived.table} needs 'buckets' to be kept by the sync")
    overlap = timedelta(seconds=context.settings.sync_overlap_seconds)
    since = context.previous.watermark - overlap if context.previous else None
    window = Window(since, until)
    runner = _Runner(context, result)
    if since is None:  # first run, --full, or a new layout: every key, from the whole history
        result.mode = FULL
        result.source_rows_read, _, counted = runner.window(plan.sources, window, total, keys=False)
        runner.each(chunks(range(total), total), plan.rebuild, window)  # every partition: drops stale keys
    else:
        result.source_rows_read, touched, counted = runner.window(plan.sources, window, total)
        runner.each(chunks(touched, total), plan.fold, window)
        history = Window(None, until)
        for backfill in plan.backfills:
            _, touched, _ = runner.window(backfill.sources, history, total)
            runner.each(chunks(touched, total), backfill.statements, history)
    plan.report.update({name: n for name, n in counted.items() if n})
    plan.finish()
    result.watermark_from = values.format_timestamp(since) if since else None
    result.watermark_to = values.format_timestamp(until)
    result.skipped_columns = json.dumps(sorted(plan.skipped_columns))
    result.report = json.dumps(plan.report, sort_keys=True) if plan.report else None
    if plan.partial:
        result.status, result.error = PARTIAL, plan.partial


class _Runner:
    """Sends one table's queries and statements in one space, and counts them into its result."""

    def __init__(self, context: Context, result: TableResult) -> None:
        self.context, self.result = context, result

    def window(
        self, sources: Sequence[Source], window: Window, total: int, *, keys: bool = True
    ) -> tuple[int, list[int], dict[str, int]]:
        """How many source rows the window holds, the partitions of their keys, and the sources' counts."""
        ctx = self.context
        names = sorted({name for s in sources for name, _ in s.counts})
        parts = []
        for s in sources:
            mine = dict(s.counts)
            counted = "".join(f", {mine.get(name, '0')} AS _count_{i}" for i, name in enumerate(names))
            parts.append(
                f"SELECT {s.key} AS _key{counted} FROM {sql.table(ctx.warehouse.project, ctx.dataset, s.table)} "
                f"WHERE ({s.where}) AND {window.rows()}"
            )
        touched = f", ARRAY_AGG(DISTINCT {sql.bucket('_key', total)}) AS touched" if keys else ""
        sums = "".join(f", SUM(_count_{i}) AS _count_{i}" for i in range(len(names)))
        text = f"SELECT COUNT(*) AS rows_read{touched}{sums} FROM ({' UNION ALL '.join(parts)})"
        [row] = ctx.warehouse.query(text, list(window.params), ctx.deadline)
        counts = {name: int(row.get(f"_count_{i}") or 0) for i, name in enumerate(names)}
        return int(row["rows_read"] or 0), [int(b) for b in (row.get("touched") or [])], counts

    def each(self, chunked: Sequence[Keys], build: Statements, window: Window) -> None:
        """The statements of every chunk, one at a time. Of those not `Internal`, updates are counted from
        the first of a chunk (the others, only for very wide tables, update the same rows); inserts and
        deletes from all."""
        ctx, result = self.context, self.result
        for keys in chunked:
            result.partitions += len(keys.buckets)
            result.largest_chunk = max(result.largest_chunk, len(keys.buckets))
            counted = 0
            for text in build(keys, window):
                stats = ctx.warehouse.run(text, list(window.params), ctx.deadline).dml_stats
                result.statements += 1
                if isinstance(text, Internal):
                    continue
                counted += 1
                if stats is None:
                    continue
                result.rows_inserted += int(stats.inserted_row_count or 0)
                result.rows_deleted += int(getattr(stats, "deleted_row_count", 0) or 0)
                if counted == 1:
                    result.rows_updated += int(stats.updated_row_count or 0)


# -- the history -----------------------------------------------------------------------------------


def last_successes(
    warehouse: Warehouse,
    settings: Settings,
    spaces: Sequence[str],
    layouts: dict[str, int],
    until: datetime,
    deadline: Deadline,
) -> dict[tuple[str, str], Previous]:
    """(space, table name) -> its last successful run with today's layout (`layouts`: table name -> layout).
    One query for every space and table: a day of the history, then RECENT_DAYS for what is missing."""
    if not spaces or warehouse.existing_schema(settings.ops_dataset, SYNC_HISTORY, deadline) is None:
        return {}
    found = _last_successes(warehouse, settings, spaces, layouts, until - timedelta(days=1), deadline)
    missing = sorted({space for space in spaces for name in layouts if (space, name) not in found})
    if missing:
        since = until - timedelta(days=RECENT_DAYS)
        found |= _last_successes(warehouse, settings, missing, layouts, since, deadline)
    return found


def _last_successes(
    warehouse: Warehouse,
    settings: Settings,
    spaces: Sequence[str],
    layouts: dict[str, int],
    started: datetime,
    deadline: Deadline,
) -> dict[tuple[str, str], Previous]:
    history = sql.table(warehouse.project, settings.ops_dataset, SYNC_HISTORY)
    text = (
        f"SELECT space, table_name, layout, watermark_to, skipped_columns FROM (SELECT space, table_name, layout, "
        f"watermark_to, skipped_columns, ROW_NUMBER() OVER (PARTITION BY space, table_name, layout "
        f"ORDER BY watermark_to DESC) AS _newest FROM {history} WHERE started_at >= @started "
        f"AND space IN UNNEST(@spaces) AND status IN ('{SUCCESS}', '{PARTIAL}') AND watermark_to IS NOT NULL) "
        f"WHERE _newest = 1"
    )
    params = [
        bigquery.ScalarQueryParameter("started", "TIMESTAMP", started),
        bigquery.ArrayQueryParameter("spaces", "STRING", list(spaces)),
    ]
    found: dict[tuple[str, str], Previous] = {}
    for row in warehouse.query(text, params, deadline):
        name = row["table_name"]
        if name not in layouts or row["layout"] != layouts[name]:
            continue
        skipped = frozenset(json.loads(row["skipped_columns"] or "[]"))
        found[(row["space"], name)] = Previous(row["watermark_to"], skipped)
    return found


def record(
    warehouse: Warehouse, settings: Settings, run_id: str, results: Sequence[TableResult], deadline: Deadline
) -> None:
    """The run's sync_history rows, in one write. Columns this layout added to an older sync_history
    table are added first."""
    if not results:
        return
    layout = spec(SYNC_HISTORY)
    schema = warehouse.ensure_table(settings.ops_dataset, SYNC_HISTORY, layout, deadline)
    lacking = {c.name: c.type for c in layout.columns if c.name not in schema}
    if lacking:
        warehouse.add_columns(settings.ops_dataset, SYNC_HISTORY, lacking, deadline)
    rows = [{"run_id": run_id, **vars(r)} for r in results]
    ids = [f"{run_id}:{r.space}:{r.table_name}" for r in results]
    refused = warehouse.insert(settings.ops_dataset, SYNC_HISTORY, rows, ids, deadline)
    if refused:
        raise RuntimeError(f"BigQuery refused sync_history rows: {refused}")
