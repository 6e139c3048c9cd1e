"""Types of trait and property values: what column type a value creates, and lossless conversion.

The first value seen decides a column's type. A later value is converted into that type only when no
information is lost (an integer into FLOAT64, any scalar into STRING, an integral float into INT64);
otherwise `convert` answers NOT_CONVERTIBLE and the caller records the value as a discard.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any, Final

STRING, INT64, FLOAT64, BOOL, TIMESTAMP = "STRING", "INT64", "FLOAT64", "BOOL", "TIMESTAMP"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EXACT_FLOAT_INT = 2**53


class _NotConvertible:
    def __repr__(self) -> str:
        return "NOT_CONVERTIBLE"


NOT_CONVERTIBLE: Final = _NotConvertible()

# ISO-8601 date-time with an explicit zone; anything else stays a STRING.
# A fraction needs seconds: "10:00.5" would be a fraction of a minute in ISO-8601, not supported.
_TIMESTAMP = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}(?::\d{2}(?:\.(\d{1,9}))?)?)([Zz]|[+-]\d{2}(?::?\d{2})?)\Z"
)


_SHORTEST_TIMESTAMP = len("2026-11-01T10:00Z")  # and every _TIMESTAMP match has "-" after 4 digits


def parse_timestamp(text: str) -> datetime | None:
    """An aware UTC datetime for an ISO-8601 string with a zone, else None. Sub-microseconds are cut."""
    match = _TIMESTAMP.match(text)
    if not match:
        return None
    date, clock, fraction, zone = match.groups()
    clock = clock.split(".")[0]
    if len(clock) == 5:
        clock += ":00"
    zone = "+00:00" if zone in ("Z", "z") else zone
    if len(zone) == 3:
        zone += ":00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    micro = f".{(fraction or '0')[:6].ljust(6, '0')}"
    try:
        return datetime.fromisoformat(f"{date}T{clock}{micro}{zone}").astimezone(UTC)
    except (ValueError, OverflowError):  # no such date, or outside years 1-9999 once in UTC
        return None


def format_timestamp(moment: datetime) -> str:
    """The form written to TIMESTAMP columns: UTC, microseconds, `Z` (isoformat's fields, written out:
    replace() and isoformat() cost three times as much, three times a call)."""
    utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    return _TIMESTAMP_TEXT % (utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond)


_TIMESTAMP_TEXT = "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ"


def json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=False)


def wire_row(row: dict[str, Any]) -> dict[str, Any]:
    """`row` as it travels in an insertAll request: every integer (INT64 is the only type we fill with
    Python ints) as its decimal string, as google-cloud-bigquery's own `insert_rows` does (`_helpers.
    _int_to_json` returns `str(value)`). A JSON number goes through parsers that read numbers as IEEE
    doubles and would round past 2**53; BigQuery parses an integer string into INT64 exactly."""
    return {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in row.items()}


def infer(value: Any) -> tuple[str, Any]:
    """(column type, value to write) for a leaf value that is not None and not a dict."""
    if type(value) is str:  # most values: tried as a timestamp only when it can be one
        moment = parse_timestamp(value) if len(value) >= _SHORTEST_TIMESTAMP and value[4] == "-" else None
        return (TIMESTAMP, format_timestamp(moment)) if moment else (STRING, value)
    if isinstance(value, bool):
        return BOOL, value
    if isinstance(value, int):
        return (INT64, value) if INT64_MIN <= value <= INT64_MAX else (STRING, str(value))
    if isinstance(value, float):
        return FLOAT64, value
    if isinstance(value, str):
        moment = parse_timestamp(value)
        return (TIMESTAMP, format_timestamp(moment)) if moment else (STRING, value)
    return STRING, json_text(value)


def column_type_of(value: Any) -> str:
    """infer(value)[0], without writing the value (a timestamp is not formatted to learn its type)."""
    kind = type(value)
    if kind is str:
        may_be_timestamp = len(value) >= _SHORTEST_TIMESTAMP and value[4] == "-"
        return TIMESTAMP if may_be_timestamp and parse_timestamp(value) else STRING
    if kind is bool:
        return BOOL
    if kind is float:
        return FLOAT64
    return infer(value)[0]


# The column a value of these Python types is written to as sent: infer() would say that very column
# type (and a string that reads as a timestamp goes into a STRING column as sent, too).
AS_SENT: Final = {str: STRING, bool: BOOL, float: FLOAT64}


def convert(value: Any, column_type: str) -> Any:
    """`value` in `column_type` if that is lossless, else NOT_CONVERTIBLE. The usual case, a value of
    its column's own type, is answered without inferring again."""
    kind = type(value)
    if AS_SENT.get(kind) == column_type or (kind is int and column_type == INT64 and INT64_MIN <= value <= INT64_MAX):
        return value
    return convert_by_inference(value, column_type)


def convert_by_inference(value: Any, column_type: str) -> Any:
    """convert's definition: what infer() says the value is, then the lossless conversions."""
    kind, natural = infer(value)
    if kind == column_type:
        return natural
    if column_type == STRING:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return json_text(value)
        return value if isinstance(value, str) else natural
    if column_type == FLOAT64 and kind == INT64 and abs(value) <= EXACT_FLOAT_INT:
        return float(value)
    if (
        column_type == INT64
        and kind == FLOAT64
        and math.isfinite(value)
        and value.is_integer()
        and abs(value) <= EXACT_FLOAT_INT
    ):
        return int(value)
    return NOT_CONVERTIBLE
