"""marshmallow schema of the Segment-spec calls Personas sends (identify and track): the definition.

Unknown top-level fields (channel, version, writeKey, _metadata, ...) are ignored, as Segment does;
`integrations` is ignored. Every rejection carries marshmallow's field paths and reasons.

Imported only when a call is not of the common shape (schemas/calls.py `load_call`: the plain-Python
fast path loads nearly every call Personas sends), so marshmallow stays off the function's start-up.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import EXCLUDE, INCLUDE, Schema, ValidationError, fields, post_load, validate, validates_schema

from schemas.calls import CALL_TYPES, MAX_EVENT_LENGTH, MAX_ID_LENGTH, Call


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
