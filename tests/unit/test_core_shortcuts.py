"""The core's shortcuts (issue 7, cheaper per call) against their definitions: each answers exactly what the
longer way does, on generated input hostile keys and values included."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from personas_warehouse import messages, naming, shaping, values
from personas_warehouse.errors import DiscardReason
from personas_warehouse.settings import SpaceConfig
from personas_warehouse.shaping import Cell
from schemas.calls import loads_strict
from tests.unit._support import THOROUGH, json_documents, json_leaves, odd_keys

COLUMN_TYPES = (values.STRING, values.INT64, values.FLOAT64, values.BOOL, values.TIMESTAMP)
fixed_offsets = st.builds(lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-1439, 1439))
timestamp_like = (
    st.from_regex(values._TIMESTAMP)
    | st.datetimes(timezones=st.none() | st.just(UTC) | fixed_offsets).map(str)
    | st.sampled_from(["2026-11-01T10:00Z", "2026-11-01T10:00", "2026-1-01T10:00:00Z", "10:00:00Z 2026-11-01"])
)
leaves = json_leaves | timestamp_like | st.integers(min_value=-(2**70), max_value=2**70) | st.lists(json_leaves)


def same(a: Any, b: Any) -> bool:
    """Equal and of one type (1 == 1.0 == True would hide a wrong conversion)."""
    return a is b or (type(a) is type(b) and a == b)


# --- values ---------------------------------------------------------------------------------------------


@THOROUGH
@given(leaves, st.sampled_from(COLUMN_TYPES))
def test_convert_answers_as_inference_does(value: Any, column_type: str) -> None:
    assert same(values.convert(value, column_type), values.convert_by_inference(value, column_type))


@THOROUGH
@given(leaves)
def test_column_type_of_is_inferred_type(value: Any) -> None:
    assert values.column_type_of(value) == values.infer(value)[0]


@THOROUGH
@given(timestamp_like | st.text())
@example("2026-11-01T10:00Z")  # the shortest timestamp
def test_a_string_is_a_timestamp_exactly_when_it_parses_as_one(text: str) -> None:
    """infer() tries the parser only on strings long enough with a '-' after the year."""
    assert (values.infer(text)[0] == values.TIMESTAMP) == (values.parse_timestamp(text) is not None)


@THOROUGH
@given(st.datetimes(timezones=st.just(UTC) | fixed_offsets))
@example(datetime(1, 1, 1, tzinfo=UTC))
@example(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
def test_format_timestamp_is_isoformat_in_utc(moment: datetime) -> None:
    try:
        expected = moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    except OverflowError:
        with pytest.raises(OverflowError):
            values.format_timestamp(moment)
        return
    assert values.format_timestamp(moment) == expected


# --- loads_strict: one decoder built once ---------------------------------------------------------------


def finite(document: Any) -> bool:
    if isinstance(document, float):
        return math.isfinite(document)
    if isinstance(document, dict):
        return all(finite(v) for v in document.values())
    if isinstance(document, list):
        return all(finite(v) for v in document)
    return True


@THOROUGH
@given(
    json_documents().map(json.dumps) | st.text(max_size=20) | st.sampled_from(["\ufeff{}", "\ufeff", " {}", "1e999"])
)
def test_loads_strict_is_json_loads_without_nan_and_infinity(text: str) -> None:
    try:
        expected = json.loads(text)
    except ValueError as exc:
        with pytest.raises(ValueError) as info:
            loads_strict(text)
        assert str(info.value) == str(exc)
        return
    if finite(expected):
        assert loads_strict(text) == expected
    else:
        with pytest.raises(ValueError):
            loads_strict(text)


# --- shaping: flatten, names remembered, collisions -------------------------------------------------------


def nested(depth: int, leaf: Any) -> Any:
    return leaf if depth == 0 else {"k": nested(depth - 1, leaf), "x": depth}


deep_objects = st.tuples(st.integers(0, 12), st.sampled_from([{}, {"a": 1}, {"a": None}, {"a": {}}])).map(
    lambda depth_leaf: nested(*depth_leaf)
)
objects = st.dictionaries(odd_keys, json_documents(keys=odd_keys)) | deep_objects


def cells_by_naming(
    obj: Mapping[str, Any], source: str, taken: frozenset[str], prefixes: tuple[str, ...]
) -> list[Cell]:
    """_cells without the remembered names and the walk: every key of flatten named on the spot."""
    out = []
    for path, raw in shaping.flatten(obj):
        naming_path = (source, *path) if source == "context" else path
        column = naming.column_name(naming_path, taken=taken, taken_prefixes=prefixes)
        out.append(Cell(".".join((source, *path)), column, values.infer(raw)[0], raw))
    return out


sources = st.sampled_from(
    [
        ("context", shaping.IDENTIFIES, ()),
        ("traits", shaping.IDENTIFIES, (shaping.CONTEXT_PREFIX,)),
        ("traits", shaping.TRACKS, (shaping.CONTEXT_PREFIX,)),
        ("properties", shaping.TRACKS, (shaping.CONTEXT_PREFIX,)),
    ]
)


@THOROUGH
@given(st.lists(st.tuples(objects, sources), min_size=1, max_size=4), st.sampled_from([2, 5, 65_536]))
def test_remembered_names_are_the_names(
    objs: list[tuple[dict[str, Any], tuple[str, str, tuple[str, ...]]]], limit: int
) -> None:
    """Same keys under other sources and tables, and a cache that fills up and starts over."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shaping, "MAX_CACHED_NAMES", limit)
        patch.setattr(shaping, "_NAMES", {})
        for obj, (source, kind, prefixes) in objs * 2:  # twice: named, then remembered
            taken = shaping._base_columns(kind)
            assert shaping._cells(obj, source, taken=taken, prefixes=prefixes) == cells_by_naming(
                obj, source, taken, prefixes
            )
            assert all(names.size <= limit for names in shaping._NAMES.values())


@THOROUGH
@given(objects, objects)
def test_collisions_are_resolved_as_by_grouping(context: dict[str, Any], traits: dict[str, Any]) -> None:
    taken = shaping._base_columns(shaping.IDENTIFIES)
    cells = shaping._cells(context, "context", taken=taken, prefixes=())
    cells += shaping._cells(traits, "traits", taken=taken, prefixes=(shaping.CONTEXT_PREFIX,))
    assert shaping._resolve_collisions(cells) == shaping._resolve_by_grouping(list(cells))


# --- base64 without the wrapper -------------------------------------------------------------------------


@THOROUGH
@given(
    st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode())
    | st.text(alphabet="ABCDab01+/=\n é-_", max_size=12)
    | st.text(max_size=8)
)
def test_strict_base64_is_b64decode_validate(text: str) -> None:
    try:
        expected: Any = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        expected = (type(exc), str(exc))
    try:
        actual: Any = messages._b64decode_strict(text)
    except (binascii.Error, ValueError) as exc:
        actual = (type(exc), str(exc))
    assert actual == expected


# --- fit_rows writes what convert's definition says -------------------------------------------------------


@THOROUGH
@given(st.lists(st.tuples(leaves, st.sampled_from(COLUMN_TYPES)), max_size=6))
def test_fit_writes_what_conversion_by_inference_gives(pairs: list[tuple[Any, str]]) -> None:
    """fit_rows skips convert() for values that go in as sent: the row must not show it."""
    cells = [Cell(f"traits.k{i}", f"k{i}", values.column_type_of(raw), raw) for i, (raw, _) in enumerate(pairs)]
    schema = {f"k{i}": column_type for i, (_, column_type) in enumerate(pairs)}
    base = {"id": "m-1", "received_at": "2026-11-01T00:00:00.000000Z"}
    row = shaping.PendingRow(shaping.IDENTIFIES, shaping.IDENTIFIES, "default", 0, "p:0", base, cells, [])
    fitted = shaping.fit_rows([row], schema, SpaceConfig(), "2026-11-01T00:00:01.000000Z")
    [out] = fitted.rows
    conflicts = {d.key for d in fitted.discards if d.reason is DiscardReason.TYPE_CONFLICT}
    for i, (raw, column_type) in enumerate(pairs):
        expected = values.convert_by_inference(raw, column_type)
        if expected is values.NOT_CONVERTIBLE:
            assert f"k{i}" not in out and f"traits.k{i}" in conflicts
        else:
            assert same(out[f"k{i}"], expected) and f"traits.k{i}" not in conflicts


def test_a_key_remembers_only_its_last_short_string() -> None:
    """An equal string reuses the key's last cell; other values, and long strings, never do."""
    taken = shaping._base_columns(shaping.IDENTIFIES)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shaping, "_NAMES", {})
        for traits in ({"k": "a"}, {"k": "a"}, {"k": "b"}, {"k": 1}, {"k": "b"}, {"k": "x" * 300}, {"k": "b"}):
            [cell] = shaping._cells(traits, "traits", taken=taken, prefixes=(shaping.CONTEXT_PREFIX,))
            assert cell == Cell("traits.k", "k", values.column_type_of(traits["k"]), traits["k"])
        [names] = shaping._NAMES.values()
        assert {key: cell.raw for key, cell in names.root.last_strings.items()} == {"k": "b"}
        shaping._cells({"k": "y" * 300}, "traits", taken=taken, prefixes=(shaping.CONTEXT_PREFIX,))
        assert names.root.last_strings["k"].raw == "b"  # a long string is not kept
