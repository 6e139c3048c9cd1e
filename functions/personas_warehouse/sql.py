"""All SQL text of the project, built in this one place: the users sync and the views. Pure.

Identifiers are validated here and backtick-quoted; values (watermarks, user ids, space) are always
query parameters.

The users sync keeps `users_state`: per user, every synced column's value and, beside it, the order
key of the call that value came from (its as-of). `users` is a view of it without those. Per column
the value is the newest non-null one ordered by the call's timestamp, ties by received_at, then id;
duplicates of one id count once (the first copy received); rows without user_id are never read.

- A fold reads only the identify rows loaded since the last run (identifies is partitioned and
  clustered by loaded_at) and keeps, per column, whichever of the stored value and the newest new
  one comes from the later call. Folding a row twice changes nothing, so runs may overlap and re-read.
- Where the as-of keys alone cannot decide (a new value whose timestamp equals the stored one's, from
  another call: a genuinely newer call, or a late copy of an older one), the fold flags the user
  instead, and a rebuild recomputes flagged users from their whole history. Full runs and columns new
  to users_state are rebuilt the same way, so a rebuild is the definition and a fold its shortcut.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from personas_warehouse import naming
from schemas.tables import spec

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}\Z")
PROJECT = re.compile(r"^([a-z][a-z0-9.-]{0,62}:)?[a-z][a-z0-9-]{4,61}[a-z0-9]\Z")
DATASET = re.compile(r"^[A-Za-z0-9_]{1,1024}\Z")
CONTEXT_PREFIX = "context_"
IDENTIFIES, USERS, USERS_STATE = "identifies", "users", "users_state"
# users_state's own columns: key of the user's newest call; waits for a rebuild; its partition.
ROW_ASOF, REBUILD, BUCKET = "_asof", "_rebuild", "_bucket"
# Query parameters.
SINCE = "since"  # TIMESTAMP: the fold reads identify rows loaded at or after it
TOUCHED = "touched"  # ARRAY<INT64>: the users_state partitions of those rows' users, the only ones read
REBUILD_USERS = "rebuild_users"  # ARRAY<STRING>: the users a rebuild recomputes (absent: every user)


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
    base = spec(IDENTIFIES).column_names
    return {
        name: kind
        for name, kind in identifies.items()
        if name not in base and not name.startswith(CONTEXT_PREFIX) and IDENTIFIER.match(name)
    }


# -- the users sync -------------------------------------------------------------------------------

# BigQuery refuses a query text over 1,024K characters (1,048,576); stay clear of it.
MAX_QUERY_CHARS = 1_000_000
ORDER = "timestamp, received_at, id"  # newest last: the order every users value is chosen by
# The as-of key stored beside a users value: the call's timestamp (16 hex digits of microseconds
# since year 1, so that text order is time order) and a 64-bit fingerprint of its id (16 hex digits).
# 34 bytes, not the whole order: a tie on timestamp between two calls is not decided from the key
# but by recomputing the user from history, where the whole order is at hand.
_TIME_DIGITS = 16
_MICROS_BEFORE_1970 = 62_135_596_800_000_000
KEY = (
    f"CONCAT(FORMAT('%016x', UNIX_MICROS(timestamp) + {_MICROS_BEFORE_1970}), "
    f"FORMAT('%016x', FARM_FINGERPRINT(id) & 0x7fffffffffffffff))"
)


@dataclass(frozen=True)
class Synced:
    """A users column and the as-of column users_state keeps beside it."""

    column: str
    asof: str


ROW = Synced("received_at", ROW_ASOF)  # every call has one: its as-of is the key of the user's newest call


def synced(columns: Sequence[str]) -> list[Synced]:
    return [Synced(c, naming.asof_column(c)) for c in columns]


def _rows(identifies: str, scope: str, cols: Sequence[Synced]) -> str:
    """Identify rows that have a user_id: the columns `cols` need, the order and the as-of key; one
    copy per id, the first received; `_ties`, how many of the user's calls among them share the row's
    timestamp. Columns are named, not `*`: BigQuery bills the columns it reads."""
    needed = "".join(f"{quote(c.column)}, " for c in cols if c is not ROW)
    return (
        f"SELECT *, COUNT(*) OVER (PARTITION BY user_id, timestamp) AS _ties "
        f"FROM (SELECT user_id, id, timestamp, received_at, {needed}{KEY} AS _key, "
        f"ROW_NUMBER() OVER (PARTITION BY id ORDER BY received_at, loaded_at) AS _copy "
        f"FROM {identifies} WHERE user_id IS NOT NULL{scope}) WHERE _copy = 1"
    )


def _newest(rows: str, cols: Sequence[Synced]) -> str:
    """One row per user: per column the newest non-null value of `rows` and the key of its call;
    `_tied` > 1 when two of the user's calls in `rows` share a timestamp."""
    picks = "".join(
        f", LAST_VALUE({quote(c.column)} IGNORE NULLS) OVER _user AS {quote(c.column)}"
        f", LAST_VALUE(IF({quote(c.column)} IS NULL, NULL, _key) IGNORE NULLS) OVER _user AS {quote(c.asof)}"
        for c in cols
    )
    newest_first = ", ".join(f"{c} DESC" for c in ORDER.split(", "))
    return (
        f"SELECT * FROM (SELECT user_id AS id{picks}, MAX(_ties) OVER _user AS _tied, "
        f"ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY {newest_first}) AS _newest FROM ({rows}) "
        f"WINDOW _user AS (PARTITION BY user_id ORDER BY {ORDER} "
        f"ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)) WHERE _newest = 1"
    )


def bucket(user_id: str) -> str:
    """The users_state partition of a user: spreads users evenly, so a run that touches few users
    reads few partitions."""
    return f"ABS(MOD(FARM_FINGERPRINT({user_id}), {spec(USERS_STATE).buckets}))"


def _insert(cols: Sequence[Synced]) -> str:
    names = [n for c in cols for n in (quote(c.column), quote(c.asof))]
    return (
        f"WHEN NOT MATCHED THEN INSERT (`id`, {''.join(f'{n}, ' for n in names)}{quote(REBUILD)}, {quote(BUCKET)}) "
        f"VALUES (_new.id, {''.join(f'_new.{n}, ' for n in names)}FALSE, {bucket('_new.id')})"
    )


def fold_sql(project: str, dataset: str, cols: Sequence[Synced]) -> str:
    """Fold the identify rows loaded since @since into users_state for `cols`. Per column the new
    value wins when its call's timestamp is later than the stored value's; the same key (the same
    call, read again) changes nothing. The same timestamp from another call cannot be decided from
    the keys (a genuinely newer call, or a late copy of an older one): the user is flagged instead,
    for a rebuild. So is a user with two calls of one timestamp in the window: their order is their
    first copies' received_at, and a first copy may be outside the window (a late copy of the stored
    call beside a newer call of the same timestamp would otherwise hide it). Only the users_state
    partitions in @touched are read."""
    state, identifies = table(project, dataset, USERS_STATE), table(project, dataset, IDENTIFIES)
    source = _newest(_rows(identifies, f" AND loaded_at >= @{SINCE}", cols), cols)
    ambiguous, sets = [], []
    for c in cols:
        col, asof = quote(c.column), quote(c.asof)
        new, old = f"_new.{asof}", f"_old.{asof}"
        newer = f"{new} IS NOT NULL AND ({old} IS NULL OR LEFT({new}, {_TIME_DIGITS}) > LEFT({old}, {_TIME_DIGITS}))"
        ambiguous.append(f"LEFT({new}, {_TIME_DIGITS}) = LEFT({old}, {_TIME_DIGITS}) AND {new} != {old}")
        sets.append(f"{col} = IF({newer}, _new.{col}, _old.{col})")
        sets.append(f"{asof} = IF({newer}, {new}, {old})")
    return (
        f"MERGE {state} AS _old\n"
        f"USING ({source}) AS _new\n"
        f"ON _old.id = _new.id AND _old.{quote(BUCKET)} IN UNNEST(@{TOUCHED})\n"
        f"WHEN MATCHED AND (_new._tied > 1 OR {' OR '.join(f'({a})' for a in ambiguous)}) "
        f"THEN UPDATE SET {quote(REBUILD)} = TRUE\n"
        f"WHEN MATCHED THEN UPDATE SET {', '.join(sets)}\n"
        f"{_insert(cols)}"
    )


def rebuild_sql(project: str, dataset: str, cols: Sequence[Synced], *, listed: bool, clear_flag: bool) -> str:
    """Recompute `cols` from the whole identify history: of every user, or (`listed`) of the users in
    @rebuild_users. `clear_flag` (the last statement of a rebuild) clears their rebuild flag."""
    state, identifies = table(project, dataset, USERS_STATE), table(project, dataset, IDENTIFIES)
    scope = f" AND user_id IN UNNEST(@{REBUILD_USERS})" if listed else ""
    source = _newest(_rows(identifies, scope, cols), cols)
    sets = [f"{n} = _new.{n}" for c in cols for n in (quote(c.column), quote(c.asof))]
    if clear_flag:
        sets.append(f"{quote(REBUILD)} = FALSE")
    on = "_old.id = _new.id" + (f" AND _old.id IN UNNEST(@{REBUILD_USERS})" if listed else "")
    return (
        f"MERGE {state} AS _old\n"
        f"USING ({source}) AS _new\n"
        f"ON {on}\n"
        f"WHEN MATCHED THEN UPDATE SET {', '.join(sets)}\n"
        f"{_insert(cols)}"
    )


def split(
    build: Callable[[Sequence[Synced], bool], str], cols: Sequence[Synced], max_chars: int | None = None
) -> list[str]:
    """The statements `build(columns, last)` makes for `cols`, as few as fit in `max_chars` each
    (BigQuery's query-length limit). Each writes whole columns, so running them one after another
    is the same as one statement; `last` marks the statement that finishes the work."""
    limit = max_chars or MAX_QUERY_CHARS
    bare = len(build([], True))
    groups: list[list[Synced]] = [[]]
    used = bare
    for c in cols:
        cost = len(build([c], True)) - bare + 8  # + separators
        if bare + cost > limit:
            raise ValueError(f"a statement for column {c.column!r} alone does not fit in {limit} characters")
        if groups[-1] and used + cost > limit:
            groups.append([])
            used = bare
        groups[-1].append(c)
        used += cost
    return [build(group, i == len(groups) - 1) for i, group in enumerate(groups)]


def window_sql(project: str, dataset: str, *, since: bool) -> str:
    """The identify rows a run reads (with user_id; loaded since @since unless it is a full run):
    how many, the newest loaded_at (the next run's watermark) and, for a fold, their users' partitions."""
    identifies = table(project, dataset, IDENTIFIES)
    users = f", ARRAY_AGG(DISTINCT {bucket('user_id')}) AS touched" if since else ""
    scope = f" AND loaded_at >= @{SINCE}" if since else ""
    return (
        f"SELECT COUNT(*) AS rows_read, MAX(loaded_at) AS watermark_to{users} "
        f"FROM {identifies} WHERE user_id IS NOT NULL{scope}"
    )


def flagged_sql(project: str, dataset: str) -> str:
    """Users the fold flagged for a rebuild, in the partitions it touched (@touched). Flags a run left
    behind when it failed are there too: the next run reads the same rows again."""
    state = table(project, dataset, USERS_STATE)
    return f"SELECT ARRAY_AGG(id) AS ids FROM {state} WHERE {quote(BUCKET)} IN UNNEST(@{TOUCHED}) AND {quote(REBUILD)}"


def users_view_query(project: str, dataset: str, hidden: Sequence[str]) -> str:
    """`users`: users_state without its as-of columns, flag and bucket. `*` is resolved when the view is
    queried, so new trait columns appear at once; new hidden columns need the view made again."""
    state = table(project, dataset, USERS_STATE)
    return f"SELECT * EXCEPT ({', '.join(quote(h) for h in hidden)}) FROM {state}"


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
