"""The SQL building blocks every statement of the project is made of. Pure.

Identifiers are validated here and backtick-quoted; values (watermarks, user ids, space) are always
query parameters. The only constants written into SQL text are the project's own: partition bounds
(bucket numbers, which BigQuery prunes on only when they are constants) and type literals.

Who builds which statement: the sync's frame (derived/frame.py) its window and watermark queries;
each derived table's module (derived/users.py, ...) the statements that keep its table; the operator
commands theirs (infra/ops/queries.py). They all quote through `quote` and `table`, order calls by
`KEY`, place keys in partitions by `bucket`, and stay under BigQuery's query length with `split`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from schemas.tables import spec

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}\Z")
PROJECT = re.compile(r"^([a-z][a-z0-9.-]{0,62}:)?[a-z][a-z0-9-]{4,61}[a-z0-9]\Z")
DATASET = re.compile(r"^[A-Za-z0-9_]{1,1024}\Z")
CONTEXT_PREFIX = "context_"
IDENTIFIES = "identifies"
BUCKET = "_bucket"  # the integer-range partitioning column of every derived table (tables.json "buckets")
# BigQuery refuses a query text over 1,024K characters (1,048,576); stay clear of it.
MAX_QUERY_CHARS = 1_000_000
# The order of calls, as text whose order is the calls' order: the call's timestamp (16 hex digits of
# microseconds since year 1) then a 64-bit fingerprint of its messageId (16 hex digits). Ties of
# timestamp are broken by the fingerprint: arbitrary, but a property of the call alone, so every run
# orders two calls the same way whatever it has seen of them (arrival order is not one Pub/Sub keeps).
# Copies of one call share their key.
_MICROS_BEFORE_1970 = 62_135_596_800_000_000
KEY = (
    f"CONCAT(FORMAT('%016x', UNIX_MICROS(timestamp) + {_MICROS_BEFORE_1970}), "
    f"FORMAT('%016x', FARM_FINGERPRINT(id) & 0x7fffffffffffffff))"
)
Item = TypeVar("Item")


@dataclass(frozen=True)
class Param:
    """A query parameter, as the statement builders (forget_sql.py, infra/ops/queries.py) hand it over:
    a list value makes an ARRAY<type> parameter (bigquery.query_parameters turns it into the client's)."""

    name: str
    type: str  # STRING, INT64, TIMESTAMP
    value: Any


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


def bucket(key: str, buckets: int) -> str:
    """The partition (0 <= bucket < buckets) of the row whose key (a SQL expression, e.g. `user_id`)
    this is: a hash spreads keys evenly, so a run that touches few keys reads few partitions."""
    return f"ABS(MOD(FARM_FINGERPRINT({key}), {int(buckets)}))"


def in_buckets(expression: str, buckets: Iterable[int]) -> str:
    """`expression` (a partition number) among `buckets`, written with constants only: runs of three or
    more as BETWEEN, the rest as one IN list. Always parenthesized."""
    ordered = sorted({int(b) for b in buckets})
    if not ordered:
        return "FALSE"
    parts, singles, start = [], [], 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            run = ordered[start:i]
            if len(run) >= 3:
                parts.append(f"{expression} BETWEEN {run[0]} AND {run[-1]}")
            else:
                singles.extend(run)
            start = i
    if singles:
        parts.append(f"{expression} IN ({', '.join(map(str, singles))})")
    return f"({' OR '.join(parts)})"


def split(
    build: Callable[[Sequence[Item], int], str], items: Sequence[Item], max_chars: int | None = None
) -> list[str]:
    """The statements `build(group, index)` makes for `items` (columns), as few as fit in `max_chars`
    each (BigQuery's query length limit). Each statement writes whole columns, so running them one
    after another is the same as one statement; `index` 0 is the first (the one that inserts rows).
    Each group is the longest run of items whose statement, as built, fits (a statement grows with its
    group, so a binary search finds it)."""
    limit = max_chars or MAX_QUERY_CHARS
    statements: list[str] = []
    start = 0
    while True:
        index = len(statements)
        whole = build(items[start:], index)
        if len(whole) <= limit:
            return [*statements, whole]
        if len(build(items[start : start + 1], index)) > limit:
            raise ValueError(f"a statement for {items[start]!r} alone does not fit in {limit} characters")
        fits, too_many = 1, len(items) - start
        while too_many - fits > 1:
            middle = (fits + too_many) // 2
            if len(build(items[start : start + middle], index)) <= limit:
                fits = middle
            else:
                too_many = middle
        statements.append(build(items[start : start + fits], index))
        start += fits


def dedup_view_sql(project: str, dataset: str, name: str) -> str:
    """One row per id (the first one loaded): BigQuery's insert-id dedup is best-effort, and Pub/Sub
    delivers at least once. `*` is resolved when the view is queried, so new columns appear in it."""
    source = table(project, dataset, name)
    return (
        f"SELECT * EXCEPT (_copy) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY id ORDER BY loaded_at) AS _copy "
        f"FROM {source}) WHERE _copy = 1"
    )
