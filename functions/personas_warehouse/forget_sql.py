"""Every SQL text of forgetting users (forget.py: `python -m infra.ops.forget` and the users sync finishing
what is pending), in this one place. Pure: no client, no I/O.

Identifiers go through `sql.table` / `sql.quote` (validated, backtick-quoted); every value (ids, hashes,
patterns, times, table names in results) is a query parameter. Which columns hold a user's ids comes from
tables.json (`forget`, read through schemas/tables.py), never from here: a table kind added there is
covered without a change here.

Ids are matched in batches: one statement per table for every id of a request (`IN UNNEST(@user_ids)`),
never one per id. A DELETE reads the id columns of every partition it cannot prune (all of them: a user id
says nothing about load time) and rewrites the partitions that hold a matching row (docs/forget.md, Cost).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from personas_warehouse.sql import BUCKET, Param, in_buckets, quote, table
from schemas.tables import Forget

# Query parameters.
USER_IDS, ANONYMOUS_IDS = "user_ids", "anonymous_ids"  # ARRAY<STRING>: the ids being forgotten
PATTERNS = "patterns"  # ARRAY<STRING>: RE2 patterns finding those ids in calls stored as JSON text
BEFORE = "before"  # TIMESTAMP: only rows streamed before it (the rest is in BigQuery's streaming buffer)
# BigQuery refuses a query text over 1,024K characters (https://cloud.google.com/bigquery/quotas#query_jobs);
# stay clear of it, keeping room in each statement for what is not a via source.
MAX_QUERY_CHARS = 1_000_000
_BASE_CHARS = 20_000
# The JSON fields of a call that hold its ids (Segment's spec), for calls stored as JSON text.
CALL_FIELDS = {USER_IDS: "userId", ANONYMOUS_IDS: "anonymousId"}


@dataclass(frozen=True)
class Statement:
    sql: str
    params: tuple[Param, ...] = ()


@dataclass(frozen=True)
class Target:
    """One existing table to forget in: where it is, and how tables.json says its rows name a user."""

    dataset: str
    table: str
    kind: str
    forget: Forget


@dataclass(frozen=True)
class Ids:
    """The ids of one request, and what the statements need to find them."""

    user_ids: tuple[str, ...] = ()
    anonymous_ids: tuple[str, ...] = ()

    def params(self, sql: str) -> tuple[Param, ...]:
        """The id parameters `sql` uses (an analyzer refuses none, BigQuery refuses an unused one: no)."""
        found = []
        if f"@{USER_IDS}" in sql:
            found.append(Param(USER_IDS, "STRING", list(self.user_ids)))
        if f"@{ANONYMOUS_IDS}" in sql:
            found.append(Param(ANONYMOUS_IDS, "STRING", list(self.anonymous_ids)))
        if f"@{PATTERNS}" in sql:
            found.append(Param(PATTERNS, "STRING", call_patterns(self)))
        return tuple(found)


def call_patterns(ids: Ids) -> list[str]:
    """RE2 patterns (REGEXP_CONTAINS) that find a call of these ids in JSON text: `"userId": "<id>"` as a
    string or a bare number (Segment allows both), with the id JSON-escaped as ASCII or as raw UTF-8, and
    text cut right after the id (stored rejections are cut to MAX_REJECTED_DATA_BYTES) still matching.
    Text, not JSON_VALUE: rejected data is often not JSON at all (that is why it was rejected)."""
    out: list[str] = []
    for param, ids_of in ((USER_IDS, ids.user_ids), (ANONYMOUS_IDS, ids.anonymous_ids)):
        field = CALL_FIELDS[param]
        for value in ids_of:
            for text in dict.fromkeys((json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1])):
                out.append(f'"{field}"\\s*:\\s*"?{re.escape(text)}(?:"|[\\s,}}\\]]|$)')
    return out


def _direct(forget: Forget) -> list[str]:
    parts = [f"{quote(c)} IN UNNEST(@{USER_IDS})" for c in forget.user_id]
    parts += [f"{quote(c)} IN UNNEST(@{ANONYMOUS_IDS})" for c in forget.anonymous_id]
    return parts


def match(project: str, target: Target, sources: Sequence[Target], tag: str = "") -> tuple[str, tuple[Param, ...]]:
    """The condition true for the rows of `target` that belong to the ids, and the parameters it adds (the
    names of via source tables, prefixed `tag` so that conditions can share a statement). A `via` table's
    rows are found through the rows of its source kinds among `sources` (existing tables), so it must be
    deleted before those are; a statement that would be too long takes the sources in chunks."""
    forget = target.forget
    if forget.user_id or forget.anonymous_id:
        return "(" + " OR ".join(_direct(forget)) + ")", ()
    if forget.calls_json is not None:
        column = quote(forget.calls_json)
        return f"EXISTS (SELECT 1 FROM UNNEST(@{PATTERNS}) AS _pattern WHERE REGEXP_CONTAINS({column}, _pattern))", ()
    if forget.via is None:
        raise ValueError(f"{target.kind} holds no ids ({forget.none})")
    via = forget.via
    chosen = [s for s in sources if s.kind in via.kinds]
    if not chosen:
        return "FALSE", ()

    def rows_of(source: Target) -> str:
        inner, _ = match(project, source, ())
        return f"SELECT {quote(via.key)} FROM {table(project, source.dataset, source.table)} WHERE {inner}"

    if via.table_column is None:
        union = " UNION ALL ".join(rows_of(s) for s in chosen)
        return "(" + " OR ".join(f"{quote(c)} IN ({union})" for c in via.columns) + ")", ()
    # The source table's name too: each row is of exactly one source table, so chunks never count a row twice.
    named = quote(via.table_column)
    parts, params = [], []
    for i, source in enumerate(chosen):
        name = f"{tag}s{i}"
        keys = " OR ".join(f"{quote(c)} IN ({rows_of(source)})" for c in via.columns)
        parts.append(f"({named} = @{name} AND ({keys}))")
        params.append(Param(name, "STRING", source.table))
    return "(" + " OR ".join(parts) + ")", tuple(params)


def chunks(project: str, target: Target, sources: Sequence[Target]) -> list[list[Target]]:
    """`sources` split so that a statement about `target` stays under BigQuery's query length (a space can
    have thousands of event tables, each a source of discards). One chunk for any table but a via table
    whose rows name their source table (without the name, two chunks could count one row twice)."""
    via = target.forget.via
    chosen = [s for s in sources if via is not None and s.kind in via.kinds]
    if via is None or via.table_column is None or not chosen:
        return [list(sources)]
    out: list[list[Target]] = [[]]
    used = _BASE_CHARS
    for source in chosen:
        cost = len(match(project, target, [source])[0]) + 4
        if out[-1] and used + cost > MAX_QUERY_CHARS:
            out.append([])
            used = _BASE_CHARS
        out[-1].append(source)
        used += cost
    return out


def count(project: str, parts: Sequence[tuple[Target, Sequence[Target]]], ids: Ids) -> Statement:
    """Rows of the ids per table (`table_name`, `n`) for each (table, its via sources), in one query."""
    sql_parts, params = [], []
    for i, (target, sources) in enumerate(parts):
        condition, extra = match(project, target, sources, tag=f"t{i}")
        sql_parts.append(
            f"SELECT @t{i} AS table_name, COUNT(*) AS n FROM {table(project, target.dataset, target.table)} "
            f"WHERE {condition}"
        )
        params += [Param(f"t{i}", "STRING", target.table), *extra]
    sql = "\nUNION ALL\n".join(sql_parts)
    return Statement(sql, tuple(params) + ids.params(sql))


def delete(
    project: str,
    target: Target,
    sources: Sequence[Target],
    ids: Ids,
    before: Any = None,
    partitions: Sequence[int] | None = None,
) -> Statement:
    """Delete the rows of the ids; with `before`, only those streamed before it (BigQuery refuses to
    touch rows still in its streaming buffer: docs/forget.md); with `partitions`, only in those partitions
    of a table split into integer ranges (named as constants: a job may modify at most 4,000 partitions)."""
    where, params = match(project, target, sources)
    if before is not None:
        if target.forget.streamed_at is None:
            raise ValueError(f"{target.kind} declares no streamed_at: it cannot be deleted by age")
        where += f" AND {quote(target.forget.streamed_at)} < @{BEFORE}"
        params += (Param(BEFORE, "TIMESTAMP", before),)
    if partitions is not None:
        where += f" AND {in_buckets(f'_old.{quote(BUCKET)}', partitions)}"
    sql = f"DELETE FROM {table(project, target.dataset, target.table)} AS _old WHERE {where}"
    return Statement(sql, params + ids.params(sql))


# -- the operations dataset's forget tables (written by DML: deletable at once, no streaming buffer) --------


def insert_suppressions(project: str, ops: str, kind: str, hashes: Sequence[str], fields: dict[str, Any]) -> Statement:
    """One forget_suppressions row per hash of one id kind; `fields`: spaces, key_id, request_id, at."""
    target = table(project, ops, "forget_suppressions")
    sql = (
        f"INSERT INTO {target} (subject_hash, subject_kind, spaces, key_id, request_id, suppressed_at) "
        "SELECT _hash, @subject_kind, @spaces, @key_id, @request_id, @at FROM UNNEST(@hashes) AS _hash"
    )
    return Statement(
        sql, (Param("hashes", "STRING", list(hashes)), Param("subject_kind", "STRING", kind), *_fields(fields))
    )


def delete_suppressions(project: str, ops: str, hashes: Sequence[str]) -> Statement:
    sql = f"DELETE FROM {table(project, ops, 'forget_suppressions')} WHERE subject_hash IN UNNEST(@hashes)"
    return Statement(sql, (Param("hashes", "STRING", list(hashes)),))


def insert_pending(project: str, ops: str, kind: str, ids: Sequence[str], fields: dict[str, Any]) -> Statement:
    """One forget_pending row per id of one kind; `fields`: request_id, spaces, at, settle_after."""
    target = table(project, ops, "forget_pending")
    sql = (
        f"INSERT INTO {target} (request_id, subject_kind, subject_id, spaces, requested_at, settle_after) "
        "SELECT @request_id, @subject_kind, _id, @spaces, @at, @settle_after FROM UNNEST(@ids) AS _id"
    )
    return Statement(sql, (Param("ids", "STRING", list(ids)), Param("subject_kind", "STRING", kind), *_fields(fields)))


def delete_pending(project: str, ops: str, request_ids: Sequence[str]) -> Statement:
    sql = f"DELETE FROM {table(project, ops, 'forget_pending')} WHERE request_id IN UNNEST(@request_ids)"
    return Statement(sql, (Param("request_ids", "STRING", list(request_ids)),))


def cancel_pending(project: str, ops: str, ids: Ids) -> Statement:
    """Drop these ids from every pending request (an unsuppressed id must not be deleted again)."""
    sql = (
        f"DELETE FROM {table(project, ops, 'forget_pending')} WHERE "
        f"(subject_kind = @user_kind AND subject_id IN UNNEST(@{USER_IDS})) OR "
        f"(subject_kind = @anonymous_kind AND subject_id IN UNNEST(@{ANONYMOUS_IDS}))"
    )
    kinds = (Param("user_kind", "STRING", "user_id"), Param("anonymous_kind", "STRING", "anonymous_id"))
    return Statement(sql, ids.params(sql) + kinds)


AUDIT_COLUMNS = (
    ("request_id", "STRING"),
    ("run_at", "TIMESTAMP"),
    ("action", "STRING"),
    ("subject_hashes", "STRING"),
    ("spaces", "STRING"),
    ("rows_found", "INT64"),
    ("rows_deleted", "INT64"),
    ("rows_left", "INT64"),
    ("status", "STRING"),
    ("detail", "STRING"),
)


def insert_audit(project: str, ops: str, row: dict[str, Any]) -> Statement:
    """One forget_requests row (every column of AUDIT_COLUMNS, as parameters)."""
    names = ", ".join(name for name, _ in AUDIT_COLUMNS)
    values = ", ".join(f"@{name}" for name, _ in AUDIT_COLUMNS)
    sql = f"INSERT INTO {table(project, ops, 'forget_requests')} ({names}) VALUES ({values})"
    return Statement(sql, tuple(Param(name, kind, row[name]) for name, kind in AUDIT_COLUMNS))


_FIELD_TYPES = {"spaces": "STRING", "key_id": "STRING", "request_id": "STRING", "at": "TIMESTAMP"}
_FIELD_TYPES["settle_after"] = "TIMESTAMP"


def _fields(fields: dict[str, Any]) -> tuple[Param, ...]:
    return tuple(Param(name, _FIELD_TYPES[name], value) for name, value in fields.items())
