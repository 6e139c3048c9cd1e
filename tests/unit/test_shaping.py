"""shaping: routed calls -> pending rows -> rows that fit BigQuery's schema, plus discards."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personas_warehouse import values
from personas_warehouse.errors import DiscardReason
from personas_warehouse.messages import decode
from personas_warehouse.settings import Settings, SpaceConfig
from personas_warehouse.shaping import (
    MAX_DEPTH,
    Cell,
    Discard,
    PendingRow,
    discard_rows,
    event_time,
    fit_rows,
    plan_columns,
    shape,
)
from personas_warehouse.values import BOOL, FLOAT64, INT64, STRING, TIMESTAMP
from schemas.tables import spec
from tests.unit._support import FAST, PUBLISHED, call, fixture, json_documents, message, odd_keys, routed

RECEIVED = "2026-03-01T09:00:03.000000Z"
LOADED = "2026-03-01T09:00:04.000000Z"
IDENTIFY_SCHEMA = {c.name: c.type for c in spec("identifies").columns}
TRACK_SCHEMA = {c.name: c.type for c in spec("tracks").columns}
NO_CONFIG = SpaceConfig()
PERSONAS_CONTEXT = [
    ("context.personas.computation_class", "context_personas_computation_class", "audience"),
    ("context.personas.computation_id", "context_personas_computation_id", "aud_1Yyq0ZqZVG6Ui2Q8dRdIGNS2pmL"),
    ("context.personas.computation_key", "context_personas_computation_key", "first_time_shopper"),
    ("context.personas.namespace", "context_personas_namespace", "spa_w5akhv1XwnGj5j2HVT6NWX"),
    ("context.personas.space_id", "context_personas_space_id", "spa_w5akhv1XwnGj5j2HVT6NWX"),
]


def strings(triples: list[tuple[str, str, str]]) -> list[Cell]:
    return [Cell(key, column, STRING, raw) for key, column, raw in triples]


def shape_doc(document: dict[str, Any], index: int = 0, space: str = "default") -> list[PendingRow]:
    return shape(routed(document, index, space), received_at=PUBLISHED, insert_prefix="pubsub-1")


def only_row(document: dict[str, Any]) -> PendingRow:
    (row,) = shape_doc(document)
    return row


def cells_of(row: PendingRow) -> dict[str, tuple[str, str, Any]]:
    return {c.column: (c.key, c.type, c.raw) for c in row.cells}


# --- shape: identify -------------------------------------------------------------------------------


def test_identify_fixture() -> None:
    (row,) = shape_doc(fixture("identify_audience.json"), index=2, space="marketing")
    assert row == PendingRow(
        kind="identifies",
        table="identifies",
        space="marketing",
        call_index=2,
        insert_id="pubsub-1:2",
        base={
            "id": "personas_2DW8qLn3bXKkxrXQ0oUQyNmCc9a",
            "user_id": "u-1001",
            "anonymous_id": "anon-77",
            "received_at": RECEIVED,
            "sent_at": "2026-03-01T09:00:02.000000Z",
            "original_timestamp": "2026-03-01T09:00:01.000000Z",
            "timestamp": "2026-03-01T09:00:01.000000Z",
        },
        cells=[  # in the order the call sent them (marshmallow would put its declared `personas` first)
            Cell("context.library.name", "context_library_name", STRING, "unknown"),
            Cell("context.library.version", "context_library_version", STRING, "unknown"),
            *strings(PERSONAS_CONTEXT),
            Cell("traits.first_time_shopper", "first_time_shopper", BOOL, True),
            Cell("traits.email", "email", STRING, "ada@example.com"),
            Cell("traits.totalRevenue180Days", "total_revenue180_days", INT64, 450),
            Cell("traits.address.city", "address_city", STRING, "Paris"),  # address.zip is null: dropped
            Cell("traits.favorite_categories", "favorite_categories", STRING, ["books", "tea"]),
        ],
        collisions=[],
    )
    assert row.row_id == "personas_2DW8qLn3bXKkxrXQ0oUQyNmCc9a"
    assert set(row.base) | {"loaded_at"} == set(IDENTIFY_SCHEMA)


@pytest.mark.parametrize(
    ("traits", "expected"),
    [
        ({"firstName": "Ada"}, {"first_name": ("traits.firstName", STRING, "Ada")}),
        ({"age": 36}, {"age": ("traits.age", INT64, 36)}),
        ({"score": 1.5}, {"score": ("traits.score", FLOAT64, 1.5)}),
        ({"vip": False}, {"vip": ("traits.vip", BOOL, False)}),
        ({"seen": "2026-03-01T10:00:00+02:00"}, {"seen": ("traits.seen", TIMESTAMP, "2026-03-01T10:00:00+02:00")}),
        ({"big": 2**64}, {"big": ("traits.big", STRING, 2**64)}),
        ({"tags": ["a", 1]}, {"tags": ("traits.tags", STRING, ["a", 1])}),
        ({"tags": []}, {"tags": ("traits.tags", STRING, [])}),
        ({"nothing": None, "empty": {}, "deep_empty": {"a": {"b": None}}}, {}),
        ({"a": {"b": {"c": 1}}}, {"a_b_c": ("traits.a.b.c", INT64, 1)}),
        ({"Address": {"zipCode": "75001"}}, {"address_zip_code": ("traits.Address.zipCode", STRING, "75001")}),
        ({"id": "x"}, {"_id": ("traits.id", STRING, "x")}),
        ({"userId": "x"}, {"_user_id": ("traits.userId", STRING, "x")}),
        ({"received_at": 1}, {"_received_at": ("traits.received_at", INT64, 1)}),
        ({"loaded_at": 1}, {"_loaded_at": ("traits.loaded_at", INT64, 1)}),
        ({"context_x": 1}, {"_context_x": ("traits.context_x", INT64, 1)}),
        ({"context": {"app": 1}}, {"_context_app": ("traits.context.app", INT64, 1)}),
        ({"event": "e"}, {"event": ("traits.event", STRING, "e")}),  # only a base column of tracks
        ({"1st": 1}, {"_1st": ("traits.1st", INT64, 1)}),
        ({"🎉": 1}, {"_6146299c": ("traits.🎉", INT64, 1)}),
    ],
)
def test_identify_trait_cells(traits: dict[str, Any], expected: dict[str, tuple[str, str, Any]]) -> None:
    row = only_row(call(traits=traits))
    assert cells_of(row) == expected
    assert row.collisions == []


def test_context_columns_are_flattened_with_prefix() -> None:
    row = only_row(call(context={"app": {"version": "1.2", "build": 7}, "ip": None, "locale": "fr-FR"}))
    assert cells_of(row) == {
        "context_app_version": ("context.app.version", STRING, "1.2"),
        "context_app_build": ("context.app.build", INT64, 7),
        "context_locale": ("context.locale", STRING, "fr-FR"),
    }


def test_objects_deeper_than_max_depth_are_json_text() -> None:
    assert MAX_DEPTH == 8
    deep: dict[str, Any] = {"l9": {"l10": 1}}
    for level in range(8, 0, -1):
        deep = {f"l{level}": deep}
    deep["l1"]["empty_at_depth"] = {}
    row = only_row(call(traits=deep))
    column = "_".join(f"l{i}" for i in range(1, 9))
    assert cells_of(row) == {column: ("traits." + ".".join(f"l{i}" for i in range(1, 9)), STRING, {"l9": {"l10": 1}})}
    fitted = fit_rows([row], {**IDENTIFY_SCHEMA, column: STRING}, NO_CONFIG, LOADED)
    assert fitted.rows[0][column] == '{"l9":{"l10":1}}'


# --- shape: collisions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traits", "winner", "losers"),
    [
        (
            {"firstTimeShopper": True, "first_time_shopper": False},
            "traits.first_time_shopper",
            ["traits.firstTimeShopper"],
        ),
        (
            {"first_time_shopper": False, "firstTimeShopper": True},
            "traits.first_time_shopper",
            ["traits.firstTimeShopper"],
        ),
        (
            {"First Time Shopper": 1, "firstTimeShopper": 2, "first_time_shopper": 3},
            "traits.first_time_shopper",
            ["traits.First Time Shopper", "traits.firstTimeShopper"],
        ),
        ({"address": {"city": "Paris"}, "address_city": "Lyon"}, "traits.address_city", ["traits.address.city"]),
        # nobody is already the column name: the smallest key path wins
        ({"a b": 1, "A B": 2}, "traits.A B", ["traits.a b"]),
        ({"aB": 1, "a-b": 2}, "traits.a-b", ["traits.aB"]),
        # base-column clash: `_id` is already the column name
        ({"id": 1, "_id": 2}, "traits._id", ["traits.id"]),
        ({"ID": 1, "id": 2}, "traits.ID", ["traits.id"]),
    ],
)
def test_identify_collisions(traits: dict[str, Any], winner: str, losers: list[str]) -> None:
    row = only_row(call(traits=traits))
    (cell,) = row.cells
    assert cell.key == winner
    assert cell.raw == traits[winner.removeprefix("traits.")]
    assert [c.key for c in row.collisions] == losers
    assert {c.column for c in row.collisions} == {cell.column}


def test_identify_collision_keeps_loser_value_and_type() -> None:
    row = only_row(call(traits={"firstTimeShopper": "yes", "first_time_shopper": False}))
    assert row.cells == [Cell("traits.first_time_shopper", "first_time_shopper", BOOL, False)]
    assert row.collisions == [Cell("traits.firstTimeShopper", "first_time_shopper", STRING, "yes")]


# --- shape: track ----------------------------------------------------------------------------------


def test_track_fixture() -> None:
    tracks, event = shape_doc(fixture("track_audience_entered.json"), index=1)
    base = {
        "id": "personas_2DW8qN8Q6JbJQXv5Zb8d1S7kXgE",
        "user_id": "u-1001",
        "anonymous_id": None,
        "received_at": RECEIVED,
        "sent_at": "2026-03-01T09:00:05.000000Z",
        "original_timestamp": "2026-03-01T09:00:00.000000Z",
        # received_at - (sentAt - originalTimestamp) = 09:00:03 - 5 s
        "timestamp": "2026-03-01T08:59:58.000000Z",
        "event": "audience_entered",
        "event_text": "Audience Entered",
    }
    assert tracks == PendingRow("tracks", "tracks", "default", 1, "pubsub-1:1", base, strings(PERSONAS_CONTEXT), [])
    assert event == PendingRow(
        "track_event",
        "audience_entered",
        "default",
        1,
        "pubsub-1:1",
        base,
        [
            *strings(PERSONAS_CONTEXT),
            Cell("properties.audience_key", "audience_key", STRING, "first_time_shopper"),
            Cell("properties.first_time_shopper", "first_time_shopper", BOOL, True),
        ],
        [],
    )
    assert tracks.base is not event.base
    assert set(base) | {"loaded_at"} == set(TRACK_SCHEMA)


def test_track_traits_are_accepted_like_properties() -> None:
    tracks, event = shape_doc(fixture("track_trait_computed.json"))
    assert (event.table, event.base["event"], event.base["event_text"]) == (
        "trait_computed",
        "trait_computed",
        "Trait Computed",
    )
    assert event.base["user_id"] is None and event.base["anonymous_id"] == "anon-77"
    assert event.base["timestamp"] == "2026-03-01T09:00:00.000000Z"
    assert [c for c in event.cells if not c.key.startswith("context.")] == [
        Cell("traits.trait_key", "trait_key", STRING, "total_revenue_180_days"),
        Cell("traits.total_revenue_180_days", "total_revenue_180_days", FLOAT64, 450.5),
    ]
    assert all(c.key.startswith("context.") for c in tracks.cells)


@pytest.mark.parametrize(
    ("event", "table"),
    [
        ("Audience Entered", "audience_entered"),
        ("Audience Exited", "audience_exited"),
        ("Identifies", "_identifies"),
        ("tracks", "_tracks"),
        ("Users", "_users"),
        ("Discards", "_discards"),
        ("Order #1", "order_1"),
        ("🎉", "_6146299c"),
    ],
)
def test_event_table_and_base_values(event: str, table: str) -> None:
    tracks, event_row = shape_doc({"type": "track", "messageId": "m", "userId": "u", "event": event})
    assert (tracks.table, tracks.kind) == ("tracks", "tracks")
    assert (event_row.table, event_row.kind) == (table, "track_event")
    for row in (tracks, event_row):
        assert (row.base["event"], row.base["event_text"]) == (table, event)


def test_track_properties_clash_with_track_base_columns() -> None:
    _, event = shape_doc(
        {"type": "track", "messageId": "m", "userId": "u", "event": "E", "properties": {"event": 1, "eventText": 2}}
    )
    assert cells_of(event) == {
        "_event": ("properties.event", INT64, 1),
        "_event_text": ("properties.eventText", INT64, 2),
    }


def test_track_properties_win_over_traits_of_the_same_name() -> None:
    tracks, event = shape_doc(
        fixture("track_audience_entered.json") | {"traits": {"first_time_shopper": False, "email": "a@b"}}
    )
    assert Cell("properties.first_time_shopper", "first_time_shopper", BOOL, True) in event.cells
    assert Cell("traits.email", "email", STRING, "a@b") in event.cells
    assert event.collisions == [Cell("traits.first_time_shopper", "first_time_shopper", BOOL, False)]
    assert tracks.collisions == []


def test_track_context_collisions_are_recorded_on_the_event_row_only() -> None:
    document = {
        "type": "track",
        "messageId": "m",
        "userId": "u",
        "event": "E",
        "context": {"app_version": "flat", "app": {"version": "nested"}},
    }
    tracks, event = shape_doc(document)
    # no key equals the column (`context_` is added), so the smallest key path wins
    winner = Cell("context.app.version", "context_app_version", STRING, "nested")
    loser = Cell("context.app_version", "context_app_version", STRING, "flat")
    assert tracks.cells == [winner] and tracks.collisions == []
    assert event.cells == [winner] and event.collisions == [loser]


# --- event time ------------------------------------------------------------------------------------


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # timestamp wins over everything
        (
            {
                "timestamp": "2026-03-01T08:00:00Z",
                "sentAt": "2026-03-01T08:00:10Z",
                "originalTimestamp": "2026-03-01T07:00:00Z",
            },
            utc("2026-03-01T08:00:00"),
        ),
        ({"timestamp": "2026-03-01T10:00:00+02:00"}, utc("2026-03-01T08:00:00")),
        # else received_at (09:00:03) - (sentAt - originalTimestamp)
        ({"sentAt": "2026-03-01T08:00:10Z", "originalTimestamp": "2026-03-01T08:00:00Z"}, utc("2026-03-01T08:59:53")),
        ({"sentAt": "2026-03-01T09:00:00Z", "originalTimestamp": "2026-03-01T09:00:05Z"}, utc("2026-03-01T09:00:08")),
        (
            {"sentAt": "2026-03-01T09:00:00.500Z", "originalTimestamp": "2026-03-01T09:00:00.250Z"},
            utc("2026-03-01T09:00:02.750"),
        ),
        # else originalTimestamp
        ({"originalTimestamp": "2026-03-01T07:00:00Z"}, utc("2026-03-01T07:00:00")),
        # else received_at
        ({"sentAt": "2026-03-01T07:00:00Z"}, PUBLISHED),
        ({}, PUBLISHED),
    ],
)
def test_event_time(fields: dict[str, str], expected: datetime) -> None:
    assert event_time(routed(call(**fields)), PUBLISHED) == expected
    assert only_row(call(**fields)).base["timestamp"] == values.format_timestamp(expected)


@pytest.mark.parametrize(
    "fields",
    [
        {"sentAt": "9999-12-31T23:59:59-01:00"},
        {"sentAt": "9999-12-30T00:00:00Z", "originalTimestamp": "0001-01-02T00:00:00Z"},
        {"traits": {"seen": "9999-12-31T23:59:59-01:00"}},
    ],
)
def test_shape_never_raises_for_a_decoded_call(fields: dict[str, Any]) -> None:
    decoded = decode(message(call(**fields)), Settings())
    for item in decoded.calls:
        shape(item, received_at=PUBLISHED, insert_prefix="p")


def test_base_timestamps_of_early_years_are_zero_padded() -> None:
    row = only_row(call(timestamp="0999-05-01T00:00:00Z"))
    assert row.base["timestamp"] == "0999-05-01T00:00:00.000000Z"


# --- plan_columns ----------------------------------------------------------------------------------


def pending(
    cells: list[tuple[str, str]], table: str = "identifies", collisions: list[tuple[str, str]] = ()
) -> PendingRow:
    base = {"id": "m", "user_id": "u", "anonymous_id": None, "received_at": RECEIVED}
    return PendingRow(
        "identifies",
        table,
        "default",
        0,
        "p:0",
        base,
        [Cell(f"traits.{c}", c, t, raw_for(t)) for c, t in cells],
        [Cell(f"traits.{c}!", c, t, raw_for(t)) for c, t in collisions],
    )


def raw_for(column_type: str) -> Any:
    return {BOOL: True, INT64: 1, FLOAT64: 1.5, STRING: "s", TIMESTAMP: "2026-03-01T08:00:00Z"}[column_type]


def test_plan_first_type_wins_and_existing_columns_are_skipped() -> None:
    rows = [pending([("a", INT64), ("b", STRING)]), pending([("a", STRING), ("c", BOOL), ("b", FLOAT64)])]
    schema = {**IDENTIFY_SCHEMA, "b": TIMESTAMP}
    assert plan_columns(rows, schema, NO_CONFIG, 5000) == {"a": INT64, "c": BOOL}


def test_plan_respects_column_budget() -> None:
    rows = [pending([("a", INT64), ("b", STRING), ("c", BOOL), ("d", BOOL)])]
    budget = len(IDENTIFY_SCHEMA) + 2
    assert plan_columns(rows, IDENTIFY_SCHEMA, NO_CONFIG, budget) == {"a": INT64, "b": STRING}
    assert plan_columns(rows, IDENTIFY_SCHEMA, NO_CONFIG, len(IDENTIFY_SCHEMA)) == {}
    full = {**IDENTIFY_SCHEMA, "x": STRING, "y": STRING}
    assert plan_columns(rows, full, NO_CONFIG, len(IDENTIFY_SCHEMA)) == {}


def test_plan_never_plans_disabled_columns() -> None:
    config = SpaceConfig(
        disabled_columns={"*": frozenset({"a"}), "identifies": frozenset({"b"}), "other": frozenset({"c"})}
    )
    rows = [pending([("a", INT64), ("b", STRING), ("c", BOOL)])]
    assert plan_columns(rows, IDENTIFY_SCHEMA, config, 5000) == {"c": BOOL}
    # disabled columns do not use the budget
    assert plan_columns(rows, IDENTIFY_SCHEMA, config, len(IDENTIFY_SCHEMA) + 1) == {"c": BOOL}


def test_plan_ignores_collisions() -> None:
    rows = [pending([], collisions=[("a", INT64)])]
    assert plan_columns(rows, IDENTIFY_SCHEMA, NO_CONFIG, 5000) == {}


# --- fit_rows --------------------------------------------------------------------------------------


def discard(
    column: str, column_type: str | None, key: str, raw: Any, reason: DiscardReason, table: str = "identifies"
) -> Discard:
    return Discard("default", table, column, column_type, "m", key, raw, reason, RECEIVED)


def test_fit_converts_and_records_what_does_not_fit() -> None:
    row = PendingRow(
        "identifies",
        "identifies",
        "default",
        3,
        "p:3",
        {"id": "m", "user_id": "u", "anonymous_id": None, "received_at": RECEIVED, "sent_at": None},
        [
            Cell("traits.n", "n", INT64, 7),  # into FLOAT64: converted
            Cell("traits.f", "f", FLOAT64, 2.0),  # into INT64: converted
            Cell("traits.flag", "flag", BOOL, True),  # into INT64: type conflict
            Cell("traits.s", "s", INT64, 5),  # into STRING: converted
            Cell("traits.tags", "tags", STRING, ["a", 1]),  # array: JSON text
            Cell("traits.t", "t", TIMESTAMP, "2026-03-01T10:00:00+02:00"),
            Cell("traits.bad_t", "bad_t", STRING, "soon"),  # into TIMESTAMP: type conflict
            Cell("traits.new", "new", STRING, "x"),  # no column (over the budget)
            Cell("traits.off", "off", STRING, "x"),  # disabled: skipped
        ],
        [
            Cell("traits.sS", "s", STRING, "lost"),
            Cell("traits.offOff", "off", STRING, "x"),  # disabled: skipped
            Cell("traits.gone", "gone", INT64, 1),  # no column at all
        ],
    )
    schema = {
        **IDENTIFY_SCHEMA,
        "n": FLOAT64,
        "f": INT64,
        "flag": INT64,
        "s": STRING,
        "tags": STRING,
        "t": TIMESTAMP,
        "bad_t": TIMESTAMP,
        "off": STRING,
    }
    config = SpaceConfig(disabled_columns={"identifies": frozenset({"off"})})
    fitted = fit_rows([row], schema, config, LOADED)
    assert fitted.rows == [
        {
            "id": "m",
            "user_id": "u",
            "received_at": RECEIVED,
            "loaded_at": LOADED,
            "n": 7.0,
            "f": 2,
            "s": "5",
            "tags": '["a",1]',
            "t": "2026-03-01T08:00:00.000000Z",
        }
    ]
    assert type(fitted.rows[0]["n"]) is float and type(fitted.rows[0]["f"]) is int
    assert fitted.insert_ids == ["p:3"]
    assert fitted.discards == [
        discard("flag", INT64, "traits.flag", True, DiscardReason.TYPE_CONFLICT),
        discard("bad_t", TIMESTAMP, "traits.bad_t", "soon", DiscardReason.TYPE_CONFLICT),
        discard("new", None, "traits.new", "x", DiscardReason.COLUMN_LIMIT),
        discard("s", STRING, "traits.sS", "lost", DiscardReason.NAME_COLLISION),
        discard("gone", None, "traits.gone", 1, DiscardReason.NAME_COLLISION),
    ]


def test_fit_with_table_specific_and_all_tables_disabling() -> None:
    rows = [pending([("a", INT64), ("b", INT64)], table="audience_entered"), pending([("a", INT64), ("b", INT64)])]
    config = SpaceConfig(disabled_columns={"*": frozenset({"a"}), "audience_entered": frozenset({"b"})})
    fitted = fit_rows(rows, {**TRACK_SCHEMA, "a": INT64, "b": INT64}, config, LOADED)
    # `a` is disabled everywhere, `b` only in audience_entered; anonymous_id is None, so absent
    assert [sorted(r) for r in fitted.rows] == [
        ["id", "loaded_at", "received_at", "user_id"],
        ["b", "id", "loaded_at", "received_at", "user_id"],
    ]
    assert fitted.discards == []


def test_fit_keeps_row_order_and_insert_ids() -> None:
    rows = [pending([]), pending([])]
    rows[1].insert_id = "p:1"
    fitted = fit_rows(rows, IDENTIFY_SCHEMA, NO_CONFIG, LOADED)
    assert fitted.insert_ids == ["p:0", "p:1"]
    assert all(r["loaded_at"] == LOADED for r in fitted.rows)


def test_identify_end_to_end_with_type_conflict() -> None:
    row = only_row(call(traits={"age": "thirty", "vip": 1, "firstTimeShopper": True, "first_time_shopper": False}))
    schema = {**IDENTIFY_SCHEMA, "age": INT64, "vip": BOOL}
    new = plan_columns([row], schema, NO_CONFIG, 5000)
    assert new == {"first_time_shopper": BOOL}
    fitted = fit_rows([row], {**schema, **new}, NO_CONFIG, LOADED)
    assert fitted.rows[0] == {
        "id": "m-1",
        "user_id": "u-1",
        "received_at": RECEIVED,
        "timestamp": RECEIVED,
        "loaded_at": LOADED,
        "first_time_shopper": False,
    }
    assert fitted.discards == [
        Discard(
            "default", "identifies", "age", INT64, "m-1", "traits.age", "thirty", DiscardReason.TYPE_CONFLICT, RECEIVED
        ),
        Discard("default", "identifies", "vip", BOOL, "m-1", "traits.vip", 1, DiscardReason.TYPE_CONFLICT, RECEIVED),
        Discard(
            "default",
            "identifies",
            "first_time_shopper",
            BOOL,
            "m-1",
            "traits.firstTimeShopper",
            True,
            DiscardReason.NAME_COLLISION,
            RECEIVED,
        ),
    ]


# --- discards --------------------------------------------------------------------------------------


def test_discard_row_and_insert_id() -> None:
    item = Discard(
        "s", "identifies", "tags", INT64, "m-1", "traits.tags", ["é", None], DiscardReason.TYPE_CONFLICT, RECEIVED
    )
    assert item.to_row(LOADED) == {
        "table_name": "identifies",
        "column_name": "tags",
        "column_type": INT64,
        "row_id": "m-1",
        "original_key": "traits.tags",
        "column_value": '["é",null]',
        "reason": "type_conflict",
        "received_at": RECEIVED,
        "loaded_at": LOADED,
    }
    assert set(item.to_row(LOADED)) == spec("discards").column_names
    assert len(item.insert_id) == 40
    assert (
        item.insert_id
        == Discard("other", "identifies", "x", None, "m-1", "traits.tags", 0, DiscardReason.COLUMN_LIMIT, "").insert_id
    )
    assert (
        item.insert_id
        != Discard("s", "identifies", "tags", INT64, "m-2", "traits.tags", 1, DiscardReason.TYPE_CONFLICT, "").insert_id
    )
    fitted = discard_rows([item, item], LOADED)
    assert fitted.rows == [item.to_row(LOADED)] * 2
    assert fitted.insert_ids == [item.insert_id] * 2
    assert fitted.discards == []


def test_discards_of_one_row_have_distinct_insert_ids() -> None:
    row = only_row(call(traits={"a.b": 1, "a": {"b": 2}, "a_b": 3}))
    assert [c.key for c in row.collisions] == ["traits.a.b", "traits.a.b"]
    fitted = fit_rows([row], {**IDENTIFY_SCHEMA, "a_b": INT64}, NO_CONFIG, LOADED)
    assert sorted(d.raw for d in fitted.discards) == [1, 2]
    ids = [d.insert_id for d in fitted.discards]
    assert len(set(ids)) == len(ids)


# --- properties ------------------------------------------------------------------------------------

TYPES = [BOOL, INT64, FLOAT64, STRING, TIMESTAMP]
SMALL = settings(FAST, max_examples=50)
trait_values = json_documents(keys=odd_keys, max_leaves=12) | st.sampled_from(["2026-03-01T08:00:00Z", 2**64, 1.0, 0])
traits_strategy = st.dictionaries(odd_keys, trait_values, max_size=8)


def leaves(obj: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every non-null value that must be stored somewhere: scalars, arrays, non-empty objects at max depth."""
    out = []
    for key, value in obj.items():
        here = (*path, key)
        if value is None:
            continue
        if isinstance(value, dict):
            if len(here) < MAX_DEPTH:
                out.extend(leaves(value, here))
            elif value:
                out.append((here, value))
        else:
            out.append((here, value))
    return out


def fingerprint(key: str, raw: Any) -> tuple[str, str]:
    return key, json.dumps(raw, sort_keys=True)


@FAST
@given(traits_strategy, st.data())
def test_nothing_is_silently_lost(traits: dict[str, Any], data: st.DataObject) -> None:
    row = only_row(call(traits=traits))
    expected = Counter(fingerprint(".".join(("traits", *p)), v) for p, v in leaves(traits))
    shaped = Counter(fingerprint(c.key, c.raw) for c in row.cells + row.collisions if c.key.startswith("traits."))
    assert shaped == expected

    columns = sorted({c.column for c in row.cells + row.collisions})
    existing = {c: data.draw(st.sampled_from(TYPES), label=c) for c in columns if data.draw(st.booleans())}
    disabled = {c for c in columns if data.draw(st.integers(0, 5)) == 0}
    split = data.draw(st.sets(st.sampled_from(columns))) if columns else set()
    config = SpaceConfig(
        disabled_columns={
            "*": frozenset(disabled & split),
            "identifies": frozenset(disabled - split),
            "tracks": frozenset(columns),
        }
    )
    schema = {**IDENTIFY_SCHEMA, **existing}
    budget = data.draw(st.integers(len(schema), len(schema) + len(columns)))

    new = plan_columns([row], schema, config, budget)
    assert not set(new) & set(schema)
    assert not set(new) & disabled
    assert len(schema) + len(new) <= budget
    first_type = {}
    for cell in row.cells:
        first_type.setdefault(cell.column, cell.type)
    assert all(first_type[c] == t for c, t in new.items())

    full = {**schema, **new}
    fitted = fit_rows([row], full, config, LOADED)
    (out,) = fitted.rows
    assert set(out) <= set(full)
    assert not set(out) & disabled
    assert {k: v for k, v in out.items() if k in IDENTIFY_SCHEMA} == {
        **{k: v for k, v in row.base.items() if v is not None},
        "loaded_at": LOADED,
    }

    remaining = Counter((d.key, json.dumps(d.raw, sort_keys=True), d.reason) for d in fitted.discards)
    for d in fitted.discards:
        assert d.column not in disabled
        assert (d.table, d.row_id, d.received_at) == ("identifies", "m-1", RECEIVED)
        assert d.column_type == full.get(d.column)

    def take(cell: Cell, reason: DiscardReason) -> None:
        entry = (cell.key, json.dumps(cell.raw, sort_keys=True), reason)
        assert remaining[entry] > 0, (cell, reason)
        remaining[entry] -= 1

    for cell in row.cells:
        if cell.column in disabled:
            continue
        if cell.column not in full:
            take(cell, DiscardReason.COLUMN_LIMIT)
            continue
        value = values.convert(cell.raw, full[cell.column])
        if value is values.NOT_CONVERTIBLE:
            take(cell, DiscardReason.TYPE_CONFLICT)
        else:
            assert out[cell.column] == value
    for cell in row.collisions:
        if cell.column not in disabled:
            take(cell, DiscardReason.NAME_COLLISION)
    assert +remaining == Counter()


@SMALL
@given(traits_strategy, traits_strategy, st.sampled_from(["Audience Entered", "Identifies", "🎉", "aB " * 341]))
def test_track_rows_account_for_every_value(properties: dict[str, Any], traits: dict[str, Any], name: str) -> None:
    document = {
        "type": "track",
        "messageId": "m",
        "anonymousId": "a",
        "event": name,
        "properties": properties,
        "traits": traits,
    }
    tracks, event = shape_doc(document)
    expected = Counter(fingerprint(".".join(("properties", *p)), v) for p, v in leaves(properties))
    expected += Counter(fingerprint(".".join(("traits", *p)), v) for p, v in leaves(traits))
    assert Counter(fingerprint(c.key, c.raw) for c in event.cells + event.collisions) == expected
    assert tracks.cells == [] and tracks.collisions == []
    assert len({c.column for c in event.cells}) == len(event.cells)
    assert not {c.column for c in event.cells} & set(TRACK_SCHEMA)
    assert event.table == event.base["event"] and len(event.table) <= 1024
    for cell in event.cells + event.collisions:
        assert cell.type == values.infer(cell.raw)[0]


moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@FAST
@given(st.none() | moments, st.none() | moments, st.none() | moments, moments)
def test_event_time_rule(
    timestamp: datetime | None, sent_at: datetime | None, original: datetime | None, received: datetime
) -> None:
    fields = {
        name: value.isoformat()
        for name, value in (("timestamp", timestamp), ("sentAt", sent_at), ("originalTimestamp", original))
        if value is not None
    }
    if timestamp is not None:
        expected = timestamp
    elif sent_at is not None and original is not None:
        expected = received - (sent_at - original)
    else:
        expected = original or received
    assert event_time(routed(call(**fields)), received) == expected
