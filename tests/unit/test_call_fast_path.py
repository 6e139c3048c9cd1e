"""schemas.calls.common_call, the plain-Python check of the common call shape, against CALL_SCHEMA (the
definition): on generated calls, hostile ones included, the fast path never accepts what the schema
refuses, and what it accepts is the Call the schema builds (timestamps with the same offset too)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from schemas.calls import CALL_SCHEMA, MAX_EVENT_LENGTH, MAX_ID_LENGTH, Call, common_call, load_call
from tests.bench.bench_ingest import personas_identify
from tests.unit._support import fixture, json_documents, json_scalars

MANY = settings(max_examples=1000, deadline=None)
TIMESTAMP_FIELDS = ("timestamp", "sent_at", "original_timestamp")

# --- what the schema says, and what the fast path says -------------------------------------------------


def by_schema(raw: dict[str, Any]) -> Call | dict[str, Any]:
    """The schema's Call, or its error messages."""
    try:
        loaded: Call = CALL_SCHEMA.load(raw)
    except ValidationError as exc:
        return {"errors": exc.messages}
    return loaded


def assert_same_call(fast: Call, full: Call | dict[str, Any]) -> None:
    assert isinstance(full, Call), f"the fast path accepted a call the schema refuses: {full}"
    assert fast == full
    assert vars(fast) == vars(full)  # every field set, and nothing else
    # == ignores the order of keys; what is made from them does not (columns, discards, their insert ids)
    assert key_order(vars(fast)) == key_order(vars(full))
    for name in TIMESTAMP_FIELDS:  # == compares instants: the offsets must match as well
        mine, theirs = getattr(fast, name), getattr(full, name)
        assert (mine is None) == (theirs is None)
        if mine is not None:
            assert (mine.utcoffset(), mine.tzinfo) == (theirs.utcoffset(), theirs.tzinfo)


def key_order(value: Any) -> Any:
    """The keys of every object in `value`, in order, nested as the objects are."""
    if isinstance(value, dict):
        return [(key, key_order(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [key_order(item) for item in value]
    return None


# --- generated calls --------------------------------------------------------------------------------

odd_values = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.lists(json_scalars, max_size=2)
    | st.dictionaries(st.text(max_size=3), json_scalars, max_size=2)
)
identifiers = (
    st.sampled_from(["u-1", " m-1 ", "", " ", "\u00a0", "\t\n", "x" * MAX_ID_LENGTH, " " + "x" * MAX_ID_LENGTH])
    | st.sampled_from(["x" * (MAX_ID_LENGTH + 1), "é" * (MAX_ID_LENGTH + 1)])
    | st.text(max_size=6)
    | odd_values
)
events = (
    st.sampled_from(["Audience Entered", "", " ", "x" * MAX_EVENT_LENGTH, "x" * (MAX_EVENT_LENGTH + 1)])
    | st.text(max_size=6)
    | odd_values
)
fixed_offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59)
)
timestamp_texts = st.sampled_from(
    [
        "2026-11-01T10:00:00.123Z",
        "2026-11-01T10:00:00Z",
        "2026-11-01T10:00:00z",
        "2026-11-01t10:00:00Z",
        "2026-11-01T10:00:00+02:00",
        "2026-11-01T10:00:00-0230",
        "2026-11-01T10:00:00+05:30:15",
        "2026-11-01T10:00:00.1234567Z",
        "2026-11-01T10:00:00,5Z",
        "2026-11-01T10:00",
        "2026-11-01 10:00:00",
        "2026-11-01T10:00:00",
        "2026-11-01",
        "20261101T100000Z",
        "2026-W44-7",
        "0001-01-01T00:00:00+01:00",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59-01:00",
        "9999-12-31T23:59:59.999999Z",
        "2026-02-30T00:00:00Z",
        "2026-11-01T24:00:00Z",
        "2026-11-01T10:00:00+24:00",
        "2026-11-01T10:00:00 Z",
        " 2026-11-01T10:00:00Z",
        "",
        "now",
        "１２３４-01-01",
    ]
) | st.builds(
    lambda moment, sep, spec: moment.isoformat(sep=sep, timespec=spec),
    st.datetimes(timezones=st.none() | st.just(UTC) | fixed_offsets),
    st.sampled_from(["T", " "]),
    st.sampled_from(["auto", "hours", "minutes", "seconds", "milliseconds", "microseconds"]),
)
timestamps = timestamp_texts | odd_values | st.text(max_size=8)
objects = st.none() | st.dictionaries(st.text(max_size=6), json_documents(max_leaves=5), max_size=4) | odd_values
PERSONAS_FIELDS = ("computation_class", "computation_id", "computation_key", "namespace", "space_id")
personas_fields = st.sampled_from([*PERSONAS_FIELDS, "other"])
personas = (
    st.fixed_dictionaries({}, optional={name: st.text(max_size=5) | odd_values for name in PERSONAS_FIELDS})
    | st.dictionaries(personas_fields, st.text(max_size=5) | odd_values, max_size=6)
    | odd_values
)
contexts = (
    st.none()
    | st.fixed_dictionaries(
        {}, optional={"personas": personas, "library": objects, "ip": st.text(max_size=5), "": odd_values}
    )
    | odd_values
)
HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "type": st.sampled_from(["identify", "track", "page", "Identify", ""]) | odd_values,
    "messageId": identifiers,
    "userId": identifiers,
    "anonymousId": identifiers,
    "event": events,
    "timestamp": timestamps,
    "sentAt": timestamps,
    "originalTimestamp": timestamps,
    "traits": objects,
    "properties": objects,
    "context": contexts,
    "integrations": objects,
    "message_id": identifiers,
    "channel": odd_values,
}
free_calls = st.fixed_dictionaries({}, optional=HOSTILE)
common_calls = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["identify", "track"]),
        "messageId": st.text(min_size=1, max_size=8).filter(str.strip),
        "userId": st.text(min_size=1, max_size=8).filter(str.strip),
        "event": st.text(min_size=1, max_size=20),
        "timestamp": st.datetimes(timezones=st.just(UTC) | fixed_offsets).map(datetime.isoformat),
    },
    optional={
        "sentAt": st.datetimes(timezones=st.none() | st.just(UTC)).map(datetime.isoformat),
        "traits": st.dictionaries(st.text(max_size=6), json_documents(max_leaves=5), max_size=4),
        "context": st.fixed_dictionaries(
            {"personas": st.dictionaries(personas_fields, st.text(max_size=5) | st.none(), max_size=6)}
        ),
    },
)


def _perturbed(raw: dict[str, Any], changes: dict[str, Any], removed: list[str]) -> dict[str, Any]:
    return {k: v for k, v in {**raw, **changes}.items() if k not in removed}


# A well-formed call with one or two fields made hostile (or removed): the calls the fast path must
# tell apart from the common shape. Free-form calls alone would rarely come close enough to it.
perturbed_calls = st.builds(
    _perturbed,
    common_calls,
    st.lists(st.sampled_from(sorted(HOSTILE)), min_size=1, max_size=2, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: HOSTILE[k] for k in keys})
    ),
    st.lists(st.sampled_from(sorted(HOSTILE)), max_size=2, unique=True),
)
calls = perturbed_calls | free_calls


# Edges each property must see whatever hypothesis draws: the one field that makes a call unusual.
EDGES = [
    {"messageId": "x" * (MAX_ID_LENGTH + 1)},
    {"userId": " " + "x" * MAX_ID_LENGTH},
    {"messageId": "\u00a0"},
    {"userId": 7, "anonymousId": None},
    {"event": ""},
    {"type": "track", "event": None},
    {"timestamp": "0001-01-01T00:00:00+01:00"},
    {"sentAt": "9999-12-31T23:59:59-01:00"},
    {"originalTimestamp": "2026-11-01T10:00:00"},
    {"timestamp": "2026-02-30T00:00:00Z"},
    {"timestamp": 1767225600},
    {"traits": None, "properties": []},
    {"context": {"personas": {"space_id": 5}}},
    {"context": {"personas": None, "library": []}},
    {"context": []},
]


def with_edges(test: Any) -> Any:
    for change in EDGES:
        test = example({"type": "identify", "messageId": "m", "userId": "u", **change})(test)
    return test


@MANY
@given(calls)
@with_edges
def test_the_fast_path_accepts_nothing_the_schema_refuses_and_builds_the_same_call(raw: dict[str, Any]) -> None:
    fast = common_call(raw)
    if fast is not None:
        assert_same_call(fast, by_schema(raw))


@MANY
@given(calls)
@with_edges
def test_load_call_answers_as_the_schema_does(raw: dict[str, Any]) -> None:
    full = by_schema(raw)
    try:
        loaded = load_call(raw)
    except ValidationError as exc:
        assert full == {"errors": exc.messages}
        return
    assert_same_call(loaded, full)


@settings(max_examples=300, deadline=None)
@given(common_calls)
def test_the_common_shape_takes_the_fast_path(raw: dict[str, Any]) -> None:
    """So that the properties above are not vacuous: a well-formed call is the fast path's to load."""
    fast = common_call(raw)
    assert fast is not None
    assert_same_call(fast, by_schema(raw))


@pytest.mark.parametrize(
    "raw",
    [
        personas_identify(7),
        fixture("identify_audience.json"),
        fixture("track_audience_entered.json"),
        fixture("track_trait_computed.json"),
    ],
)
def test_personas_calls_take_the_fast_path(raw: dict[str, Any]) -> None:
    fast = common_call(raw)
    assert fast is not None
    assert_same_call(fast, by_schema(raw))


@pytest.mark.parametrize(
    "change",
    [
        {"messageId": "x" * (MAX_ID_LENGTH + 1)},
        {"messageId": " "},
        {"messageId": 5},
        {"userId": None, "anonymousId": ""},
        {"type": "track"},  # without an event
        {"event": ""},
        {"timestamp": "0001-01-01T00:00:00+01:00"},
        {"sentAt": "2026-02-30T00:00:00Z"},
        {"traits": []},
        {"context": {"personas": {"space_id": 5}}},
        {"context": {"personas": []}},
    ],
)
def test_unusual_calls_are_left_to_the_schema(change: dict[str, Any]) -> None:
    assert common_call({"type": "identify", "messageId": "m", "userId": "u", **change}) is None
