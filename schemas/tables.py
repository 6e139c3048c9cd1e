"""Load tables.json: the one description of every table's base columns."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

TABLES_FILE = Path(__file__).with_name("tables.json")
BIGQUERY_TYPES = frozenset({"STRING", "INT64", "FLOAT64", "BOOL", "TIMESTAMP"})


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    description: str = ""


@dataclass(frozen=True)
class Via:
    """Rows tied to rows of other kinds: this table's `columns` hold their `key` (discards.row_id holds the
    id of an identifies, tracks or event row), and `table_column`, when set, the name of their table (a
    track call's id is in tracks and in its event table: the name says which row a discard is of)."""

    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    key: str
    table_column: str | None = None


@dataclass(frozen=True)
class Forget:
    """How `infra.ops.forget` finds a user's rows in a table kind (tables.json `forget`). Exactly one way:
    columns holding the ids, rows tied to other kinds' rows (`via`), or a column of calls as JSON text;
    `none` (the reason) for a table that holds no ids. `streamed_at`: when insertAll wrote the row, so
    that rows still in BigQuery's streaming buffer can be left for later; None for tables written by DML."""

    user_id: tuple[str, ...] = ()
    anonymous_id: tuple[str, ...] = ()
    via: Via | None = None
    calls_json: str | None = None
    streamed_at: str | None = None
    none: str | None = None


@dataclass(frozen=True)
class TableSpec:
    """Base layout of one table kind; dynamic tables grow a column per trait or property."""

    kind: str
    dataset: Literal["space", "ops"]
    dynamic: bool
    partition_field: str | None
    clustering: tuple[str, ...]
    description: str
    columns: tuple[Column, ...]
    dedup_view: bool = False  # a <table>_view keeping one row per id (streaming dedup is best-effort)
    buckets: int | None = None  # integer-range partitioned on `_bucket`, 0 <= _bucket < buckets
    forget: Forget | None = None  # None only when tables.json says nothing (a test refuses that)

    @property
    def column_names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns)


@cache
def table_specs() -> dict[str, TableSpec]:
    raw = json.loads(TABLES_FILE.read_text())
    specs: dict[str, TableSpec] = {}
    for kind, body in raw.items():
        if kind.startswith("_"):
            continue
        cols = body["columns"]
        columns = specs[cols].columns if isinstance(cols, str) else tuple(Column(**c) for c in cols)
        unknown = {c.type for c in columns} - BIGQUERY_TYPES
        if unknown:
            raise ValueError(f"tables.json: {kind} uses unknown types {sorted(unknown)}")
        specs[kind] = TableSpec(
            kind=kind,
            dataset=body["dataset"],
            dynamic=body["dynamic"],
            partition_field=body["partition_field"],
            clustering=tuple(body["clustering"]),
            description=body["description"],
            columns=columns,
            dedup_view=body.get("dedup_view", False),
            buckets=body.get("buckets"),
            forget=_forget(kind, body.get("forget"), {c.name for c in columns}),
        )
    return specs


def _forget(kind: str, raw: object, columns: set[str]) -> Forget | None:
    """tables.json `forget`, checked against the kind's own columns (a via's key against the other kinds'
    in the test of tables.json: kinds may come later in the file)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        if not raw.startswith("none: "):
            raise ValueError(f"tables.json: {kind}.forget must be an object or 'none: <why>'")
        return Forget(none=raw.removeprefix("none: "))
    if not isinstance(raw, dict):
        raise ValueError(f"tables.json: {kind}.forget must be an object or 'none: <why>'")
    via = raw.get("via")
    found = Forget(
        user_id=tuple(raw.get("user_id", ())),
        anonymous_id=tuple(raw.get("anonymous_id", ())),
        via=Via(tuple(via["columns"]), tuple(via["kinds"]), via["key"], via.get("table_column")) if via else None,
        calls_json=raw.get("calls_json"),
        streamed_at=raw.get("streamed_at"),
    )
    ways = [bool(found.user_id or found.anonymous_id), found.via is not None, found.calls_json is not None]
    if sum(ways) != 1:
        raise ValueError(f"tables.json: {kind}.forget needs exactly one of id columns, via, calls_json")
    named = [*found.user_id, *found.anonymous_id, *(found.via.columns if found.via else ())]
    named += [found.via.table_column] if found.via and found.via.table_column else []
    named += [n for n in (found.calls_json, found.streamed_at) if n]
    unknown = sorted(set(named) - columns)
    if unknown:
        raise ValueError(f"tables.json: {kind}.forget names columns it does not have: {unknown}")
    return found


def spec(kind: str) -> TableSpec:
    return table_specs()[kind]
