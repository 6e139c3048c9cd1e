"""Calls -> warehouse rows: flatten, name, type, and fit to the tables' current schemas. Pure: no I/O.

`shape` turns a routed call into one pending row per table (identifies; or tracks plus the event's
own table). `plan_columns` says which columns a group of rows needs created, and `fit_rows` fits the
rows to the schema BigQuery has: values that cannot go in their column are left NULL in the row and
become discards, so nothing is lost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, partial
from operator import itemgetter
from typing import Any, NamedTuple

from personas_warehouse import naming, values
from personas_warehouse.errors import DiscardReason
from personas_warehouse.messages import RoutedCall
from personas_warehouse.settings import SpaceConfig
from schemas.tables import spec

IDENTIFIES, TRACKS, TRACK_EVENT, DISCARDS = "identifies", "tracks", "track_event", "discards"
# Fixed tables of a space dataset: an event whose name lands on one of them gets a `_` prefix.
FIXED_TABLES = frozenset({IDENTIFIES, TRACKS, DISCARDS, "users", "users_state"})
CONTEXT_PREFIX = "context_"
MAX_DEPTH = 8  # deeper objects are stored as JSON text at this depth


class Cell(NamedTuple):
    """One dynamic value on its way to a column. A NamedTuple: as immutable as a frozen dataclass, at
    half the cost to build (a call makes one per trait and context key)."""

    key: str  # the key path as sent, e.g. "traits.address.city"
    column: str
    type: str  # the type this value would give a new column
    raw: Any  # the value as sent (a leaf: not None, not a dict)


@dataclass
class PendingRow:
    kind: str  # identifies, tracks or track_event (the tables.json description)
    table: str
    space: str
    call_index: int
    insert_id: str  # derived from the Pub/Sub message, so redelivery is deduplicated where BigQuery can
    base: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)
    collisions: list[Cell] = field(default_factory=list)

    @property
    def row_id(self) -> str:
        return str(self.base["id"])


@dataclass(frozen=True)
class Discard:
    space: str
    table: str
    column: str
    column_type: str | None
    row_id: str
    key: str
    raw: Any
    reason: DiscardReason
    received_at: str
    # Position among the row's discards of the same key path ("a.b" and {"a": {"b"}} share one); with the
    # key path it makes the insert id, so the id depends on the message alone, not on the order of other keys.
    ordinal: int = field(default=0, compare=False)

    def to_row(self, loaded_at: str) -> dict[str, Any]:
        return {
            "table_name": self.table,
            "column_name": self.column,
            "column_type": self.column_type,
            "row_id": self.row_id,
            "original_key": self.key,
            "column_value": values.json_text(self.raw),
            "reason": str(self.reason),
            "received_at": self.received_at,
            "loaded_at": loaded_at,
        }

    @property
    def insert_id(self) -> str:
        return hashlib.sha256(f"{self.table}\x1f{self.row_id}\x1f{self.ordinal}\x1f{self.key}".encode()).hexdigest()[
            :40
        ]


@dataclass
class Fitted:
    rows: list[dict[str, Any]]
    insert_ids: list[str]
    discards: list[Discard]


def flatten(obj: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], Any]]:
    """Leaf (path, value) pairs; nulls and empty objects give nothing, arrays stay whole. The definition
    _SourceNames.cells walks by (tests/unit/test_core_shortcuts.py holds it to this)."""
    for key, value in obj.items():
        here = (*path, str(key))
        if value is None:
            continue
        if isinstance(value, Mapping) and len(here) < MAX_DEPTH:
            yield from flatten(value, here)
        elif isinstance(value, Mapping):
            if value:
                yield here, dict(value)
        else:
            yield here, value


# Once per leaf of every call, where a lookup or a Python frame saved is a tenth of the cost: the type,
# and Cell(key, column, type, raw) without the NamedTuple's Python-level __new__.
_column_type_of = values.column_type_of
_new_cell: Callable[[tuple[str, str, str, Any]], Cell] = partial(tuple.__new__, Cell)

# Leaf types JSON gives: never a Mapping, so the (slow, abc) Mapping check is skipped for them.
_JSON_LEAVES = frozenset({str, int, float, bool, list})
MAX_CACHED_NAMES = 65_536  # per source and table kind; then the names start over
MAX_REMEMBERED_STRING = 256  # longer strings are not kept as a key's last value (memory stays bounded)


@dataclass
class _KeyNames:
    """What the keys of one object are named: a leaf's (key path as sent, column), and the names below
    each nested object. Walked along with the call's object, so no key path is built once its name is
    known. Keys are strings: calls come from JSON (and CALL_SCHEMA's Dict fields check it)."""

    leaves: dict[Any, tuple[str, str]] = field(default_factory=dict)
    objects: dict[Any, _KeyNames] = field(default_factory=dict)
    # The last (short) string cell of each key. Personas sends the same strings under most context
    # keys (computation_class, namespace, space_id, library): an equal string makes an equal cell.
    last_strings: dict[Any, Cell] = field(default_factory=dict)


class _SourceNames:
    """Cells of one source ("traits", "properties", "context") of one table kind. Personas repeats the
    same keys in every call, so each key path is named once per instance; bounded, since a stream of
    distinct keys must not grow it forever. Columns skip the source, context keeps it as `context_`."""

    def __init__(self, source: str, taken: frozenset[str], prefixes: tuple[str, ...]) -> None:
        self.source, self.taken, self.prefixes = source, taken, prefixes
        self.root, self.size = _KeyNames(), 0

    def cells(self, obj: Mapping[str, Any]) -> list[Cell]:
        """flatten(obj) as cells, in its order."""
        cells: list[Cell] = []
        self._collect(obj, (), self.root, cells)
        return cells

    def _collect(self, obj: Mapping[str, Any], path: tuple[str, ...], names: _KeyNames, cells: list[Cell]) -> None:
        for key, value in obj.items():
            if value is None:
                continue
            kind = type(value)
            if kind not in _JSON_LEAVES and (kind is dict or isinstance(value, Mapping)):
                if len(path) + 1 < MAX_DEPTH:
                    below = names.objects.get(key)
                    if below is None:
                        below = names.objects[key] = _KeyNames()
                        self._count()
                    self._collect(value, (*path, str(key)), below, cells)
                    continue
                if not value:
                    continue
                value = dict(value)  # deeper objects are kept whole, as JSON text
            if kind is str:
                last = names.last_strings.get(key)
                if last is not None and last.raw == value:
                    cells.append(last)
                    continue
            name = names.leaves.get(key)
            if name is None:
                name = names.leaves[key] = self._name((*path, str(key)))
                self._count()
            cell = _new_cell((name[0], name[1], _column_type_of(value), value))
            if kind is str and len(value) <= MAX_REMEMBERED_STRING:
                names.last_strings[key] = cell
            cells.append(cell)

    def _name(self, path: tuple[str, ...]) -> tuple[str, str]:
        naming_path = (self.source, *path) if self.source == "context" else path
        column = naming.column_name(naming_path, taken=self.taken, taken_prefixes=self.prefixes)
        return ".".join((self.source, *path)), column

    def _count(self) -> None:
        self.size += 1
        if self.size > MAX_CACHED_NAMES:  # the walk in progress finishes on the old names, unharmed
            self.root, self.size = _KeyNames(), 0


_NAMES: dict[tuple[str, frozenset[str], tuple[str, ...]], _SourceNames] = {}


def _source_names(source: str, taken: frozenset[str], prefixes: tuple[str, ...]) -> _SourceNames:
    names = _NAMES.get((source, taken, prefixes))
    if names is None:
        names = _NAMES[(source, taken, prefixes)] = _SourceNames(source, taken, prefixes)
    return names


def _cells(obj: Mapping[str, Any], source: str, *, taken: frozenset[str], prefixes: tuple[str, ...]) -> list[Cell]:
    """`source` is the call's top-level key ("traits", "properties", "context")."""
    return _source_names(source, taken, prefixes).cells(obj)


class _KindNames(NamedTuple):
    context: _SourceNames
    traits: _SourceNames
    properties: _SourceNames


@cache
def _kind_names(kind: str) -> _KindNames:
    """The names of a table kind's sources, found once per kind rather than once per source per call."""
    taken = _base_columns(kind)
    context = _source_names("context", taken, ())
    return _KindNames(context, *(_source_names(s, taken, (CONTEXT_PREFIX,)) for s in ("traits", "properties")))


_column_of = itemgetter(1)  # Cell.column, for map(): no Python frame per cell


def _resolve_collisions(cells: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    """One cell per column, as _resolve_by_grouping decides; the usual case, no two keys sharing a
    column, without grouping."""
    if len(set(map(_column_of, cells))) == len(cells):
        return list(cells), []
    return _resolve_by_grouping(cells)


def _resolve_by_grouping(cells: list[Cell]) -> tuple[list[Cell], list[Cell]]:
    """One cell per column. The winner is the key that already is the column name, else the smallest
    key path; the others are returned as collisions (recorded as discards)."""
    by_column: dict[str, list[Cell]] = {}
    for cell in cells:
        by_column.setdefault(cell.column, []).append(cell)
    kept, lost = [], []
    for column, group in by_column.items():
        group.sort(key=lambda c: (c.key.split(".", 1)[-1] != column, c.key))
        kept.append(group[0])
        lost.extend(group[1:])
    return kept, lost


def event_time(routed: RoutedCall, received_at: datetime) -> datetime:
    """Segment's rule: timestamp if sent, else received_at corrected by the client's clock skew."""
    call = routed.call
    if call.timestamp:
        return call.timestamp
    if call.sent_at and call.original_timestamp:
        try:
            return received_at - (call.sent_at - call.original_timestamp)
        except OverflowError:  # absurd client clocks: fall through to the uncorrected times
            pass
    return call.original_timestamp or received_at


def _ts(moment: datetime | None) -> str | None:
    return values.format_timestamp(moment) if moment else None


@cache
def _base_columns(kind: str) -> frozenset[str]:
    """One set per table kind (spec().column_names builds a new one each time, and names hash it)."""
    return spec(kind).column_names


def shape(routed: RoutedCall, *, received_at: datetime, insert_prefix: str) -> list[PendingRow]:
    call = routed.call
    base: dict[str, Any] = {
        "id": call.message_id,
        "user_id": call.user_id,
        "anonymous_id": call.anonymous_id,
        "received_at": _ts(received_at),
        "sent_at": _ts(call.sent_at),
        "original_timestamp": _ts(call.original_timestamp),
        "timestamp": _ts(event_time(routed, received_at)),
    }
    names = _kind_names(IDENTIFIES if call.type == "identify" else TRACKS)
    context = names.context.cells(call.context)
    insert_id = f"{insert_prefix}:{routed.index}"
    if call.type == "identify":
        dynamic = context + names.traits.cells(call.traits)
        kept, lost = _resolve_collisions(dynamic)
        return [PendingRow(IDENTIFIES, IDENTIFIES, routed.space, routed.index, insert_id, base, kept, lost)]
    event = str(call.event)
    table = naming.event_table_name(event, taken=FIXED_TABLES)
    base = {**base, "event": table, "event_text": event}
    properties = names.properties.cells(call.properties) + names.traits.cells(call.traits)
    kept_context, _ = _resolve_collisions(context)
    kept, lost = _resolve_collisions(context + properties)
    return [
        PendingRow(TRACKS, TRACKS, routed.space, routed.index, insert_id, dict(base), kept_context, []),
        PendingRow(TRACK_EVENT, table, routed.space, routed.index, insert_id, dict(base), kept, lost),
    ]


def plan_columns(
    rows: Iterable[PendingRow], schema: Mapping[str, str], space: SpaceConfig, max_columns: int
) -> dict[str, str]:
    """Columns to add, name -> type (the first value seen decides), within the table's column budget."""
    new: dict[str, str] = {}
    room = max_columns - len(schema)
    filtered = _any_column_disabled(space)
    for row in rows:
        for cell in row.cells:
            column = cell.column
            if column in schema or column in new:
                continue
            if filtered and not space.column_enabled(row.table, column):
                continue
            if len(new) >= room:
                return new
            new[column] = cell.type
    return new


def _discard(row: PendingRow, cell: Cell, column_type: str | None, reason: DiscardReason, ordinal: int) -> Discard:
    received_at = str(row.base["received_at"])
    return Discard(
        row.space, row.table, cell.column, column_type, row.row_id, cell.key, cell.raw, reason, received_at, ordinal
    )


def _discards(row: PendingRow, lost: list[tuple[Cell, str | None, DiscardReason]]) -> list[Discard]:
    """The row's discards, each numbered among those of its key path."""
    seen: dict[str, int] = {}
    out = []
    for cell, column_type, reason in lost:
        ordinal = seen.get(cell.key, 0)
        seen[cell.key] = ordinal + 1
        out.append(_discard(row, cell, column_type, reason, ordinal))
    return out


def _any_column_disabled(space: SpaceConfig) -> bool:
    """Most spaces disable no column: then no cell needs asking column_enabled."""
    return bool(space.disabled_columns) and any(space.disabled_columns.values())


def fit_rows(rows: Iterable[PendingRow], schema: Mapping[str, str], space: SpaceConfig, loaded_at: str) -> Fitted:
    """Rows as BigQuery will take them; what does not fit becomes a discard. Disabled columns are skipped."""
    fitted = Fitted([], [], [])
    filtered = _any_column_disabled(space)
    # Looked up once, not per cell; most values are strings, booleans and floats that go in as sent.
    convert, not_convertible, as_sent = values.convert, values.NOT_CONVERTIBLE, values.AS_SENT
    for row in rows:
        out = {k: v for k, v in row.base.items() if v is not None}
        out["loaded_at"] = loaded_at
        lost: list[tuple[Cell, str | None, DiscardReason]] = []
        for cell in row.cells:
            if filtered and not space.column_enabled(row.table, cell.column):
                continue
            column = cell.column
            column_type = schema.get(column)
            if column_type is None:
                lost.append((cell, None, DiscardReason.COLUMN_LIMIT))
                continue
            raw = cell.raw
            value = raw if as_sent.get(type(raw)) == column_type else convert(raw, column_type)
            if value is not_convertible:
                lost.append((cell, column_type, DiscardReason.TYPE_CONFLICT))
            else:
                out[column] = value
        for cell in row.collisions:
            if not filtered or space.column_enabled(row.table, cell.column):
                lost.append((cell, schema.get(cell.column), DiscardReason.NAME_COLLISION))
        if lost:
            fitted.discards.extend(_discards(row, lost))
        fitted.rows.append(out)
        fitted.insert_ids.append(row.insert_id)
    return fitted


def discard_rows(discards: Iterable[Discard], loaded_at: str) -> Fitted:
    items = list(discards)
    return Fitted([d.to_row(loaded_at) for d in items], [d.insert_id for d in items], [])
