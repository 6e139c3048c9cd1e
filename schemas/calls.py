"""Segment-spec calls (identify and track) as Personas sends them: the validated `Call`, strict JSON, and
the plain-Python check of the common call shape. The definition of a valid call is marshmallow's
CALL_SCHEMA (schemas/call_schema.py), imported only when a call is not of that shape (messages.load_call).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

CALL_TYPES = ("identify", "track")


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text} is out of range")
    return value


def loads_strict(text: str) -> Any:
    """json.loads that refuses NaN, Infinity and numbers beyond float range (BigQuery cannot store
    them, and they are not JSON). Raises ValueError (JSONDecodeError included) or RecursionError."""
    if text.startswith("\ufeff"):  # as json.loads words it
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _STRICT_DECODER.decode(text)


# Built once: json.loads with hooks builds a decoder, and its scanner, on every call (a third of the
# parse). Safe to share between threads, as json.loads shares its own default decoder.
_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


MAX_ID_LENGTH = 1024
MAX_EVENT_LENGTH = 1024
# context.personas's declared fields (PersonasContextSchema's, in its order; call_schema.py checks it).
PERSONAS_FIELDS = ("computation_class", "computation_id", "computation_key", "namespace", "space_id")


@dataclass(frozen=True)
class Call:
    """One validated identify or track call."""

    type: str
    message_id: str
    user_id: str | None = None
    anonymous_id: str | None = None
    event: str | None = None
    timestamp: datetime | None = None
    sent_at: datetime | None = None
    original_timestamp: datetime | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def space_id(self) -> str | None:
        personas = self.context.get("personas") or {}
        return personas.get("space_id") if isinstance(personas, dict) else None


# --- the common shape, checked in plain Python -------------------------------------------------------
#
# marshmallow costs about 65 us a call, most of the core's CPU, and tens of milliseconds to import at a
# cold start. Nearly every call Personas sends has one shape: string ids, ISO-8601 timestamps, objects
# where objects go. `common_call` checks exactly that shape in plain Python; anything else, and every
# error message, is left to CALL_SCHEMA (schemas/call_schema.py), which stays the definition and is
# imported the first time it is needed (personas_warehouse.messages.load_call).
# tests/unit/test_call_fast_path.py proves, on generated calls hostile ones included, that `common_call`
# never accepts what CALL_SCHEMA refuses and builds the same Call.

_UNUSUAL: Any = object()  # "not the common shape": CALL_SCHEMA decides


def common_call(raw: dict[str, Any]) -> Call | None:
    """The Call CALL_SCHEMA loads from `raw` when `raw` has the common shape; None for anything else."""
    kind = raw.get("type")
    if type(kind) is not str or kind not in CALL_TYPES:
        return None
    message_id = _identifier(raw.get("messageId"))
    user_id = _identifier(raw.get("userId"))
    anonymous_id = _identifier(raw.get("anonymousId"))
    event = _event(raw.get("event"))
    if (
        message_id is None  # missing, null or blank: CALL_SCHEMA words the error
        or message_id is _UNUSUAL
        or user_id is _UNUSUAL
        or anonymous_id is _UNUSUAL
        or not (user_id or anonymous_id)
        or event is _UNUSUAL
        or (kind == "track" and not event)
    ):
        return None
    timestamp = _aware(raw.get("timestamp"))
    sent_at = _aware(raw.get("sentAt"))
    original_timestamp = _aware(raw.get("originalTimestamp"))
    traits = _mapping(raw.get("traits"))
    properties = _mapping(raw.get("properties"))
    context = _context(raw.get("context"))
    if (
        timestamp is _UNUSUAL
        or sent_at is _UNUSUAL
        or original_timestamp is _UNUSUAL
        or traits is _UNUSUAL
        or properties is _UNUSUAL
        or context is _UNUSUAL
    ):
        return None
    call = object.__new__(Call)  # Call(...) sets its eleven frozen fields one object.__setattr__ at a time
    call.__dict__.update(
        type=kind,
        message_id=message_id,
        user_id=user_id,
        anonymous_id=anonymous_id,
        event=event,
        timestamp=timestamp,
        sent_at=sent_at,
        original_timestamp=original_timestamp,
        traits=traits,
        properties=properties,
        context=context,
    )
    return call


def _identifier(value: Any) -> Any:
    """Identifier's rule for a string (null and absent are None); anything else is unusual."""
    if value is None:
        return None
    if type(value) is not str:
        return _UNUSUAL
    text = value.strip()
    if len(text) > MAX_ID_LENGTH:
        return _UNUSUAL
    return text or None


def _event(value: Any) -> Any:
    if value is None:
        return None
    if type(value) is not str or not 1 <= len(value) <= MAX_EVENT_LENGTH:
        return _UNUSUAL
    return value


def _aware(value: Any) -> Any:
    """AwareDateTime(format="iso", default_timezone=UTC) plus _in_utc_range, for a string."""
    if value is None:
        return None
    if type(value) is not str:
        return _UNUSUAL
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return _UNUSUAL
    if moment.tzinfo is UTC:  # the usual "Z": aware, and no shift that could leave years 1-9999
        return moment
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return _UNUSUAL
    return moment


def _mapping(value: Any) -> Any:
    """traits and properties: an object ({} when absent or null)."""
    if value is None:
        return {}
    return value if type(value) is dict else _UNUSUAL


def _context(value: Any) -> Any:
    """An object whose `personas`, if any, is null or an object with string-or-null computation fields."""
    if value is None:
        return {}
    if type(value) is not dict:
        return _UNUSUAL
    personas = value.get("personas")
    if personas is None:
        return value
    if type(personas) is not dict:
        return _UNUSUAL
    for field_value in map(personas.get, PERSONAS_FIELDS):
        if field_value is not None and type(field_value) is not str:
            return _UNUSUAL
    return value
