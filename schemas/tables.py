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
        )
    return specs


def spec(kind: str) -> TableSpec:
    return table_specs()[kind]
