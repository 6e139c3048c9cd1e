"""messages.parse_push: a raw Pub/Sub push body -> a message with every field, or a rejection. Never raises.

Fixtures in tests/fixtures/push: `emulator_*` were captured from Google's Pub/Sub emulator (Cloud SDK 528)
pushing to a plain HTTP server; `cloud_*` follow Cloud Pub/Sub's documented push body (deliveryAttempt
with a dead-letter policy, orderingKey, nanosecond publishTime); the `*_only` ones carry one key spelling.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personas_warehouse.errors import ErrorClass
from personas_warehouse.messages import SUBSTITUTE_ID_PREFIX, PushDelivery, decode, parse_push
from personas_warehouse.settings import Settings
from tests.unit._support import FAST, THOROUGH, json_documents

PUSH = Path(__file__).resolve().parent.parent / "fixtures" / "push"
RECEIVED = datetime(2026, 11, 29, 0, 0, 1, tzinfo=UTC)
NOT_AN_OBJECT = 'Expected a JSON object {"message": {...}, "subscription": "..."}.'
DATA = base64.b64encode(b'{"type": "identify", "userId": "u1", "messageId": "c1"}').decode()


def fixture_body(name: str) -> bytes:
    return (PUSH / name).read_bytes()


def push(message: Any = None, **top: Any) -> bytes:
    """A push body; `message` defaults to a complete, valid one."""
    if message is None:
        message = {"data": DATA, "messageId": "7", "publishTime": "2026-11-28T10:00:00Z"}
    return json.dumps({"message": message, "subscription": "projects/p/subscriptions/s", **top}).encode()


def parse(body: bytes) -> PushDelivery:
    return parse_push(body, RECEIVED)


# --- real shapes -------------------------------------------------------------------------------------


def test_emulator_body_keeps_every_field() -> None:
    delivery = parse(fixture_body("emulator_identify.json"))
    assert delivery.rejection is None and delivery.notes == {}
    m = delivery.message
    assert (m.message_id, m.subscription, m.delivery_attempt, m.ordering_key) == (
        "1",
        "projects/cap-proj/subscriptions/capsub",
        None,  # the emulator never sends deliveryAttempt, even with a dead-letter policy
        "",
    )
    assert m.attributes == {"space": "marketing"}
    assert m.publish_time == datetime(2026, 11, 28, 23, 51, 20, 504000, tzinfo=UTC)
    [routed] = decode(m, Settings()).calls
    assert (routed.call.message_id, routed.space) == ("c1", "marketing")


def test_cloud_body_keeps_delivery_attempt_ordering_key_and_subscription() -> None:
    delivery = parse(fixture_body("cloud_dead_letter_attempt.json"))
    assert delivery.rejection is None and delivery.notes == {}
    m = delivery.message
    assert m.delivery_attempt == 3
    assert m.ordering_key == "u123"
    assert m.subscription == "projects/personas-prod/subscriptions/personas-calls-ingest"
    assert m.message_id == "13417628309401281"
    assert m.publish_time == datetime(2026, 11, 28, 21, 4, 5, 123456, tzinfo=UTC)  # nanoseconds cut
    assert [c.call.event for c in decode(m, Settings()).calls] == ["Audience Entered"]


@pytest.mark.parametrize(
    ("name", "message_id", "published", "ordering_key"),
    [
        ("snake_case_only.json", "42", datetime(2026, 11, 28, 21, 4, 5, tzinfo=UTC), "u123"),
        ("camel_case_only.json", "43", datetime(2026, 11, 28, 19, 4, 5, 500000, tzinfo=UTC), ""),
    ],
)
def test_either_key_spelling_is_enough(name: str, message_id: str, published: datetime, ordering_key: str) -> None:
    delivery = parse(fixture_body(name))
    assert delivery.rejection is None and delivery.notes == {}
    assert (delivery.message.message_id, delivery.message.publish_time) == (message_id, published)
    assert delivery.message.ordering_key == ordering_key
    assert delivery.message.attributes == {}


@pytest.mark.parametrize(
    ("name", "message_id", "subscription", "attributes"),
    [
        ("emulator_attributes_only.json", "2", "projects/cap-proj/subscriptions/capsub", {"only": "attributes"}),
        (
            "cloud_attributes_only.json",
            "44",
            "projects/personas-prod/subscriptions/personas-calls-ingest",
            {"space": "marketing"},
        ),
    ],
)
def test_message_with_only_attributes_is_an_invalid_envelope_keeping_its_ids(
    name: str, message_id: str, subscription: str, attributes: dict[str, str]
) -> None:
    """Legal in Pub/Sub (the emulator sends "data": "", Cloud omits it), but no call can be in it.
    functions-framework's CloudEvent conversion answered 400 here: a redelivery loop with no trace."""
    delivery = parse(fixture_body(name))
    assert delivery.rejection is not None
    assert delivery.rejection.error_class is ErrorClass.INVALID_ENVELOPE
    assert list(delivery.rejection.errors) == ["message.data"]
    m = delivery.message
    assert (m.message_id, m.subscription, dict(m.attributes)) == (message_id, subscription, attributes)
    assert delivery.stored_data == b""  # the data column stays empty: there was none


# --- malformed bodies: every one a rejection, with a reason ------------------------------------------


@pytest.mark.parametrize(
    ("body", "error_class", "errors"),
    [
        (b"", ErrorClass.INVALID_PUSH, {"_body": ["Not UTF-8 JSON: Expecting value: line 1 column 1 (char 0)"]}),
        (b"{", ErrorClass.INVALID_PUSH, None),
        (b"\xff\xfe{}", ErrorClass.INVALID_PUSH, None),
        (b"[" * 100_000, ErrorClass.INVALID_PUSH, {"_body": ["Nested too deeply."]}),
        (b"[]", ErrorClass.INVALID_PUSH, {"_body": [NOT_AN_OBJECT]}),
        (b'"message"', ErrorClass.INVALID_PUSH, None),
        (b"null", ErrorClass.INVALID_PUSH, None),
        (b"{}", ErrorClass.INVALID_PUSH, {"message": ["Missing."]}),
        (b'{"subscription": "projects/p/subscriptions/s"}', ErrorClass.INVALID_PUSH, {"message": ["Missing."]}),
        (push("x"), ErrorClass.INVALID_PUSH, {"message": ["Must be an object."]}),
        (push([DATA]), ErrorClass.INVALID_PUSH, {"message": ["Must be an object."]}),
        (push({"data": 5, "messageId": "1"}), ErrorClass.INVALID_PUSH, {"message.data": ["Must be a base64 string."]}),
        (
            push({"data": DATA, "messageId": "1", "attributes": ["space"]}),
            ErrorClass.INVALID_PUSH,
            {"message.attributes": ["Must be a map of strings."]},
        ),
        (
            push({"data": DATA, "messageId": "1", "attributes": {"space": "a", "n": 1, "o": {"x": None}}}),
            ErrorClass.INVALID_PUSH,
            {"message.attributes": ["'n': must be a string.", "'o': must be a string."]},
        ),
        (
            push({"messageId": "1", "attributes": {"space": "a"}}),
            ErrorClass.INVALID_ENVELOPE,
            {"message.data": ["Missing or empty: a message with only attributes carries no call."]},
        ),
        (push({"data": None, "messageId": "1"}), ErrorClass.INVALID_ENVELOPE, None),
        (push({"data": "", "messageId": "1"}), ErrorClass.INVALID_ENVELOPE, None),
        (push({}), ErrorClass.INVALID_ENVELOPE, None),
    ],
)
def test_malformed_body_is_a_rejection(body: bytes, error_class: ErrorClass, errors: dict[str, Any] | None) -> None:
    delivery = parse(body)
    assert delivery.rejection is not None
    assert delivery.rejection.error_class is error_class
    assert delivery.rejection.call_index is None
    if errors is not None:
        assert delivery.rejection.errors == errors
    assert delivery.message.message_id  # always an id: the rejection row and its insert id need one
    if error_class is ErrorClass.INVALID_PUSH:
        assert delivery.stored_data == body  # the whole body is kept: it is all there is to recover


def test_bad_attributes_are_stored_readably() -> None:
    delivery = parse(push({"data": DATA, "messageId": "1", "attributes": {"space": "a", "n": 1}}))
    assert delivery.message.attributes == {"space": "a", "n": "1"}
    assert delivery.message.message_id == "1"


def test_a_body_that_is_not_a_push_keeps_the_subscription_and_attempt_it_has() -> None:
    delivery = parse(b'{"subscription": "projects/p/subscriptions/s", "deliveryAttempt": 4}')
    assert (delivery.message.subscription, delivery.message.delivery_attempt) == ("projects/p/subscriptions/s", 4)
    assert delivery.message.publish_time == RECEIVED


# --- fallbacks: processed, and said so -----------------------------------------------------------------


def test_missing_message_id_becomes_a_hash_stable_across_redeliveries() -> None:
    message = {"data": DATA, "publishTime": "2026-11-28T10:00:00Z"}
    first = parse(push(message, deliveryAttempt=1))
    again = parse(push(message, deliveryAttempt=2))
    other = parse(push({**message, "data": base64.b64encode(b"{}").decode()}, deliveryAttempt=1))
    assert first.rejection is None
    assert first.message.message_id.startswith(SUBSTITUTE_ID_PREFIX)
    assert first.message.message_id == again.message.message_id != other.message.message_id
    assert first.notes == {"message.messageId": [f"Missing; {first.message.message_id} (a hash of the body) was used."]}
    assert parse(b"garbage").message.message_id == parse(b"garbage").message.message_id


@pytest.mark.parametrize("value", [None, "", 17, ["1"]])
def test_empty_or_non_string_message_id_is_substituted(value: Any) -> None:
    delivery = parse(push({"data": DATA, "messageId": value, "message_id": value}))
    assert delivery.message.message_id.startswith(SUBSTITUTE_ID_PREFIX)
    assert delivery.rejection is None


@pytest.mark.parametrize(
    ("published", "note"),
    [
        (None, "Missing; the receive time was used."),
        ("yesterday", "Not an ISO-8601 timestamp with a zone; the receive time was used."),
        ("2026-11-28T10:00:00", "Not an ISO-8601 timestamp with a zone; the receive time was used."),  # no zone
        ("2026-02-30T10:00:00Z", "Not an ISO-8601 timestamp with a zone; the receive time was used."),
        (1764324000, "Missing; the receive time was used."),
    ],
)
def test_bad_publish_time_falls_back_to_the_receive_time(published: Any, note: str) -> None:
    delivery = parse(push({"data": DATA, "messageId": "1", "publishTime": published}))
    assert delivery.rejection is None
    assert delivery.message.publish_time == RECEIVED
    assert delivery.notes == {"message.publishTime": [note]}


@pytest.mark.parametrize("attempt", [0, -1, "3", 2.5, True, [1]])
def test_odd_delivery_attempt_is_ignored_and_noted(attempt: Any) -> None:
    delivery = parse(push(deliveryAttempt=attempt))
    assert delivery.rejection is None
    assert delivery.message.delivery_attempt is None
    assert delivery.notes == {"deliveryAttempt": ["Not a positive integer; ignored."]}


def test_non_string_subscription_and_ordering_key_are_noted() -> None:
    body = json.dumps({"message": {"data": DATA, "messageId": "1", "orderingKey": 5}, "subscription": ["s"]})
    delivery = parse(body.encode())
    assert (delivery.message.subscription, delivery.message.ordering_key) == ("", "")
    assert delivery.notes["subscription"] == ["Not a string; ignored."]
    assert delivery.notes["message.orderingKey"] == ["Not a string; ignored."]


# --- properties: any body whatsoever -> a message or a rejection, never an exception -------------------

push_keys = st.sampled_from(
    [
        "message",
        "subscription",
        "deliveryAttempt",
        "data",
        "attributes",
        "messageId",
        "message_id",
        "publishTime",
        "publish_time",
        "orderingKey",
        "space",
    ]
)
push_values = st.none() | st.booleans() | st.integers() | st.text(max_size=30) | st.just(DATA)


def _check(delivery: PushDelivery, body: bytes) -> None:
    assert isinstance(delivery, PushDelivery)
    m = delivery.message
    assert isinstance(m.message_id, str) and m.message_id
    assert m.publish_time.tzinfo is not None
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in m.attributes.items())
    assert m.delivery_attempt is None or (type(m.delivery_attempt) is int and m.delivery_attempt >= 1)
    if delivery.rejection is None:
        assert m.data_b64  # something to decode
        decode(m, Settings())  # and decoding never raises either
    else:
        assert delivery.rejection.error_class in (ErrorClass.INVALID_PUSH, ErrorClass.INVALID_ENVELOPE)
        assert delivery.rejection.errors
    json.dumps(delivery.notes)  # loggable


@THOROUGH
@given(json_documents(keys=push_keys | st.text(max_size=8), max_leaves=30))
def test_any_json_body_is_a_message_or_a_rejection(document: Any) -> None:
    body = json.dumps(document).encode()
    _check(parse(body), body)


@FAST
@given(
    st.fixed_dictionaries(
        {"message": st.dictionaries(push_keys, push_values | st.dictionaries(st.text(max_size=5), push_values))},
        optional={"subscription": push_values, "deliveryAttempt": push_values},
    )
)
def test_any_near_push_body_is_a_message_or_a_rejection(document: dict[str, Any]) -> None:
    body = json.dumps(document).encode()
    _check(parse(body), body)


@FAST
@given(st.binary(max_size=200))
def test_any_bytes_are_a_message_or_a_rejection(body: bytes) -> None:
    _check(parse(body), body)
