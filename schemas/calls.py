"""marshmallow schemas of the Segment-spec calls Personas sends (identify and track).

Unknown top-level fields (channel, version, writeKey, _metadata, ...) are ignored, as Segment does;
`integrations` is ignored. Every rejection carries marshmallow's field paths and reasons.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from marshmallow import EXCLUDE, INCLUDE, Schema, ValidationError, fields, post_load, validate, validates_schema

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


class Identifier(fields.Field[str | None]):
    """userId / anonymousId / messageId: a string (numbers are accepted and stringified, as Segment does)."""

    default_error_messages = {
        "invalid": "Not a valid identifier: a non-empty string or an integer.",
        "too_long": f"Longer than {MAX_ID_LENGTH} characters.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.make_error("invalid")
        text = str(value).strip()
        if len(text) > MAX_ID_LENGTH:
            raise self.make_error("too_long")
        return text or None


def _in_utc_range(moment: datetime) -> None:
    """marshmallow accepts offsets that push a date past year 9999 (or before 1) once in UTC."""
    try:
        moment.astimezone(UTC)
    except OverflowError as exc:
        raise ValidationError("Outside the years 1-9999 once in UTC.") from exc


def _timestamp() -> fields.AwareDateTime:
    return fields.AwareDateTime(
        format="iso",
        default_timezone=UTC,
        load_default=None,
        allow_none=True,
        validate=_in_utc_range,
    )


def _object() -> fields.Dict:
    return fields.Dict(keys=fields.String(), load_default=dict, allow_none=True)


class _InSentOrder(Schema):
    """An object whose extra keys are kept (they become columns), in the order the call sent them.

    marshmallow puts the declared fields first and adds the unknown keys in the order of a `set`, which
    changes with PYTHONHASHSEED, so from one process to the next. Everything made from the keys' order
    (the columns a call adds, its discards and their insert ids) must depend on the message alone: a
    redelivery handled by another instance must write the same ids, or BigQuery keeps both copies."""

    class Meta:
        unknown = INCLUDE

    @post_load(pass_original=True)
    def _sent_order(self, data: dict[str, Any], original: Any, **kwargs: Any) -> dict[str, Any]:
        if not isinstance(original, dict):
            return data
        ordered = {key: data[key] for key in original if key in data}
        ordered.update(data)  # nothing more today: only a declared field with a default could be missing
        return ordered


class PersonasContextSchema(_InSentOrder):
    """context.personas: which computation sent the call."""

    computation_class = fields.String(allow_none=True)
    computation_id = fields.String(allow_none=True)
    computation_key = fields.String(allow_none=True)
    namespace = fields.String(allow_none=True)
    space_id = fields.String(allow_none=True)


class ContextSchema(_InSentOrder):
    personas = fields.Nested(PersonasContextSchema, allow_none=True)


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


class CallSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    type = fields.String(required=True, validate=validate.OneOf(CALL_TYPES))
    messageId = Identifier(required=True, data_key="messageId", attribute="message_id")
    userId = Identifier(load_default=None, allow_none=True, attribute="user_id")
    anonymousId = Identifier(load_default=None, allow_none=True, attribute="anonymous_id")
    event = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=MAX_EVENT_LENGTH))
    timestamp = _timestamp()
    sentAt = _timestamp()
    originalTimestamp = _timestamp()
    traits = _object()
    properties = _object()
    context = fields.Nested(ContextSchema, load_default=dict, allow_none=True)

    @validates_schema
    def _check(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data.get("user_id") and not data.get("anonymous_id"):
            raise ValidationError("A call needs a userId or an anonymousId.", field_name="userId")
        if data.get("message_id") is None:
            raise ValidationError("messageId must not be empty.", field_name="messageId")
        if data.get("type") == "track" and not data.get("event"):
            raise ValidationError("A track call needs an event name.", field_name="event")

    @post_load
    def _to_call(self, data: dict[str, Any], **kwargs: Any) -> Call:
        return Call(
            type=data["type"],
            message_id=data["message_id"],
            user_id=data.get("user_id"),
            anonymous_id=data.get("anonymous_id"),
            event=data.get("event"),
            timestamp=data.get("timestamp"),
            sent_at=data.get("sentAt"),
            original_timestamp=data.get("originalTimestamp"),
            traits=data.get("traits") or {},
            properties=data.get("properties") or {},
            context=data.get("context") or {},
        )


CALL_SCHEMA = CallSchema()


# --- the common shape, checked in plain Python -------------------------------------------------------
#
# marshmallow costs about 65 us a call, most of the core's CPU. Nearly every call Personas sends has
# one shape: string ids, ISO-8601 timestamps, objects where objects go. `common_call` checks exactly
# that shape in plain Python; anything else, and every error message, is left to CALL_SCHEMA, which
# stays the definition. tests/unit/test_call_fast_path.py proves, on generated calls hostile ones
# included, that `common_call` never accepts what CALL_SCHEMA refuses and builds the same Call.

_UNUSUAL: Any = object()  # "not the common shape": CALL_SCHEMA decides
_PERSONAS_FIELDS = tuple(PersonasContextSchema._declared_fields)


def load_call(raw: dict[str, Any]) -> Call:
    """The validated Call of one call object parsed from JSON; raises ValidationError as CALL_SCHEMA does."""
    call = common_call(raw)
    return call if call is not None else CALL_SCHEMA.load(raw)


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
    for field_value in map(personas.get, _PERSONAS_FIELDS):
        if field_value is not None and type(field_value) is not str:
            return _UNUSUAL
    return value
