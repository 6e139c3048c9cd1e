"""Parse a Pub/Sub push body into a message, and decode a message into validated, routed calls, or
into rejections. Pure: no I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from marshmallow import ValidationError

from personas_warehouse import naming, values
from personas_warehouse.errors import ErrorClass, Rejection
from personas_warehouse.settings import Settings, SpacePolicy
from schemas.calls import Call, load_call, loads_strict
from schemas.config import LISTED_SPACES

SPACE_ATTRIBUTE = "space"
# Attributes infra.ops.replay sets on what it republishes: the original message's id, and its publish time
# (RFC 3339), which becomes the replayed calls' received_at (see `received_at`).
REPLAY_OF = "replay_of"
ORIGINAL_PUBLISH_TIME = "original_publish_time"
# Fields of a Segment batch envelope that apply to every call lacking them.
_ENVELOPE_DEFAULTS = ("sentAt",)


@dataclass(frozen=True)
class PubSubMessage:
    message_id: str
    data_b64: str
    publish_time: datetime
    attributes: Mapping[str, str] = field(default_factory=dict)
    subscription: str = ""
    ordering_key: str = ""
    delivery_attempt: int | None = None  # only when the subscription dead-letters (never from the emulator)


@dataclass(frozen=True)
class PushDelivery:
    """What one push request carried. `message` is always set (with substitutes where the body lacked a
    field, each named in `notes`), so even a body that is not a push at all can be recorded: then
    `rejection` says why, and `stored_data` is what the rejection row keeps as its data."""

    message: PubSubMessage
    notes: dict[str, list[str]] = field(default_factory=dict)
    rejection: Rejection | None = None
    stored_data: bytes = b""


SUBSTITUTE_ID_PREFIX = "sha256-"


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


def batch_of(data: bytes) -> tuple[list[Any], dict[str, Any]] | None:
    """The raw calls of a `{"batch": [...]}` message and the envelope fields decode applies to each of them
    (`sentAt`, an object `context`); None for anything else."""
    try:
        document = loads_strict(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not (isinstance(document, dict) and isinstance(document.get("batch"), list)):
        return None
    envelope = _envelope(document)
    return None if isinstance(envelope, Rejection) else envelope


def alone_in_envelope(raw: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """One call of a batch as a message of its own that decodes to the same call: the envelope with only
    this call in it. Stored for a refused call of a batch, so that replaying it republishes the envelope's
    `context` (its `personas.space_id` routes the call) and `sentAt` (its event time) with it."""
    return {"batch": [raw], **defaults}


def received_at(message: PubSubMessage) -> datetime:
    """When the message's calls were received: its publish time. A replay (`replay_of` set, by infra.ops.replay)
    carries the original message's publish time in `original_publish_time`, and that is used instead, so the
    replayed calls get the received_at, hence the event time (`timestamp` derives from it when a call has
    none) and the day partition, that the original delivery would have written; only `loaded_at` tells them
    apart. A value that is no timestamp, or later than the message's own publish time, is ignored: a replay
    is always published after its original."""
    if REPLAY_OF not in message.attributes:
        return message.publish_time
    original = values.parse_timestamp(message.attributes.get(ORIGINAL_PUBLISH_TIME, ""))
    return original if original is not None and original <= message.publish_time else message.publish_time


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


def space_refusal(space: str, policy: SpacePolicy, listed: Collection[str], existing: Collection[str]) -> str | None:
    """Why the space policy refuses `space`, or None. `listed`: the spaces of the config file; `existing`:
    the space datasets known to exist (an existing space is never refused by the count: lowering the
    maximum does not cut off spaces already made)."""
    if policy.allow == LISTED_SPACES:
        return None if space in listed else f"Not one of the spaces listed in the config file ({sorted(listed)})."
    if space in existing or len(existing) < policy.max_space_datasets:
        return None
    return f"{len(existing)} space datasets exist, the maximum of space_policy.max_space_datasets."


def _b64decode_strict(text: str) -> bytes:
    """base64.b64decode(text, validate=True), errors and all, without its wrapper's checks (a third of
    its cost on a call-sized message)."""
    try:
        ascii_text = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("string argument should contain only ASCII characters") from None
    return binascii.a2b_base64(ascii_text, strict_mode=True)


def decode(message: PubSubMessage, settings: Settings) -> Decoded:
    try:
        data = _b64decode_strict(message.data_b64)
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
            call = load_call(_with_defaults(raw, defaults))
        except ValidationError as exc:
            rejections.append(Rejection(ErrorClass.SCHEMA_VIOLATION, error_paths(exc.messages), index))
            continue
        space = route(call, message.attributes, settings)
        if isinstance(space, Rejection):
            rejections.append(Rejection(space.error_class, space.errors, index))
            continue
        calls.append(RoutedCall(index, call, space))
    return Decoded(calls, rejections, data)


# --- the Pub/Sub push body -----------------------------------------------------------------------------
#
# {"message": {"data": b64, "attributes": {..}, "messageId": id, "message_id": id, "publishTime": ts,
#  "publish_time": ts, "orderingKey": k}, "subscription": "projects/P/subscriptions/S", "deliveryAttempt": n}
# Cloud Pub/Sub and its emulator send the same shape (the emulator sends "data": "" for a message with
# only attributes, and never deliveryAttempt). Parsed here rather than by functions-framework's CloudEvent
# conversion, which drops subscription and deliveryAttempt and answers 400 (so: redelivery until
# dead-lettered, no trace) to a message without data.


def parse_push(body: bytes, received_at: datetime) -> PushDelivery:
    """Never raises. A body that is not a push (not UTF-8 JSON, not an object, no `message` object, `data`
    not a string, attributes not a map of strings) is an `invalid_push` rejection keeping the whole body; a
    message without data an `invalid_envelope` one (legal in Pub/Sub, but it carries no call). A missing
    messageId becomes a hash of the body, a bad publishTime the receive time: both noted, neither rejected."""
    try:
        document: Any = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = "Nested too deeply." if isinstance(exc, RecursionError) else f"Not UTF-8 JSON: {exc}"
        return _not_a_push(body, received_at, {"_body": [reason]})
    if not isinstance(document, dict):
        expected = 'Expected a JSON object {"message": {...}, "subscription": "..."}.'
        return _not_a_push(body, received_at, {"_body": [expected]}, document)
    notes: dict[str, list[str]] = {}
    subscription = _optional_string(document, ("subscription",), notes)
    attempt = document.get("deliveryAttempt")
    if attempt is not None and (isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1):
        notes["deliveryAttempt"] = ["Not a positive integer; ignored."]
        attempt = None
    raw = document.get("message")
    if not isinstance(raw, dict):
        problem = "Missing." if raw is None else "Must be an object."
        return _not_a_push(body, received_at, {"message": [problem]}, document, subscription, attempt, notes)
    message_id = _first_string(raw, ("messageId", "message_id"))
    if message_id is None:
        message_id = _substitute_id(body, document)
        notes["message.messageId"] = [f"Missing; {message_id} (a hash of the body) was used."]
    published_text = _first_string(raw, ("publishTime", "publish_time"))
    published = values.parse_timestamp(published_text) if published_text is not None else None
    if published is None:
        problem = "Missing" if published_text is None else "Not an ISO-8601 timestamp with a zone"
        notes["message.publishTime"] = [f"{problem}; the receive time was used."]
        published = received_at
    ordering_key = _optional_string(raw, ("orderingKey", "ordering_key"), notes, "message.")
    attributes = raw.get("attributes")
    data = raw.get("data")
    message = PubSubMessage(
        message_id=message_id,
        data_b64=data if isinstance(data, str) else "",
        publish_time=published,
        attributes=_printable_attributes(attributes),
        subscription=subscription,
        ordering_key=ordering_key,
        delivery_attempt=attempt,
    )
    errors: dict[str, list[str]] = {}
    bad = _attribute_errors(attributes)
    if bad:
        errors["message.attributes"] = bad
    if data is not None and not isinstance(data, str):
        errors["message.data"] = ["Must be a base64 string."]
    if errors:
        return PushDelivery(message, notes, Rejection(ErrorClass.INVALID_PUSH, errors), body)
    if not data:
        empty = ["Missing or empty: a message with only attributes carries no call."]
        return PushDelivery(message, notes, Rejection(ErrorClass.INVALID_ENVELOPE, {"message.data": empty}))
    return PushDelivery(message, notes)


def _not_a_push(
    body: bytes,
    received_at: datetime,
    errors: dict[str, list[str]],
    document: Any = None,
    subscription: str = "",
    attempt: int | None = None,
    notes: dict[str, list[str]] | None = None,
) -> PushDelivery:
    """The rejection keeps the body itself (as text, else base64): it is all there is to recover."""
    message = PubSubMessage(
        message_id=_substitute_id(body, document),
        data_b64=base64.b64encode(body).decode("ascii"),
        publish_time=received_at,
        subscription=subscription,
        delivery_attempt=attempt,
    )
    return PushDelivery(message, notes or {}, Rejection(ErrorClass.INVALID_PUSH, errors), body)


def _substitute_id(body: bytes, document: Any) -> str:
    """The same for every redelivery of one body (deliveryAttempt, which changes, is left out), so the
    insert ids derived from it deduplicate like a real message id."""
    if isinstance(document, dict):
        stable = _json_text({k: v for k, v in document.items() if k != "deliveryAttempt"})
        body = stable.encode("ascii") if stable is not None else body
    return SUBSTITUTE_ID_PREFIX + hashlib.sha256(body).hexdigest()[:32]


def _first_string(raw: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    """Pub/Sub sends both spellings (messageId and message_id); the first non-empty string wins."""
    for key in keys:
        value = raw.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _optional_string(
    raw: Mapping[str, Any], keys: tuple[str, ...], notes: dict[str, list[str]], prefix: str = ""
) -> str:
    found = _first_string(raw, keys)
    if found is None and any(raw.get(key) not in (None, "") for key in keys):
        notes[prefix + keys[0]] = ["Not a string; ignored."]
    return found or ""


def _attribute_errors(attributes: Any) -> list[str]:
    if attributes is None:
        return []
    if not isinstance(attributes, dict):
        return ["Must be a map of strings."]
    return [f"{key!r}: must be a string." for key, value in attributes.items() if not isinstance(value, str)]


def _printable_attributes(attributes: Any) -> dict[str, str]:
    """Attributes as a map of strings: non-string values as JSON text (only ever stored in a rejection)."""
    if not isinstance(attributes, dict):
        return {}
    return {k: v if isinstance(v, str) else (_json_text(v) or "?") for k, v in attributes.items()}


def _json_text(value: Any) -> str | None:
    """Canonical ASCII JSON of a parsed document; None when it is nested too deeply to write back."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    except RecursionError:
        return None
