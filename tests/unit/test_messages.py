"""messages.decode: Pub/Sub message -> validated, routed calls, or rejections. Never raises."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personas_warehouse import messages
from personas_warehouse.errors import ErrorClass, Rejection
from personas_warehouse.messages import Decoded, decode, error_paths, route
from personas_warehouse.settings import Settings, SpaceConfig
from schemas.calls import CALL_SCHEMA, Call
from tests.unit._support import FAST, THOROUGH, call, fixture, json_documents, message

SETTINGS = Settings()
SPACES = Settings(
    spaces={
        "marketing": SpaceConfig(space_ids=("spa_marketing_1", "spa_marketing_2")),
        "sales": SpaceConfig(space_ids=("spa_sales",)),
    }
)
UNSAFE = {"space": ["Not a safe space slug: 1 to 100 of a-z, 0-9 and _, not starting with _."]}


def decode_doc(document: Any, settings: Settings = SETTINGS, **kwargs: Any) -> Decoded:
    return decode(message(document, **kwargs), settings)


def only_rejection(decoded: Decoded) -> Rejection:
    assert decoded.calls == []
    assert len(decoded.rejections) == 1
    return decoded.rejections[0]


def schema_errors(document: Any) -> dict[str, list[str]]:
    rejection = only_rejection(decode_doc(document))
    assert rejection.error_class is ErrorClass.SCHEMA_VIOLATION
    assert rejection.call_index == 0
    assert rejection.space is None
    return rejection.errors


# --- transport-level rejections --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data_b64", "reason"),
    [
        ("!!!!", "Only base64 data is allowed"),
        ("eyJh IjoxfQ==", "Only base64 data is allowed"),  # whitespace is not tolerated
        ("eyJhIjoxfQ==\n", "Excess data after padding"),
        ("YQ", "Incorrect padding"),
        ("é", "string argument should contain only ASCII characters"),
    ],
)
def test_bad_base64(data_b64: str, reason: str) -> None:
    decoded = decode(message(data_b64=data_b64), SETTINGS)
    assert decoded == Decoded([], [Rejection(ErrorClass.BAD_BASE64, {"data": [reason]})], b"")


def test_oversized_message_keeps_its_data() -> None:
    data = json.dumps(call()).encode()
    decoded = decode(message(raw=data), Settings(max_message_bytes=len(data) - 1))
    reason = f"{len(data)} bytes, over the limit of {len(data) - 1}."
    assert decoded == Decoded([], [Rejection(ErrorClass.OVERSIZED, {"data": [reason]})], data)


def test_message_exactly_at_the_limit_is_accepted() -> None:
    data = json.dumps(call()).encode()
    decoded = decode(message(raw=data), Settings(max_message_bytes=len(data)))
    assert decoded.rejections == []
    assert [c.call.message_id for c in decoded.calls] == ["m-1"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "Expecting value: line 1 column 1 (char 0)"),
        (b"{", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        (b"{'a': 1}", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        (b'{"a": 1} x', "Extra data: line 1 column 10 (char 9)"),
        (b"NaN", "NaN is not valid JSON"),
        (b'{"a": Infinity}', "Infinity is not valid JSON"),
        (b'{"a": -Infinity}', "-Infinity is not valid JSON"),
        (b'{"a": 1e999}', "number 1e999 is out of range"),
        (b'{"a": -1e999}', "number -1e999 is out of range"),
        (b'{"a": 1E400}', "number 1E400 is out of range"),
        (b"\xff\xfe", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
        (b'{"a": "\xc3"}', "'utf-8' codec can't decode byte 0xc3 in position 7: invalid continuation byte"),
    ],
)
def test_invalid_json(raw: bytes, reason: str) -> None:
    decoded = decode(message(raw=raw), SETTINGS)
    assert decoded == Decoded([], [Rejection(ErrorClass.INVALID_JSON, {"data": [reason]})], raw)


def test_nan_inside_a_valid_call_rejects_the_message() -> None:
    raw = json.dumps(call(traits={"score": float("nan")})).encode()
    assert b"NaN" in raw
    assert only_rejection(decode(message(raw=raw), SETTINGS)).error_class is ErrorClass.INVALID_JSON


def test_utf16_json_is_invalid() -> None:
    raw = json.dumps(call()).encode("utf-16")
    assert only_rejection(decode(message(raw=raw), SETTINGS)).error_class is ErrorClass.INVALID_JSON


def test_huge_integer_is_accepted_as_json() -> None:
    decoded = decode_doc(call(traits={"big": 10**30}))
    assert decoded.calls[0].call.traits == {"big": 10**30}


@pytest.mark.parametrize("raw", [b"[" * 5000 + b"]" * 5000, b'{"a":' * 5000 + b"1" + b"}" * 5000])
def test_deeply_nested_json_is_rejected_not_raised(raw: bytes) -> None:
    decoded = decode(message(raw=raw), SETTINGS)
    assert only_rejection(decoded).error_class in (ErrorClass.INVALID_JSON, ErrorClass.INVALID_ENVELOPE)


# --- envelope --------------------------------------------------------------------------------------

NOT_A_CALL = {"_schema": ['Expected a call object or {"batch": [...]}.']}
EMPTY_BATCH = {"batch": ["Must be a non-empty list of calls."]}


@pytest.mark.parametrize(
    ("document", "errors"),
    [
        ([call()], NOT_A_CALL),
        ([], NOT_A_CALL),
        ("identify", NOT_A_CALL),
        (42, NOT_A_CALL),
        (None, NOT_A_CALL),
        (True, NOT_A_CALL),
        ({"batch": []}, EMPTY_BATCH),
        ({"batch": {}}, EMPTY_BATCH),
        ({"batch": call()}, EMPTY_BATCH),
        ({"batch": "x"}, EMPTY_BATCH),
        ({"batch": None}, EMPTY_BATCH),
    ],
)
def test_invalid_envelope(document: Any, errors: dict[str, list[str]]) -> None:
    decoded = decode_doc(document)
    assert decoded.calls == []
    assert decoded.rejections == [Rejection(ErrorClass.INVALID_ENVELOPE, errors)]
    assert decoded.data == json.dumps(document).encode()


def test_batch_with_bad_calls_among_good_ones() -> None:
    document = {
        "batch": [
            call(messageId="a"),
            5,
            {"type": "page", "messageId": "c", "userId": "u"},
            call(messageId="d", anonymousId="x", userId=None),
            None,
            {"type": "track", "messageId": "f", "userId": "u"},
        ]
    }
    decoded = decode_doc(document)
    assert [(c.index, c.call.message_id, c.space) for c in decoded.calls] == [(0, "a", "default"), (3, "d", "default")]
    assert decoded.rejections == [
        Rejection(ErrorClass.SCHEMA_VIOLATION, {"_schema": ["A call must be an object."]}, 1),
        Rejection(ErrorClass.SCHEMA_VIOLATION, {"type": ["Must be one of: identify, track."]}, 2),
        Rejection(ErrorClass.SCHEMA_VIOLATION, {"_schema": ["A call must be an object."]}, 4),
        Rejection(ErrorClass.SCHEMA_VIOLATION, {"event": ["A track call needs an event name."]}, 5),
    ]


def test_batch_fixture() -> None:
    decoded = decode(message(fixture("batch_mixed.json")), SPACES)
    assert [(c.index, c.space) for c in decoded.calls] == [(0, "marketing"), (2, "marketing")]
    first, second = (c.call for c in decoded.calls)
    # envelope sentAt and context fill what a call lacks; the call's own values win
    assert first.sent_at == datetime(2026, 3, 1, 9, 0, 10, tzinfo=UTC)
    assert second.sent_at == datetime(2026, 3, 1, 9, 0, 20, tzinfo=UTC)
    assert first.context == {"personas": {"space_id": "spa_marketing_1", "computation_class": "journey_step"}}
    assert second.context == {
        "personas": {"space_id": "spa_marketing_1", "computation_class": "journey_step"},
        "ip": "203.0.113.9",
    }
    assert second.properties == {"audience_key": "vip", "vip": False}
    assert decoded.rejections == [
        Rejection(ErrorClass.SCHEMA_VIOLATION, {"type": ["Must be one of: identify, track."]}, 1),
        Rejection(ErrorClass.SCHEMA_VIOLATION, {"userId": ["A call needs a userId or an anonymousId."]}, 3),
    ]


def test_batch_context_is_merged_shallowly() -> None:
    document = {
        "context": {"personas": {"space_id": "spa_sales"}, "library": {"name": "batch"}},
        "batch": [call(context={"personas": {"computation_key": "k"}})],
    }
    (routed,) = decode(message(document), SPACES).calls
    # the call's own `personas` replaces the envelope's whole: no space_id, so the default space
    assert routed.call.context == {"personas": {"computation_key": "k"}, "library": {"name": "batch"}}
    assert routed.space == "default"


def test_envelope_fields_other_than_sent_at_and_context_are_not_merged() -> None:
    document = {
        "timestamp": "2026-01-01T00:00:00Z",
        "userId": "envelope",
        "batch": [call(userId=None, anonymousId="a")],
    }
    (routed,) = decode_doc(document).calls
    assert routed.call.timestamp is None
    assert routed.call.user_id is None


def test_batch_context_that_is_not_an_object_is_ignored() -> None:
    (routed,) = decode_doc({"context": "x", "batch": [call()]}).calls
    assert routed.call.context == {}


def test_invalid_call_context_in_batch_is_rejected() -> None:
    alone = decode_doc(call(context="bad"))
    assert alone.rejections[0].errors == {"context._schema": ["Invalid input type."]}
    in_batch = decode_doc({"context": {"library": {"name": "x"}}, "batch": [call(context="bad")]})
    assert in_batch.calls == []
    assert in_batch.rejections == [
        Rejection(ErrorClass.SCHEMA_VIOLATION, {"context._schema": ["Invalid input type."]}, 0)
    ]


# --- call schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "errors"),
    [
        ({"type": "page", "messageId": "m", "userId": "u"}, {"type": ["Must be one of: identify, track."]}),
        ({"type": "Identify", "messageId": "m", "userId": "u"}, {"type": ["Must be one of: identify, track."]}),
        ({"messageId": "m", "userId": "u"}, {"type": ["Missing data for required field."]}),
        ({"type": "identify", "userId": "u"}, {"messageId": ["Missing data for required field."]}),
        (call(messageId="   "), {"messageId": ["messageId must not be empty."]}),
        (call(messageId=None), {"messageId": ["Field may not be null."]}),
        (call(messageId="m" * 1025), {"messageId": ["Longer than 1024 characters."]}),
        ({"type": "identify", "messageId": "m"}, {"userId": ["A call needs a userId or an anonymousId."]}),
        (call(userId="", anonymousId="  "), {"userId": ["A call needs a userId or an anonymousId."]}),
        (call(userId=None, anonymousId=None), {"userId": ["A call needs a userId or an anonymousId."]}),
        (call(userId=True), {"userId": ["Not a valid identifier: a non-empty string or an integer."]}),
        (call(userId=1.5), {"userId": ["Not a valid identifier: a non-empty string or an integer."]}),
        (call(userId={"id": 1}), {"userId": ["Not a valid identifier: a non-empty string or an integer."]}),
        (call(anonymousId=["a"]), {"anonymousId": ["Not a valid identifier: a non-empty string or an integer."]}),
        ({"type": "track", "messageId": "m", "userId": "u"}, {"event": ["A track call needs an event name."]}),
        (
            {"type": "track", "messageId": "m", "userId": "u", "event": None},
            {"event": ["A track call needs an event name."]},
        ),
        (
            {"type": "track", "messageId": "m", "userId": "u", "event": ""},
            {"event": ["Length must be between 1 and 1024."]},
        ),
        ({"type": "track", "messageId": "m", "userId": "u", "event": 5}, {"event": ["Not a valid string."]}),
        (
            {"type": "track", "messageId": "m", "userId": "u", "event": "e" * 1025},
            {"event": ["Length must be between 1 and 1024."]},
        ),
        (call(timestamp="yesterday"), {"timestamp": ["Not a valid datetime."]}),
        (call(sentAt=1772352000), {"sentAt": ["Not a valid datetime."]}),
        (call(originalTimestamp="2026-02-30T00:00:00Z"), {"originalTimestamp": ["Not a valid datetime."]}),
        (call(traits=[1, 2]), {"traits": ["Not a valid mapping type."]}),
        (call(traits="vip"), {"traits": ["Not a valid mapping type."]}),
        (call(properties=5), {"properties": ["Not a valid mapping type."]}),
        (call(context="x"), {"context._schema": ["Invalid input type."]}),
        (call(context={"personas": "x"}), {"context.personas._schema": ["Invalid input type."]}),
        (call(context={"personas": {"space_id": 123}}), {"context.personas.space_id": ["Not a valid string."]}),
        (
            call(context={"personas": {"space_id": 1, "computation_key": ["k"]}}),
            {
                "context.personas.space_id": ["Not a valid string."],
                "context.personas.computation_key": ["Not a valid string."],
            },
        ),
    ],
)
def test_schema_violations(document: dict[str, Any], errors: dict[str, list[str]]) -> None:
    assert schema_errors(document) == errors


def test_identify_fixture_is_decoded_exactly() -> None:
    (routed,) = decode(message(fixture("identify_audience.json")), SETTINGS).calls
    assert routed.index == 0
    assert routed.space == "default"
    assert routed.call == Call(
        type="identify",
        message_id="personas_2DW8qLn3bXKkxrXQ0oUQyNmCc9a",
        user_id="u-1001",
        anonymous_id="anon-77",
        event=None,
        timestamp=datetime(2026, 3, 1, 9, 0, 1, tzinfo=UTC),
        sent_at=datetime(2026, 3, 1, 9, 0, 2, tzinfo=UTC),
        original_timestamp=datetime(2026, 3, 1, 9, 0, 1, tzinfo=UTC),
        traits={
            "first_time_shopper": True,
            "email": "ada@example.com",
            "totalRevenue180Days": 450,
            "address": {"city": "Paris", "zip": None},
            "favorite_categories": ["books", "tea"],
            "unknown_trait": None,
        },
        properties={},
        context={
            "library": {"name": "unknown", "version": "unknown"},
            "personas": {
                "computation_class": "audience",
                "computation_id": "aud_1Yyq0ZqZVG6Ui2Q8dRdIGNS2pmL",
                "computation_key": "first_time_shopper",
                "namespace": "spa_w5akhv1XwnGj5j2HVT6NWX",
                "space_id": "spa_w5akhv1XwnGj5j2HVT6NWX",
            },
        },
    )


def test_identifiers_are_stringified_and_stripped() -> None:
    (routed,) = decode_doc(call(messageId=123, userId=0, anonymousId="  a b  ")).calls
    assert (routed.call.message_id, routed.call.user_id, routed.call.anonymous_id) == ("123", "0", "a b")


def test_anonymous_only_call() -> None:
    (routed,) = decode_doc(call(userId="", anonymousId="anon")).calls
    assert (routed.call.user_id, routed.call.anonymous_id) == (None, "anon")


def test_nulls_for_objects_become_empty() -> None:
    (routed,) = decode_doc(call(traits=None, properties=None, context=None)).calls
    assert (routed.call.traits, routed.call.properties, routed.call.context) == ({}, {}, {})


def test_naive_timestamps_are_utc() -> None:
    (routed,) = decode_doc(call(timestamp="2026-03-01T08:00:00", sentAt="2026-03-01T10:00:00+02:00")).calls
    assert routed.call.timestamp == datetime(2026, 3, 1, 8, tzinfo=UTC)
    assert routed.call.sent_at == datetime(2026, 3, 1, 8, tzinfo=UTC)


def test_unknown_top_level_fields_are_ignored() -> None:
    extra = {"channel": "server", "version": 2, "writeKey": "k", "_metadata": {}, "integrations": {"All": False}}
    (routed,) = decode_doc(call(**extra, name="page name", receivedAt="x")).calls
    assert routed.call == Call(type="identify", message_id="m-1", user_id="u-1")


def test_track_keeps_properties_and_traits() -> None:
    (routed,) = decode(message(fixture("track_trait_computed.json")), SETTINGS).calls
    assert routed.call.event == "Trait Computed"
    assert routed.call.traits == {"trait_key": "total_revenue_180_days", "total_revenue_180_days": 450.5}
    assert routed.call.properties == {}
    assert routed.call.user_id is None


# --- routing ---------------------------------------------------------------------------------------


def personas_call(space_id: Any) -> dict[str, Any]:
    return call(context={"personas": {"space_id": space_id}})


@pytest.mark.parametrize(
    ("attributes", "space_id", "expected"),
    [
        ({}, None, "default"),
        ({}, "spa_marketing_1", "marketing"),
        ({}, "spa_marketing_2", "marketing"),
        ({}, "spa_sales", "sales"),
        ({}, "spa_unknown", "default"),
        ({"space": "eu"}, "spa_sales", "eu"),  # the attribute wins over the space_id
        ({"space": "sales"}, None, "sales"),
        ({"space": ""}, "spa_sales", "sales"),  # an empty attribute falls back
        ({"space": ""}, None, "default"),
        ({"other": "x"}, None, "default"),
    ],
)
def test_routing(attributes: dict[str, str], space_id: str | None, expected: str) -> None:
    (routed,) = decode(message(personas_call(space_id), attributes=attributes), SPACES).calls
    assert routed.space == expected


def test_default_space_comes_from_settings() -> None:
    (routed,) = decode(message(call()), Settings(default_space="fallback")).calls
    assert routed.space == "fallback"


@pytest.mark.parametrize("space", ["Bad-Space", "a;drop", "Marketing", "_x", "a b", "a" * 101, "é", "x.y"])
def test_unsafe_space_attribute(space: str) -> None:
    decoded = decode(message({"batch": [call(), call(messageId="2")]}, attributes={"space": space}), SPACES)
    assert decoded.calls == []
    assert decoded.rejections == [
        Rejection(ErrorClass.UNSAFE_SPACE, UNSAFE, 0),
        Rejection(ErrorClass.UNSAFE_SPACE, UNSAFE, 1),
    ]


def test_unsafe_default_space_is_rejected_not_used() -> None:
    rejection = only_rejection(decode(message(call()), Settings(default_space="Bad Space")))
    assert rejection == Rejection(ErrorClass.UNSAFE_SPACE, UNSAFE, 0)


def test_space_attribute_with_trailing_newline_is_unsafe() -> None:
    rejection = only_rejection(decode(message(call(), attributes={"space": "marketing\n"}), SPACES))
    assert rejection.error_class is ErrorClass.UNSAFE_SPACE


def test_route_directly() -> None:
    loaded: Call = CALL_SCHEMA.load(personas_call("spa_sales"))
    assert route(loaded, {}, SPACES) == "sales"
    assert route(loaded, {"space": "x"}, SPACES) == "x"
    assert route(loaded, {"space": "X"}, SPACES) == Rejection(ErrorClass.UNSAFE_SPACE, UNSAFE)


# --- error_paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        (["bad"], {"_schema": ["bad"]}),
        ("bad", {"_schema": ["bad"]}),
        ({}, {}),
        ({"a": ["x"]}, {"a": ["x"]}),
        ({"a": {"b": ["x"], "c": {"d": ["y", "z"]}}}, {"a.b": ["x"], "a.c.d": ["y", "z"]}),
        ({"batch": {0: {"userId": ["x"]}, 3: ["y"]}}, {"batch.0.userId": ["x"], "batch.3": ["y"]}),
        ({"context": {"_schema": ["Invalid input type."]}}, {"context._schema": ["Invalid input type."]}),
        ({"a": [{"b": ["x"]}]}, {"a": ["[{'b': ['x']}]"]}),
        ({"a": "text"}, {"a": ["text"]}),
        ({"a": 5}, {"a": ["5"]}),
    ],
)
def test_error_paths(errors: Any, expected: dict[str, list[str]]) -> None:
    assert error_paths(errors) == expected


def test_error_paths_of_a_real_nested_error() -> None:
    from marshmallow import ValidationError

    with pytest.raises(ValidationError) as info:
        CALL_SCHEMA.load(call(context={"personas": {"space_id": 5, "namespace": []}}, traits=[]))
    assert error_paths(info.value.messages) == {
        "context.personas.space_id": ["Not a valid string."],
        "context.personas.namespace": ["Not a valid string."],
        "traits": ["Not a valid mapping type."],
    }


# --- properties ------------------------------------------------------------------------------------

identifiers = (
    st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["", " ", "u", "m-1"]) | st.text(max_size=5)
)
timestamps = st.none() | st.sampled_from(["2026-03-01T08:00:00Z", "2026-03-01T10:00:00+02:00", "2026-03-01", "x", ""])
objects = (
    st.none()
    | st.dictionaries(st.text(max_size=5), json_documents(max_leaves=5), max_size=3)
    | json_documents(max_leaves=3)
)
personas_contexts = (
    st.fixed_dictionaries(
        {},
        optional={
            "personas": st.none()
            | st.fixed_dictionaries(
                {}, optional={"space_id": st.sampled_from(["spa_sales", "spa_marketing_1", "x"]) | st.integers()}
            )
        },
    )
    | objects
)
call_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["identify", "track", "page", "group", ""]) | st.integers(),
        "messageId": identifiers,
        "userId": identifiers,
        "anonymousId": identifiers,
        "event": st.none() | st.sampled_from(["Audience Entered", "", "🎉"]) | st.integers(),
        "timestamp": timestamps,
        "sentAt": timestamps,
        "originalTimestamp": timestamps,
        "traits": objects,
        "properties": objects,
        "context": personas_contexts,
        "channel": st.text(max_size=3),
    },
)
batch_items = call_like | json_documents(max_leaves=4)
documents = (
    json_documents()
    | call_like
    | st.fixed_dictionaries(
        {"batch": st.lists(batch_items, max_size=6)},
        optional={"sentAt": timestamps, "context": personas_contexts},
    )
)
attributes = st.dictionaries(st.sampled_from(["space", "other"]), st.sampled_from(["", "sales", "Bad", "x", "a;b"]))


def check_accounting(decoded: Decoded, document: Any) -> None:
    envelope = [r for r in decoded.rejections if r.call_index is None]
    if isinstance(document, dict) and isinstance(document.get("batch"), list) and document["batch"]:
        expected = list(range(len(document["batch"])))
    elif isinstance(document, dict) and "batch" not in document:
        expected = [0]
    else:
        assert decoded.calls == []
        assert [r.error_class for r in decoded.rejections] == [ErrorClass.INVALID_ENVELOPE]
        return
    assert envelope == []
    seen = sorted([c.index for c in decoded.calls] + [r.call_index for r in decoded.rejections])
    assert seen == expected
    for routed in decoded.calls:
        assert isinstance(routed.call, Call)
        assert routed.call.message_id
        assert routed.call.user_id or routed.call.anonymous_id
        assert routed.call.type in ("identify", "track")
        assert routed.call.type == "identify" or routed.call.event


@THOROUGH
@given(st.binary(max_size=300))
def test_decode_never_raises_on_bytes(data: bytes) -> None:
    decoded = decode(message(raw=data), SETTINGS)
    assert decoded.data == data
    for rejection in decoded.rejections:
        assert isinstance(rejection.error_class, ErrorClass)


@FAST
@given(st.text(max_size=40))
def test_decode_never_raises_on_any_base64_text(data_b64: str) -> None:
    decoded = decode(message(data_b64=data_b64), SETTINGS)
    assert decoded.calls or decoded.rejections


@THOROUGH
@given(documents, attributes)
def test_every_call_is_routed_or_rejected_exactly_once(document: Any, attrs: dict[str, str]) -> None:
    decoded = decode(message(document, attributes=attrs), SPACES)
    check_accounting(decoded, document)


@FAST
@given(st.lists(call_like, min_size=1, max_size=5), st.integers(1, 400))
def test_oversized_or_accounted(batch: list[dict[str, Any]], limit: int) -> None:
    document = {"batch": batch}
    data = json.dumps(document).encode()
    decoded = decode(message(document), Settings(max_message_bytes=limit))
    if len(data) > limit:
        assert only_rejection(decoded).error_class is ErrorClass.OVERSIZED
    else:
        check_accounting(decoded, document)


def test_base64_helper_round_trip() -> None:
    # the helper used above must produce exactly what Pub/Sub delivers
    assert base64.b64decode(message({"a": 1}).data_b64) == b'{"a": 1}'
    assert messages.SPACE_ATTRIBUTE == "space"


valid_calls = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["identify", "track"]),
        "messageId": st.text(min_size=1, max_size=8).filter(str.strip) | st.integers(0, 10**6),
        "userId": st.text(min_size=1, max_size=8).filter(str.strip),
        "event": st.text(min_size=1, max_size=8),
        "context": st.fixed_dictionaries(
            {
                "personas": st.fixed_dictionaries(
                    {"space_id": st.sampled_from(["spa_sales", "spa_marketing_2", "spa_x"])}
                )
            }
        ),
        "traits": st.dictionaries(st.text(max_size=5), json_documents(max_leaves=4), max_size=3),
    }
)
SPACE_OF = {"spa_sales": "sales", "spa_marketing_2": "marketing", "spa_x": "default"}


@FAST
@given(st.lists(valid_calls, min_size=1, max_size=5), st.sampled_from([None, "", "eu", "Bad"]))
def test_valid_calls_are_routed_by_the_rule(batch: list[dict[str, Any]], attribute: str | None) -> None:
    attrs = {} if attribute is None else {"space": attribute}
    decoded = decode(message({"batch": batch}, attributes=attrs), SPACES)
    if attribute == "Bad":
        assert decoded.calls == []
        assert decoded.rejections == [Rejection(ErrorClass.UNSAFE_SPACE, UNSAFE, i) for i in range(len(batch))]
        return
    assert decoded.rejections == []
    assert [c.index for c in decoded.calls] == list(range(len(batch)))
    for routed, raw in zip(decoded.calls, batch, strict=True):
        expected = attribute or SPACE_OF[raw["context"]["personas"]["space_id"]]
        assert routed.space == expected
        assert routed.call.message_id == str(raw["messageId"]).strip()
        assert routed.call.traits == raw["traits"]


# -- replays keep the original's received_at ----------------------------------------------------------

ORIGINAL = "2026-02-27T08:00:00Z"


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({}, "2026-03-01T09:00:03+00:00"),  # not a replay: the publish time
        ({"original_publish_time": ORIGINAL}, "2026-03-01T09:00:03+00:00"),  # no replay_of: not trusted
        ({"replay_of": "m1", "original_publish_time": ORIGINAL}, "2026-02-27T08:00:00+00:00"),
        ({"replay_of": "m1", "original_publish_time": "2026-02-27T09:00:00+01:00"}, "2026-02-27T08:00:00+00:00"),
        ({"replay_of": "m1"}, "2026-03-01T09:00:03+00:00"),  # older replays carried no time
        ({"replay_of": "m1", "original_publish_time": "yesterday"}, "2026-03-01T09:00:03+00:00"),
        ({"replay_of": "m1", "original_publish_time": "2026-02-27T08:00:00"}, "2026-03-01T09:00:03+00:00"),  # no zone
        ({"replay_of": "m1", "original_publish_time": "2026-03-02T00:00:00Z"}, "2026-03-01T09:00:03+00:00"),  # later
    ],
)
def test_a_replay_is_received_at_its_originals_publish_time(attributes: dict[str, str], expected: str) -> None:
    assert messages.received_at(message(call(), attributes=attributes)).isoformat() == expected


def test_a_call_of_a_batch_alone_in_its_envelope_decodes_to_the_same_call() -> None:
    batch = [call(messageId="a"), call(messageId="b", sentAt="2026-03-01T09:00:00Z"), call(messageId="c", context=None)]
    envelope = {"sentAt": "2026-03-01T08:59:00Z", "context": {"personas": {"space_id": "spa_sales"}}, "batch": batch}
    whole = decode(message(envelope), SPACES)
    parts = messages.batch_of(json.dumps(envelope).encode())
    assert parts is not None
    for index, raw in enumerate(parts[0]):
        alone = decode(message(messages.alone_in_envelope(raw, parts[1])), SPACES)
        assert [(c.call, c.space) for c in alone.calls] == [(whole.calls[index].call, whole.calls[index].space)]
    assert messages.batch_of(b'{"type": "identify"}') is None and messages.batch_of(b"\xff") is None
