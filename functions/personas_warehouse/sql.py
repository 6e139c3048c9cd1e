"""All SQL text of the project, built in this one place: the users sync and the dedup views. Pure.

Identifiers are validated here and backtick-quoted; values (watermarks, space) are always query
parameters. The MERGE recomputes each changed user from their whole identify history, so an
incremental run equals a full rebuild: per column the newest non-null value ordered by the call's
timestamp (ties: received_at, then id), duplicates of one id counted once, rows without user_id never
read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from schemas.tables import spec

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}\Z")
PROJECT = re.compile(r"^([a-z][a-z0-9.-]{0,62}:)?[a-z][a-z0-9-]{4,61}[a-z0-9]\Z")
DATASET = re.compile(r"^[A-Za-z0-9_]{1,1024}\Z")
CONTEXT_PREFIX = "context_"
SINCE = "since"  # query parameter: lower bound on identifies.loaded_at (incremental runs)
ORDER = "timestamp, received_at, id"


class UnsafeIdentifier(ValueError):
    pass


def quote(name: str, pattern: re.Pattern[str] = IDENTIFIER) -> str:
    if not pattern.match(name):
        raise UnsafeIdentifier(f"refusing identifier {name!r}")
    return f"`{name}`"


def table(project: str, dataset: str, name: str) -> str:
    for part, pattern in ((project, PROJECT), (dataset, DATASET), (name, IDENTIFIER)):
        if not pattern.match(part):
            raise UnsafeIdentifier(f"refusing identifier {part!r}")
    return f"`{project}.{dataset}.{name}`"


def trait_columns(identifies: Mapping[str, str]) -> dict[str, str]:
    """Columns of identifies that hold traits and audiences: not base columns, not context_*."""
    base = spec("identifies").column_names
    return {
        name: kind
        for name, kind in identifies.items()
        if name not in base and not name.startswith(CONTEXT_PREFIX) and IDENTIFIER.match(name)
    }


# BigQuery refuses a query text over 1,024K characters (1,048,576); stay clear of it.
MAX_QUERY_CHARS = 1_000_000


@dataclass(frozen=True)
class MergePlan:
    """The MERGE statements of one space's sync (several when the columns do not fit in one query
    text; each recomputes whole users, so running them one after another is safe and idempotent),
    and the statistics query."""

    statements: tuple[str, ...]
    stats_sql: str
    columns: tuple[tuple[str, ...], ...]  # the columns each statement writes


def _merge_sql(identifies: str, users: str, columns: list[str], *, incremental: bool) -> str:
    cols = [quote(c) for c in columns]
    history = _history_sql(identifies, incremental=incremental)
    picks = "".join(f", LAST_VALUE({c} IGNORE NULLS) OVER _user AS {c}" for c in cols)
    latest = (
        f"SELECT user_id AS id, MAX(received_at) OVER (PARTITION BY user_id) AS received_at{picks}, "
        f"ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY timestamp DESC, received_at DESC, id DESC) AS _newest "
        f"FROM ({history}) "
        f"WINDOW _user AS (PARTITION BY user_id ORDER BY {ORDER} "
        f"ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)"
    )
    targets = ["`received_at`", *cols]
    return (
        f"MERGE {users} AS T\n"
        f"USING (SELECT * FROM ({latest}) WHERE _newest = 1) AS S\n"
        f"ON T.id = S.id\n"
        f"WHEN MATCHED THEN UPDATE SET {', '.join(f'{c} = S.{c}' for c in targets)}\n"
        f"WHEN NOT MATCHED THEN INSERT (`id`, {', '.join(targets)}) "
        f"VALUES (S.id, {', '.join(f'S.{c}' for c in targets)})"
    )


def _history_sql(identifies: str, *, incremental: bool) -> str:
    """Every identify row of the users in scope, one copy per id."""
    changed = f"SELECT DISTINCT user_id FROM {identifies} WHERE loaded_at >= @{SINCE} AND user_id IS NOT NULL"
    scope = f"AND user_id IN ({changed})" if incremental else ""
    return (
        f"SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY id ORDER BY received_at, loaded_at) AS _copy "
        f"FROM {identifies} WHERE user_id IS NOT NULL {scope}) WHERE _copy = 1"
    )


def _chunks(columns: list[str], cost: dict[str, int], room: int) -> list[list[str]]:
    """Columns packed in order into groups whose added text fits in `room` characters."""
    groups: list[list[str]] = [[]]
    used = 0
    for column in columns:
        if groups[-1] and used + cost[column] > room:
            groups.append([])
            used = 0
        groups[-1].append(column)
        used += cost[column]
    return groups


def plan_merge(
    project: str, dataset: str, columns: list[str], *, incremental: bool, max_chars: int | None = None
) -> MergePlan:
    """MERGEs into users from identifies for `columns` (already filtered by selective sync), split so
    that no query text exceeds `max_chars`. The text grows linearly with the columns, so each
    column's share is measured once and the columns are packed greedily."""
    max_chars = max_chars or MAX_QUERY_CHARS
    identifies = table(project, dataset, "identifies")
    users = table(project, dataset, "users")
    bare = len(_merge_sql(identifies, users, [], incremental=incremental))
    cost = {c: len(_merge_sql(identifies, users, [c], incremental=incremental)) - bare for c in columns}
    if bare + max(cost.values(), default=0) > max_chars:
        raise ValueError(f"a MERGE of one column does not fit in {max_chars} characters")
    groups = _chunks(columns, cost, max_chars - bare)
    statements = tuple(_merge_sql(identifies, users, group, incremental=incremental) for group in groups)
    stats_sql = (
        f"SELECT (SELECT MAX(loaded_at) FROM {identifies}) AS watermark_to, "
        f"(SELECT COUNT(*) FROM ({_history_sql(identifies, incremental=incremental)})) AS identify_rows_read, "
        f"(SELECT COUNT(*) FROM {users}) AS users_before"
    )
    return MergePlan(statements, stats_sql, tuple(tuple(g) for g in groups))


def dedup_view_sql(project: str, dataset: str, name: str) -> str:
    """One row per id (the first one loaded): BigQuery's insert-id dedup is best-effort, and Pub/Sub
    delivers at least once. `*` is resolved when the view is queried, so new columns appear in it."""
    source = table(project, dataset, name)
    return (
        f"SELECT * EXCEPT (_copy) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY id ORDER BY loaded_at) AS _copy "
        f"FROM {source}) WHERE _copy = 1"
    )


def last_watermark_sql(project: str, ops_dataset: str) -> str:
    """Newest watermark of a space's successful (or partial) runs; the space is the @space parameter."""
    history = table(project, ops_dataset, "sync_history")
    return f"SELECT MAX(watermark_to) AS mark FROM {history} WHERE space = @space AND status IN ('success', 'partial')"


def count_sql(project: str, dataset: str, name: str) -> str:
    return f"SELECT COUNT(*) AS n FROM {table(project, dataset, name)}"
