"""Every SQL text of the operator commands, in one place. Pure: no client, no I/O.

Identifiers go through `personas_warehouse.sql.table` (validated, backtick-quoted); every value (ids,
spaces, times, classes) is a query parameter. Each function returns a `Query` whose `kind` names what
it answers, so a fake runner in the unit tests can answer it from memory.

"Few queries": the per-space questions are one query across all spaces (UNION ALL of the space
datasets, each part tagged with its space as a parameter), not one query per space.

"Bounded scans": reconcile's queries filter every table on its partition column (tables.json:
`identifies` by `loaded_at`, `tracks` by `received_at`, `rejected_messages` by `received_at`) from a
lower bound `@since`, so BigQuery prunes the partitions before it (it bills by the partitions a query
reads: https://cloud.google.com/bigquery/docs/querying-partitioned-tables). Each such column is never
earlier than the publish time of the message the row came from (the function writes after Pub/Sub
accepted the message; a replay's received_at is its original's publish time), so a bound taken from the
publish times loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from personas_warehouse.sql import Param, table
from schemas.tables import spec

RAW_TABLES = ("identifies", "tracks")  # every call has exactly one row in one of them
CHUNK = 10_000  # ids per query parameter array: well under BigQuery's 1 MB of parameters
SYNC_OK = ("success", "partial")  # the statuses whose watermark the sync itself counts
# A call refused before routing (bad JSON, schema violation) has no `space`; its `space` attribute says
# where it was going. A constant expression, no value in it.
REJECTED_SPACE = "COALESCE(space, JSON_VALUE(attributes, '$.space'))"


@dataclass(frozen=True)
class Query:
    kind: str
    sql: str
    params: tuple[Param, ...] = ()

    def param(self, name: str) -> Any:
        return next(p.value for p in self.params if p.name == name)


@dataclass(frozen=True)
class SpaceTable:
    """One existing table of one space dataset."""

    space: str
    dataset: str
    table: str


def chunks(items: Sequence[str], size: int = CHUNK) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def partition_field(kind: str) -> str:
    """The column a table of this kind is partitioned on (tables.json)."""
    field = spec(kind).partition_field
    if field is None:
        raise ValueError(f"{kind} is not time-partitioned: a scan of it cannot be bounded by time")
    return field


def _union(
    project: str, tables: Sequence[SpaceTable], select: str, where: str, *, bounded: bool = False
) -> tuple[str, list[Param]]:
    """`SELECT @sN AS space, <select> FROM <table> WHERE <where>` for each table, joined by UNION ALL;
    `bounded`: each part also reads only its partitions from `@since` on."""
    spaces = sorted({t.space for t in tables})
    names = {space: f"s{i}" for i, space in enumerate(spaces)}
    parts = []
    for t in tables:
        bound = f" AND {partition_field(t.table)} >= @since" if bounded else ""
        source = table(project, t.dataset, t.table)
        parts.append(f"SELECT @{names[t.space]} AS space, {select} FROM {source} WHERE {where}{bound}")
    return "\nUNION ALL\n".join(parts), [Param(names[s], "STRING", s) for s in spaces]


def raw_id_counts(project: str, tables: Sequence[SpaceTable], ids: Sequence[str], since: datetime) -> Query:
    """How many raw rows each of `ids` has, per space (more than one: duplicates the views remove), in the
    partitions from `since` on."""
    union, params = _union(project, tables, "id", "id IN UNNEST(@ids)", bounded=True)
    sql = f"SELECT space, id, COUNT(*) AS n FROM (\n{union}\n) GROUP BY space, id"
    return Query("raw_id_counts", sql, (*params, Param("ids", "STRING", list(ids)), Param("since", "TIMESTAMP", since)))


def rejections_by_message(project: str, ops_dataset: str, message_ids: Sequence[str], since: datetime) -> Query:
    """Rejections of these Pub/Sub messages recorded from `since` on (a message redelivered may have been
    recorded twice)."""
    sql = (
        f"SELECT DISTINCT message_id, call_index, {REJECTED_SPACE} AS space, error_class "
        f"FROM {table(project, ops_dataset, 'rejected_messages')} "
        "WHERE message_id IN UNNEST(@ids) AND received_at >= @since"
    )
    params = (Param("ids", "STRING", list(message_ids)), Param("since", "TIMESTAMP", since))
    return Query("rejections_by_message", sql, params)


def raw_window(project: str, tables: Sequence[SpaceTable], start: datetime, end: datetime, since: datetime) -> Query:
    """Rows and distinct calls per space received in [start, end), read from the partitions from `since` (at
    most `start`) on. `n_rows`, not `rows`: ROWS is a reserved keyword of GoogleSQL."""
    union, params = _union(project, tables, "id", "received_at >= @start AND received_at < @end", bounded=True)
    sql = f"SELECT space, COUNT(*) AS n_rows, COUNT(DISTINCT id) AS calls FROM (\n{union}\n) GROUP BY space"
    bounds = (Param("start", "TIMESTAMP", start), Param("end", "TIMESTAMP", end), Param("since", "TIMESTAMP", since))
    return Query("raw_window", sql, (*params, *bounds))


def rejections_window(project: str, ops_dataset: str, start: datetime, end: datetime, since: datetime) -> Query:
    """Distinct rejected calls per space and class published in [start, end), read from the partitions from
    `since` (at most `start`) on."""
    sql = (
        "SELECT space, error_class, COUNT(*) AS n FROM ("
        f"SELECT DISTINCT message_id, call_index, {REJECTED_SPACE} AS space, error_class "
        f"FROM {table(project, ops_dataset, 'rejected_messages')} "
        "WHERE publish_time >= @start AND publish_time < @end AND received_at >= @since) GROUP BY space, error_class"
    )
    bounds = (Param("start", "TIMESTAMP", start), Param("end", "TIMESTAMP", end), Param("since", "TIMESTAMP", since))
    return Query("rejections_window", sql, bounds)


def rejections_since(project: str, ops_dataset: str, since: datetime) -> Query:
    """Rejections recorded since `since`, per space and class (status: the last 24 hours)."""
    sql = (
        f"SELECT {REJECTED_SPACE} AS space, error_class, COUNT(*) AS n "
        f"FROM {table(project, ops_dataset, 'rejected_messages')} WHERE received_at >= @since GROUP BY 1, 2"
    )
    return Query("rejections_since", sql, (Param("since", "TIMESTAMP", since),))


def last_syncs(project: str, ops_dataset: str, since: datetime) -> Query:
    """Per space and derived table: the newest run (and its status) and the newest successful one with its
    watermark, among the runs started from `since` on (sync_history is partitioned by started_at; a row
    from before the history named its table is `users`)."""
    history = table(project, ops_dataset, "sync_history")
    runs = f"SELECT space, COALESCE(table_name, 'users') AS name, * EXCEPT (space, table_name) FROM {history}"
    sql = (
        "SELECT a.space AS space, a.name AS table_name, a.last_success AS last_success, "
        "a.watermark_to AS watermark_to, b.started_at AS last_run, b.status AS last_status FROM ("
        "SELECT space, name, MAX(IF(status IN UNNEST(@ok), finished_at, NULL)) AS last_success, "
        f"MAX(IF(status IN UNNEST(@ok), watermark_to, NULL)) AS watermark_to FROM ({runs}) "
        "WHERE started_at >= @since GROUP BY space, name) a "
        "JOIN (SELECT space, name, started_at, status FROM (SELECT space, name, started_at, status, "
        f"ROW_NUMBER() OVER (PARTITION BY space, name ORDER BY started_at DESC) AS r FROM ({runs}) "
        "WHERE started_at >= @since) WHERE r = 1) b ON a.space = b.space AND a.name = b.name"
    )
    return Query("last_syncs", sql, (Param("ok", "STRING", list(SYNC_OK)), Param("since", "TIMESTAMP", since)))


def duplicate_keys(project: str, tables: Sequence[SpaceTable]) -> Query:
    """Per space: rows of users_state and distinct user ids in it (one row per id is the sync's invariant:
    any difference is a bug to report). Reads the id column of the whole table."""
    union, params = _union(project, tables, "id", "TRUE")
    sql = f"SELECT space, COUNT(*) AS n_rows, COUNT(DISTINCT id) AS ids FROM (\n{union}\n) GROUP BY space"
    return Query("duplicate_keys", sql, tuple(params))


def rows_written(project: str, tables: Sequence[SpaceTable], hour: datetime, day: datetime) -> Query:
    """Raw rows written (by loaded_at) per space since `hour` and since `day`."""
    union, params = _union(project, tables, "loaded_at", "loaded_at >= @day")
    sql = (
        "SELECT space, COUNTIF(loaded_at >= @hour) AS last_hour, COUNT(*) AS last_day "
        f"FROM (\n{union}\n) GROUP BY space"
    )
    return Query("rows_written", sql, (*params, Param("hour", "TIMESTAMP", hour), Param("day", "TIMESTAMP", day)))


def discard_columns(project: str, tables: Sequence[SpaceTable], since: datetime) -> Query:
    """Discards per space, table and column since `since`, most first (the caller keeps the top few)."""
    union, params = _union(project, tables, "table_name, column_name", "loaded_at >= @since")
    sql = (
        "SELECT space, table_name, column_name, COUNT(*) AS n "
        f"FROM (\n{union}\n) GROUP BY space, table_name, column_name ORDER BY n DESC"
    )
    return Query("discard_columns", sql, (*params, Param("since", "TIMESTAMP", since)))


def rejected_to_replay(
    project: str,
    ops_dataset: str,
    *,
    space: str | None = None,
    error_class: str | None = None,
    message_ids: Sequence[str] = (),
    start: datetime | None = None,
    end: datetime | None = None,
) -> Query:
    """Rejected calls matching every given filter, with what is needed to publish them again."""
    where: list[str] = []
    params: list[Param] = []
    if space is not None:
        where.append(f"{REJECTED_SPACE} = @space")
        params.append(Param("space", "STRING", space))
    if error_class is not None:
        where.append("error_class = @error_class")
        params.append(Param("error_class", "STRING", error_class))
    if message_ids:
        where.append("message_id IN UNNEST(@ids)")
        params.append(Param("ids", "STRING", list(message_ids)))
    if start is not None:
        where.append("publish_time >= @start")
        params.append(Param("start", "TIMESTAMP", start))
    if end is not None:
        where.append("publish_time < @end")
        params.append(Param("end", "TIMESTAMP", end))
    sql = (
        f"SELECT message_id, call_index, {REJECTED_SPACE} AS space, error_class, attributes, data, data_truncated, "
        "publish_time "
        f"FROM {table(project, ops_dataset, 'rejected_messages')}"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY publish_time, message_id, call_index"
    )
    return Query("rejected_to_replay", sql, tuple(params))


def replayed(project: str, ops_dataset: str, message_ids: Sequence[str]) -> Query:
    """Replays already published for these original message ids (what makes replay idempotent)."""
    sql = (
        "SELECT DISTINCT original_message_id, call_index, source "
        f"FROM {table(project, ops_dataset, 'replays')} "
        "WHERE outcome = @outcome AND original_message_id IN UNNEST(@ids)"
    )
    return Query("replayed", sql, (Param("outcome", "STRING", "published"), Param("ids", "STRING", list(message_ids))))
