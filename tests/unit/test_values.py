"""values: the type a value gives a new column, and lossless conversion into an existing column."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personas_warehouse import values
from personas_warehouse.values import BOOL, FLOAT64, INT64, NOT_CONVERTIBLE, STRING, TIMESTAMP
from tests.unit._support import FAST, THOROUGH, json_documents, json_leaves

TYPES = (BOOL, INT64, FLOAT64, STRING, TIMESTAMP)
TS = "2026-03-01T10:00:00+02:00"
TS_UTC = "2026-03-01T08:00:00.000000Z"

# --- infer -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, (BOOL, True)),
        (False, (BOOL, False)),
        (0, (INT64, 0)),
        (-7, (INT64, -7)),
        (2**63 - 1, (INT64, 2**63 - 1)),
        (-(2**63), (INT64, -(2**63))),
        (2**63, (STRING, "9223372036854775808")),
        (-(2**63) - 1, (STRING, "-9223372036854775809")),
        (10**30, (STRING, "1" + "0" * 30)),
        (1.5, (FLOAT64, 1.5)),
        (1.0, (FLOAT64, 1.0)),
        (-0.0, (FLOAT64, -0.0)),
        (1e300, (FLOAT64, 1e300)),
        ("hello", (STRING, "hello")),
        ("", (STRING, "")),
        ("42", (STRING, "42")),
        ("true", (STRING, "true")),
        (TS, (TIMESTAMP, TS_UTC)),
        ([], (STRING, "[]")),
        ([1, "a", None, True], (STRING, '[1,"a",null,true]')),
        (["é", "🎉"], (STRING, '["é","🎉"]')),
        ({"b": 1, "a": [2]}, (STRING, '{"b":1,"a":[2]}')),  # key order kept
    ],
)
def test_infer(value: object, expected: tuple[str, object]) -> None:
    kind, natural = values.infer(value)
    assert (kind, natural) == expected
    assert type(natural) is type(expected[1])


# --- timestamps ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T08:00:00Z", "2026-03-01T08:00:00.000000Z"),
        ("2026-03-01T08:00:00z", "2026-03-01T08:00:00.000000Z"),
        ("2026-03-01t08:00:00Z", "2026-03-01T08:00:00.000000Z"),
        ("2026-03-01 08:00:00Z", "2026-03-01T08:00:00.000000Z"),
        ("2026-03-01T08:00Z", "2026-03-01T08:00:00.000000Z"),
        ("2026-03-01T10:00:00+02:00", "2026-03-01T08:00:00.000000Z"),
        ("2026-03-01T10:00:00+0200", "2026-03-01T08:00:00.000000Z"),
        ("2026-03-01T10:00:00+02", "2026-03-01T08:00:00.000000Z"),
        ("2026-03-01T01:30:00-05:30", "2026-03-01T07:00:00.000000Z"),
        ("2026-03-01T00:30:00+01:00", "2026-02-28T23:30:00.000000Z"),  # crosses the date line back
        ("2024-02-29T12:00:00Z", "2024-02-29T12:00:00.000000Z"),  # leap day
        ("2026-03-01T08:00:00.1Z", "2026-03-01T08:00:00.100000Z"),
        ("2026-03-01T08:00:00.123Z", "2026-03-01T08:00:00.123000Z"),
        ("2026-03-01T08:00:00.123456Z", "2026-03-01T08:00:00.123456Z"),
        ("2026-03-01T08:00:00.1234567Z", "2026-03-01T08:00:00.123456Z"),
        ("2026-03-01T08:00:00.123456789Z", "2026-03-01T08:00:00.123456Z"),  # cut, not rounded
        ("2026-03-01T08:00:00.999999999+00:00", "2026-03-01T08:00:00.999999Z"),
    ],
)
def test_timestamps_with_zone(text: str, expected: str) -> None:
    assert values.infer(text) == (TIMESTAMP, expected)
    assert values.convert(text, TIMESTAMP) == expected
    # a STRING column keeps the text exactly as sent
    assert values.convert(text, STRING) == text


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-01T08:00:00",  # no zone
        "2026-03-01T08:00:00.123",
        "2026-03-01",
        "08:00:00Z",
        "2026-02-30T08:00:00Z",  # no such day
        "2025-02-29T08:00:00Z",  # not a leap year
        "2026-13-01T08:00:00Z",
        "2026-03-01T24:00:00Z",
        "2026-03-01T08:60:00Z",
        "2026-03-01T23:59:60Z",  # leap second
        "2026-03-01T08:00:00+24:00",
        "2026-03-01T08:00:00+2",
        "2026-03-01T08:00:00+02:0",
        "2026-03-01T08:00:00.1234567890Z",  # 10 fraction digits
        "2026-03-01T08:00:00.Z",
        "2026-03-01T08:00:00 Z",
        "2026-03-01T08:00:00UTC",
        "0000-01-01T00:00:00Z",
        "2026-3-1T08:00:00Z",
        " 2026-03-01T08:00:00Z",
        "2026-03-01T08:00:00Z ",
        "1772352000",
        "next tuesday",
    ],
)
def test_not_timestamps_stay_strings(text: str) -> None:
    assert values.parse_timestamp(text) is None
    assert values.infer(text) == (STRING, text)
    assert values.convert(text, TIMESTAMP) is NOT_CONVERTIBLE


def test_timestamp_with_trailing_newline_stays_string() -> None:
    assert values.infer("2026-03-01T08:00:00Z\n") == (STRING, "2026-03-01T08:00:00Z\n")


def test_fraction_without_seconds_is_not_read_as_seconds() -> None:
    kind, natural = values.infer("2026-03-01T10:00.5Z")
    assert (kind, natural) in {(STRING, "2026-03-01T10:00.5Z"), (TIMESTAMP, "2026-03-01T10:00:30.000000Z")}


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:30:00+01:00"])
def test_timestamp_out_of_range_after_utc_shift_does_not_raise(text: str) -> None:
    assert values.infer(text) == (STRING, text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0999-05-01T00:00:00Z", "0999-05-01T00:00:00.000000Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z"),
    ],
)
def test_early_years_are_zero_padded(text: str, expected: str) -> None:
    assert values.infer(text) == (TIMESTAMP, expected)


def test_format_timestamp() -> None:
    moment = datetime(2026, 3, 1, 10, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
    assert values.format_timestamp(moment) == "2026-03-01T08:00:00.000005Z"
    assert values.format_timestamp(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == (
        "9999-12-31T23:59:59.999999Z"
    )


# --- convert: every type pair ----------------------------------------------------------------------


CONVERSIONS = [
    # (value, column type, expected)
    # BOOL column: only booleans
    (True, BOOL, True),
    (False, BOOL, False),
    (1, BOOL, NOT_CONVERTIBLE),
    (0, BOOL, NOT_CONVERTIBLE),
    (1.0, BOOL, NOT_CONVERTIBLE),
    ("true", BOOL, NOT_CONVERTIBLE),
    (TS, BOOL, NOT_CONVERTIBLE),
    ([True], BOOL, NOT_CONVERTIBLE),
    # INT64 column
    (5, INT64, 5),
    (True, INT64, NOT_CONVERTIBLE),  # bool never becomes a number
    (False, INT64, NOT_CONVERTIBLE),
    (3.0, INT64, 3),
    (-3.0, INT64, -3),
    (float(2**53), INT64, 2**53),
    (-float(2**53), INT64, -(2**53)),
    (float(2**53 + 2), INT64, NOT_CONVERTIBLE),
    (1e300, INT64, NOT_CONVERTIBLE),
    (3.5, INT64, NOT_CONVERTIBLE),
    (float("inf"), INT64, NOT_CONVERTIBLE),
    (float("nan"), INT64, NOT_CONVERTIBLE),
    (2**63, INT64, NOT_CONVERTIBLE),  # beyond int64: a STRING value
    ("5", INT64, NOT_CONVERTIBLE),
    (TS, INT64, NOT_CONVERTIBLE),
    ([5], INT64, NOT_CONVERTIBLE),
    # FLOAT64 column
    (1.5, FLOAT64, 1.5),
    (7, FLOAT64, 7.0),
    (-7, FLOAT64, -7.0),
    (2**53, FLOAT64, float(2**53)),
    (-(2**53), FLOAT64, -float(2**53)),
    (2**53 + 1, FLOAT64, NOT_CONVERTIBLE),
    (-(2**53) - 1, FLOAT64, NOT_CONVERTIBLE),
    (2**63 - 1, FLOAT64, NOT_CONVERTIBLE),
    (2**64, FLOAT64, NOT_CONVERTIBLE),
    (True, FLOAT64, NOT_CONVERTIBLE),
    ("1.5", FLOAT64, NOT_CONVERTIBLE),
    (TS, FLOAT64, NOT_CONVERTIBLE),
    # STRING column: any scalar, as its JSON text (strings as sent)
    ("x", STRING, "x"),
    (True, STRING, "true"),
    (False, STRING, "false"),
    (42, STRING, "42"),
    (-42, STRING, "-42"),
    (2**70, STRING, str(2**70)),
    (1.5, STRING, "1.5"),
    (1.0, STRING, "1.0"),
    (1e20, STRING, "1e+20"),
    (TS, STRING, TS),
    ([1, "a"], STRING, '[1,"a"]'),
    ({"a": None}, STRING, '{"a":null}'),
    # TIMESTAMP column: only timestamp text
    (TS, TIMESTAMP, TS_UTC),
    ("2026-03-01T08:00:00Z", TIMESTAMP, TS_UTC),
    ("2026-03-01", TIMESTAMP, NOT_CONVERTIBLE),
    ("x", TIMESTAMP, NOT_CONVERTIBLE),
    (1772352000, TIMESTAMP, NOT_CONVERTIBLE),
    (1772352000.0, TIMESTAMP, NOT_CONVERTIBLE),
    (True, TIMESTAMP, NOT_CONVERTIBLE),
    ([TS], TIMESTAMP, NOT_CONVERTIBLE),
]


@pytest.mark.parametrize(("value", "column_type", "expected"), CONVERSIONS)
def test_convert(value: object, column_type: str, expected: object) -> None:
    result = values.convert(value, column_type)
    if expected is NOT_CONVERTIBLE:
        assert result is NOT_CONVERTIBLE
    else:
        assert result == expected
        assert type(result) is type(expected)


def test_every_type_pair_is_covered() -> None:
    pairs = {(values.infer(v)[0], t) for v, t, _ in CONVERSIONS if not (isinstance(v, float) and not math.isfinite(v))}
    assert pairs >= {(a, b) for a in TYPES for b in TYPES}


def test_not_convertible_repr() -> None:
    assert repr(NOT_CONVERTIBLE) == "NOT_CONVERTIBLE"


# --- properties ------------------------------------------------------------------------------------

leaves = json_leaves | json_documents(max_leaves=8).filter(lambda v: v is not None)
aware_datetimes = st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9998, 12, 30), timezones=st.just(UTC))
offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59)


@THOROUGH
@given(leaves)
def test_convert_into_inferred_type_is_identity(value: object) -> None:
    kind, natural = values.infer(value)
    assert kind in TYPES
    assert values.convert(value, kind) == natural


@THOROUGH
@given(leaves)
def test_any_scalar_goes_into_string(value: object) -> None:
    text = values.convert(value, STRING)
    assert isinstance(text, str)
    if isinstance(value, str):
        assert text == value
    elif isinstance(value, bool):
        assert text == ("true" if value else "false")
    else:
        assert json.loads(text) == value


@THOROUGH
@given(leaves, st.sampled_from(TYPES))
def test_conversions_are_lossless(value: object, column_type: str) -> None:
    result = values.convert(value, column_type)
    if result is NOT_CONVERTIBLE:
        assert column_type != STRING
        return
    if column_type == BOOL:
        assert result is value
    elif column_type == INT64:
        assert not isinstance(value, bool)
        assert type(result) is int and result == value and values.INT64_MIN <= result <= values.INT64_MAX
    elif column_type == FLOAT64:
        assert not isinstance(value, bool)
        assert type(result) is float and result == value
        if isinstance(value, int):
            assert int(result) == value  # exact: no rounding above 2**53
    elif column_type == TIMESTAMP:
        assert values.parse_timestamp(value) == values.parse_timestamp(result)


@FAST
@given(st.integers())
def test_ints_type(value: int) -> None:
    kind, natural = values.infer(value)
    if -(2**63) <= value < 2**63:
        assert (kind, natural) == (INT64, value)
    else:
        assert (kind, natural) == (STRING, str(value))
        assert values.convert(value, INT64) is NOT_CONVERTIBLE
        assert values.convert(value, FLOAT64) is NOT_CONVERTIBLE


@FAST
@given(aware_datetimes, offsets, st.sampled_from(["colon", "compact", "hours", "z"]), st.integers(0, 9))
def test_timestamp_round_trip(moment: datetime, minutes: int, zone_style: str, digits: int) -> None:
    if zone_style == "z":
        minutes = 0
    elif zone_style == "hours":
        minutes -= minutes % 60 if minutes >= 0 else -((-minutes) % 60)
    zone = timezone(timedelta(minutes=minutes))
    local = moment.astimezone(zone)
    sign = "-" if minutes < 0 else "+"
    hh, mm = divmod(abs(minutes), 60)
    suffix = {
        "colon": f"{sign}{hh:02}:{mm:02}",
        "compact": f"{sign}{hh:02}{mm:02}",
        "hours": f"{sign}{hh:02}",
        "z": "Z",
    }[zone_style]
    fraction = f"{local.microsecond:06}999"[:digits]
    text = local.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if digits else "") + suffix
    expected = moment.replace(microsecond=int(fraction[:6].ljust(6, "0")) if digits else 0)
    assert values.parse_timestamp(text) == expected
    assert values.infer(text) == (TIMESTAMP, expected.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
