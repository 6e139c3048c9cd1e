"""Decode a Pub/Sub message into validated, routed calls, or into rejections. Pure: no I/O."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from marshmallow import ValidationError

from personas_warehouse import naming
from personas_warehouse.errors import ErrorClass, Rejection
from personas_warehouse.settings import Settings
from schemas.calls import CALL_SCHEMA, Call, loads_strict

SPACE_ATTRIBUTE = "space"
# Fields of a Segment batch envelope that apply to every call lacking them.
_ENVELOPE_DEFAULTS = ("sentAt",)


@dataclass(frozen=True)
class PubSubMessage:
    message_id: str
    data_b64: str
    publish_time: datetime
    attributes: Mapping[str, str] = field(default_factory=dict)
    subscription: str = ""


@dataclass(frozen=True)
class RoutedCall:
    index: int  # position in the batch; 0 for a single call
    call: Call
    space: str


@dataclass(frozen=True)
class Decoded:
    calls: list[RoutedCall]
    rejections: list[Rejection]
    data: bytes = b""


def error_paths(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested error dict as {"context.personas.space_id": ["Not a valid string."]}."""
    if isinstance(messages, Mapping):
        out: dict[str, list[str]] = {}
        for key, value in messages.items():
            out.update(error_paths(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return {prefix or "_schema": list(messages)}
    return {prefix or "_schema": [str(messages)]}


def _envelope(document: Any) -> tuple[list[Any], dict[str, Any]] | Rejection:
    if isinstance(document, dict) and "batch" in document:
        batch = document["batch"]
        if not isinstance(batch, list) or not batch:
            return Rejection(ErrorClass.INVALID_ENVELOPE, {"batch": ["Must be a non-empty list of calls."]})
        defaults = {k: document[k] for k in _ENVELOPE_DEFAULTS if k in document}
        if isinstance(document.get("context"), dict):
            defaults["context"] = document["context"]
        return batch, defaults
    if isinstance(document, dict):
        return [document], {}
    return Rejection(ErrorClass.INVALID_ENVELOPE, {"_schema": ['Expected a call object or {"batch": [...]}.']})


def _with_defaults(raw: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    if not defaults:
        return raw
    merged = {**{k: v for k, v in defaults.items() if k != "context"}, **raw}
    own = raw.get("context")
    if "context" in defaults and (own is None or isinstance(own, dict)):
        merged["context"] = {**defaults["context"], **(own or {})}
    return merged


def route(call: Call, attributes: Mapping[str, str], settings: Settings) -> str | Rejection:
    """Space of a call: the `space` attribute, else its space_id mapped by config, else the default."""
    slug = attributes.get(SPACE_ATTRIBUTE) or settings.slug_for_space_id(call.space_id) or settings.default_space
    if not naming.is_space_slug(slug):
        return Rejection(
            ErrorClass.UNSAFE_SPACE,
            {SPACE_ATTRIBUTE: [naming.SPACE_SLUG_RULE]},
        )
    return slug


def decode(message: PubSubMessage, settings: Settings) -> Decoded:
    try:
        data = base64.b64decode(message.data_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        return Decoded([], [Rejection(ErrorClass.BAD_BASE64, {"data": [str(exc)]})])
    if len(data) > settings.max_message_bytes:
        reason = f"{len(data)} bytes, over the limit of {settings.max_message_bytes}."
        return Decoded([], [Rejection(ErrorClass.OVERSIZED, {"data": [reason]})], data)
    try:
        document = loads_strict(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return Decoded([], [Rejection(ErrorClass.INVALID_JSON, {"data": [str(exc)]})], data)
    except RecursionError:
        return Decoded([], [Rejection(ErrorClass.INVALID_JSON, {"data": ["Nested too deeply."]})], data)
    envelope = _envelope(document)
    if isinstance(envelope, Rejection):
        return Decoded([], [envelope], data)
    raws, defaults = envelope
    calls: list[RoutedCall] = []
    rejections: list[Rejection] = []
    for index, raw in enumerate(raws):
        if not isinstance(raw, dict):
            rejections.append(Rejection(ErrorClass.SCHEMA_VIOLATION, {"_schema": ["A call must be an object."]}, index))
            continue
        try:
            call: Call = CALL_SCHEMA.load(_with_defaults(raw, defaults))
        except ValidationError as exc:
            rejections.append(Rejection(ErrorClass.SCHEMA_VIOLATION, error_paths(exc.messages), index))
            continue
        space = route(call, message.attributes, settings)
        if isinstance(space, Rejection):
            rejections.append(Rejection(space.error_class, space.errors, index))
            continue
        calls.append(RoutedCall(index, call, space))
    return Decoded(calls, rejections, data)
