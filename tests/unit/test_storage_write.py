"""The Storage Write API writer (BIGQUERY_WRITER=storage_write) through the real Warehouse adapter and
ingest(), over fakes as strict as BigQuery (tests.write_fakes.FakeWriteClient for the Write API, sharing
the tables of tests.fakes.StrictFakeBigQuery): rows durable before return, typed as BigQuery reads proto
rows, row errors back to exactly their rows, a table whose columns changed read again, transient errors
retried within the deadline and then TransientError, a request BigQuery calls malformed raised at once,
requests split within the Write API's 10 MB, and connections kept per table. The Write API's lag behind
a new column: tests/unit/test_schema_lag.py."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud.bigquery_storage_v1 import types

import personas_warehouse.ingest as ingest_module
from personas_warehouse import naming
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.errors import RequestRefused, TransientError
from personas_warehouse.ingest import ingest
from personas_warehouse.messages import PubSubMessage
from personas_warehouse.settings import ConfigError, Settings, load_settings
from personas_warehouse.writers.insert_all import InsertAllWriter
from personas_warehouse.writers.storage_write import (
    APPEND_BYTES_PER_REQUEST,
    CONNECTION_SECONDS,
    MIN_CONNECTION_LIFE,
    WRITE_API_MAX_REQUEST_BYTES,
    StorageWriteWriter,
    build_layout,
    extra_fields,
    timestamp_micros,
)
from schemas.tables import spec
from tests.fakes import FakeClock, StrictFakeBigQuery
from tests.write_fakes import INTERNAL, INVALID_ARGUMENT, UNAVAILABLE, WRITE_API_LIMIT_BYTES, FakeWriteClient

DATASET = "personas_default"
IDENTIFIES = "personas-test.personas_default.identifies"
PUBLISHED = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(ingest_deadline_seconds=30, bigquery_writer="storage_write")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bq(clock: FakeClock) -> StrictFakeBigQuery:
    return StrictFakeBigQuery(clock=clock)


@pytest.fixture
def write(bq: StrictFakeBigQuery) -> FakeWriteClient:
    return FakeWriteClient(bq)


@pytest.fixture
def writer(bq: StrictFakeBigQuery, write: FakeWriteClient, clock: FakeClock) -> StorageWriteWriter:
    return StorageWriteWriter(write, bq.project, sleep=clock.advance, clock=clock)  # type: ignore[arg-type]


@pytest.fixture
def warehouse(bq: StrictFakeBigQuery, writer: StorageWriteWriter, clock: FakeClock) -> Warehouse:
    """As app.py builds it: the Write API, then insertAll for the rows whose columns it does not see yet."""
    insert_all = InsertAllWriter(bq, sleep=clock.advance)  # type: ignore[arg-type]
    return Warehouse(bq, writers=[writer, insert_all], sleep=clock.advance)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def deadline_on_the_fake_clock(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    monkeypatch.setattr(ingest_module, "Deadline", lambda seconds: Deadline(seconds, clock=clock))


def message(doc: Any, message_id: str = "m-1") -> PubSubMessage:
    data = json.dumps(doc).encode()
    return PubSubMessage(message_id, base64.b64encode(data).decode(), PUBLISHED, {}, "sub")


def identify(message_id: str = "c-1", **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": "u123", "messageId": message_id, "traits": traits}


def ensure(warehouse: Warehouse, clock: FakeClock, **columns: str) -> None:
    warehouse.ensure_table(DATASET, "identifies", spec("identifies"), Deadline(30, clock=clock))
    if columns:
        warehouse.add_columns(DATASET, "identifies", columns, Deadline(30, clock=clock))


# -- the fake refuses what BigQuery refuses ------------------------------------------------------------


def test_fake_write_client_is_strict(
    bq: StrictFakeBigQuery, write: FakeWriteClient, warehouse: Warehouse, clock: FakeClock
) -> None:
    ensure(warehouse, clock)
    layout = build_layout({"id": "STRING", "nope": "STRING"})
    stream = "projects/personas-test/datasets/personas_default/tables/identifies/streams/_default"

    def request(row: dict[str, Any], descriptor: Any = layout.descriptor, **fields: Any) -> types.AppendRowsRequest:
        proto = types.AppendRowsRequest.pb()(**fields)
        proto.proto_rows.writer_schema.proto_descriptor.CopyFrom(descriptor)
        proto.proto_rows.rows.serialized_rows.append(layout.encode(row))
        return types.AppendRowsRequest.wrap(proto)

    def append(*requests: types.AppendRowsRequest) -> list[types.AppendRowsResponse]:
        return list(write.append_rows(iter(requests), retry=None, timeout=5))

    with pytest.raises(gexc.NotFound, match="Stream not found"):
        append(request({"id": "x"}))
    with pytest.raises(gexc.InvalidArgument, match="too large"):
        append(request({"id": "x" * 11_000_000}, write_stream=stream))
    [refused] = append(request({"id": "x"}, write_stream=stream))  # refused in its answer, as BigQuery does
    assert refused.error.code == INVALID_ARGUMENT
    assert refused.error.message.startswith("Input schema has more fields than BigQuery schema, extra fields: 'nope'")
    assert extra_fields(refused.error.message, refused.error.details) == ("nope",)
    assert extra_fields("", refused.error.details) == ("nope",)  # from the StorageError detail alone
    with pytest.raises(gexc.InvalidArgument, match="mismatched"):
        append(request({"id": "x"}, build_layout({"id": "INT64"}).descriptor, write_stream=stream))
    without_schema = types.AppendRowsRequest(write_stream=stream)
    with pytest.raises(gexc.InvalidArgument, match="Writer schema is missing"):
        append(without_schema)
    assert write.rows == {}


# -- rows land, typed, durable before return -----------------------------------------------------------


def test_rows_land_typed_and_durable_before_return(
    write: FakeWriteClient, warehouse: Warehouse, clock: FakeClock
) -> None:
    ensure(warehouse, clock, n="INT64", f="FLOAT64", b="BOOL", t="TIMESTAMP", s="STRING")
    rows = [
        {"id": "a", "n": 2**63 - 1, "f": 0.1, "b": False, "t": "2026-11-01T10:00:00.000001Z", "s": ""},
        {"id": "b", "n": None, "loaded_at": "1969-12-31T23:59:59.999999Z"},
    ]
    assert warehouse.insert(DATASET, "identifies", rows, ["a", "b"], Deadline(30, clock=clock)) == []
    first, second = write.rows[IDENTIFIES]  # committed only as the writer read the response
    assert first == {"id": "a", "n": 2**63 - 1, "f": 0.1, "b": False, "t": 1_793_527_200_000_001, "s": ""}
    assert second == {"id": "b", "loaded_at": -1}  # None: no field, which BigQuery stores as NULL
    assert [n for _, n, _ in write.requests] == [2]


def test_timestamps_are_microseconds_since_the_epoch() -> None:
    assert timestamp_micros("1970-01-01T00:00:00.000000Z") == 0
    assert timestamp_micros("2026-11-01T12:00:00+02:00") == timestamp_micros("2026-11-01T10:00:00Z")
    assert timestamp_micros("0001-01-01T00:00:00.000000Z") == -62_135_596_800_000_000  # BigQuery's minimum
    assert timestamp_micros(datetime(2026, 1, 1, tzinfo=UTC)) == 1_767_225_600_000_000


def test_names_from_the_naming_rule_are_proto_field_names(
    write: FakeWriteClient, warehouse: Warehouse, clock: FakeClock
) -> None:
    """Every column name the naming rule makes is a valid proto identifier, also the hostile ones (and two
    names that share a default JSON name, which a descriptor pool refuses unless json_name is set)."""
    keys = ["Robert'); DROP TABLE users;--", "_PARTITIONTIME", "1st", "имя", "firstName", "x" * 400, "a_b", "a__b"]
    names = [naming.column_name((k,)) for k in keys] + ["a__b", "_a", "__a", "from", "class", "none"]
    ensure(warehouse, clock, **dict.fromkeys(names, "STRING"))
    row = {"id": "r", **{name: name for name in names}}
    assert warehouse.insert(DATASET, "identifies", [row], ["r"], Deadline(30, clock=clock)) == []
    assert write.rows[IDENTIFIES] == [row]


def test_columns_that_are_not_proto_names_or_types_we_write_are_left_out() -> None:
    layout = build_layout({"id": "STRING", "My Col": "STRING", "n": "NUMERIC", "t": "TIMESTAMP"})
    assert layout.fields == {"id", "t"} and layout.timestamps == {"t"}


# -- row errors -------------------------------------------------------------------------------------------


def test_row_errors_come_back_for_exactly_their_rows(
    write: FakeWriteClient, warehouse: Warehouse, clock: FakeClock
) -> None:
    ensure(warehouse, clock)
    write.refuse = lambda row: "Field id: bad value" if row["id"] in ("r3", "r7") else None
    rows = [{"id": f"r{i}"} for i in range(10)]
    refused = warehouse.insert(DATASET, "identifies", rows, [r["id"] for r in rows], Deadline(30, clock=clock))
    assert [(r.index, r.errors) for r in refused] == [
        (3, [{"reason": "invalid", "location": "", "message": "Field id: bad value"}]),
        (7, [{"reason": "invalid", "location": "", "message": "Field id: bad value"}]),
    ]
    assert [r["id"] for r in write.rows[IDENTIFIES]] == [f"r{i}" for i in range(10) if i not in (3, 7)]
    assert clock.now == 0  # the others were resent at once, not after a backoff


def test_row_errors_of_a_later_request_map_to_the_callers_indices(
    write: FakeWriteClient, warehouse: Warehouse, clock: FakeClock
) -> None:
    """BigQuery's index is the row's place in its request: the writer maps it back to the caller's."""
    ensure(warehouse, clock, note="STRING")
    rows = [{"id": f"r{i}", "note": "é" * 700_000} for i in range(14)]  # six rows per request
    write.refuse = lambda row: "bad" if row["id"] in ("r8", "r13") else None
    refused = warehouse.insert(DATASET, "identifies", rows, [r["id"] for r in rows], Deadline(30, clock=clock))
    assert [r.index for r in refused] == [8, 13]
    assert sorted(int(r["id"][1:]) for r in write.rows[IDENTIFIES]) == [i for i in range(14) if i not in (8, 13)]


def test_a_refused_row_is_recorded_as_row_refused_by_ingest(write: FakeWriteClient, warehouse: Warehouse) -> None:
    write.refuse = lambda row: "Field name: too long" if row.get("name") == "bad" else None
    batch = {"batch": [identify("ok", name="good"), identify("no", name="bad")]}
    outcome = ingest(message(batch), warehouse, SETTINGS)
    assert outcome.rows == {"personas_default.identifies": 1}
    [rejection] = outcome.rejections
    assert (rejection.error_class, rejection.call_index) == ("row_refused", 1)
    assert rejection.errors == {"identifies._row": ["Field name: too long"]}
    [rejected] = write.rows["personas-test.personas__ops.rejected_messages"]
    assert rejected["error_class"] == "row_refused"


# -- schema changes ------------------------------------------------------------------------------------------


def test_a_column_added_after_the_layout_was_built_is_picked_up(
    write: FakeWriteClient, warehouse: Warehouse, writer: StorageWriteWriter, clock: FakeClock
) -> None:
    """ingest adds `new_audience` after this instance built its layout: the writer reads the table again
    (only its own table), and the row lands by the Write API with the column in its descriptor."""
    ingest(message(identify("c-1", score=1)), warehouse, SETTINGS)
    reads = []
    original = warehouse.existing_schema
    warehouse.existing_schema = lambda *a: reads.append(a[:2]) or original(*a)  # type: ignore[method-assign]
    ingest(message(identify("c-2", new_audience=True), "m-2"), warehouse, SETTINGS)
    assert [r.get("new_audience") for r in write.rows[IDENTIFIES]] == [None, True]
    assert reads == [(DATASET, "identifies")]
    descriptors = [fields for table, fields in write.descriptors if table == IDENTIFIES]
    assert "new_audience" in descriptors[-1] and not any("new_audience" in d for d in descriptors[:-1])


def test_a_descriptor_carries_only_the_fields_its_rows_carry(
    write: FakeWriteClient, warehouse: Warehouse, clock: FakeClock
) -> None:
    ensure(warehouse, clock, a="STRING", b="INT64", c="BOOL")
    rows = [{"id": "r1", "a": "x"}, {"id": "r2", "b": 2, "c": None}]
    assert warehouse.insert(DATASET, "identifies", rows, ["r1", "r2"], Deadline(30, clock=clock)) == []
    assert write.descriptors == [(IDENTIFIES, frozenset({"id", "a", "b"}))]
    assert write.rows[IDENTIFIES] == [{"id": "r1", "a": "x"}, {"id": "r2", "b": 2}]


def test_a_dropped_table_raises_transient_and_is_forgotten(
    bq: StrictFakeBigQuery, write: FakeWriteClient, warehouse: Warehouse, clock: FakeClock
) -> None:
    ensure(warehouse, clock)
    bq.drop_table(IDENTIFIES)
    with pytest.raises(TransientError, match="not found"):
        warehouse.insert(DATASET, "identifies", [{"id": "a"}], ["a"], Deadline(30, clock=clock))
    # The redelivery's ensure_table creates it again, and the row lands.
    ingest(message(identify("c-1")), warehouse, SETTINGS)
    assert [r["id"] for r in write.rows[IDENTIFIES]] == ["c-1"]


# -- transient errors ---------------------------------------------------------------------------------------


def test_transient_errors_are_retried_within_the_deadline(
    write: FakeWriteClient, warehouse: Warehouse, clock: FakeClock
) -> None:
    ensure(warehouse, clock)
    write.failures = [gexc.ServiceUnavailable("unavailable"), (INTERNAL, "backend error"), (UNAVAILABLE, "x")]
    assert warehouse.insert(DATASET, "identifies", [{"id": "a"}], ["a"], Deadline(30, clock=clock)) == []
    assert [r["id"] for r in write.rows[IDENTIFIES]] == ["a"]
    assert 0 < clock.now < 30


def test_transient_errors_past_the_deadline_raise_transient_error(
    write: FakeWriteClient, warehouse: Warehouse, clock: FakeClock
) -> None:
    ensure(warehouse, clock)
    write.failures = [gexc.ServiceUnavailable("unavailable")] * 1_000
    with pytest.raises(TransientError):
        warehouse.insert(DATASET, "identifies", [{"id": "a"}], ["a"], Deadline(20, clock=clock))
    assert clock.now <= 20 and IDENTIFIES not in write.rows


@pytest.mark.parametrize(
    "failure",
    [
        gexc.InvalidArgument("Request is malformed"),
        gexc.InvalidArgument("Invalid proto field: the field name is not valid"),  # says "field", is no lag
        (INVALID_ARGUMENT, "Field id has an invalid descriptor"),
        (9, "FAILED_PRECONDITION: something we never expect"),
    ],
)
def test_a_request_bigquery_calls_malformed_is_raised_at_once_and_the_table_forgotten(
    write: FakeWriteClient, warehouse: Warehouse, clock: FakeClock, failure: Exception | tuple[int, str]
) -> None:
    """Only SCHEMA_MISMATCH_EXTRA_FIELDS is schema lag: anything else that BigQuery calls a bad request is
    raised at once (not retried until the deadline, then redelivered until dead-lettered), and the table's
    cached schema is dropped so a redelivery starts from a fresh read."""
    ensure(warehouse, clock)
    write.failures = [failure]
    with pytest.raises((gexc.InvalidArgument, RequestRefused)):
        warehouse.insert(DATASET, "identifies", [{"id": "a"}], ["a"], Deadline(20, clock=clock))
    assert clock.now == 0 and len(write.requests) == 1
    assert (DATASET, "identifies") not in warehouse._schemas


def test_extra_fields_reads_only_the_schema_mismatch_answer() -> None:
    text = "Input schema has more fields than BigQuery schema, extra fields: 'a,B' Entity: projects/p/x/_default"
    assert extra_fields(text, []) == ("a", "b")
    assert extra_fields(text.replace("'a,B'", "'tag_foo2'"), None) == ("tag_foo2",)
    assert extra_fields("Input schema has more fields", []) is None
    assert extra_fields("Field x: value out of range", []) is None
    assert extra_fields("Request is malformed: schema", []) is None


# -- requests within the Write API's limits ----------------------------------------------------------------


def test_our_request_budget_is_under_the_write_api_limit() -> None:
    assert WRITE_API_MAX_REQUEST_BYTES == WRITE_API_LIMIT_BYTES
    assert APPEND_BYTES_PER_REQUEST <= 0.9 * WRITE_API_MAX_REQUEST_BYTES


def test_wide_rows_are_split_by_bytes_and_a_row_too_big_alone_is_refused(
    write: FakeWriteClient, warehouse: Warehouse, clock: FakeClock
) -> None:
    ensure(warehouse, clock, note="STRING")
    rows = [{"id": f"r{i}", "note": "é" * 700_000} for i in range(30)]  # 1.4 MB each as proto
    rows.insert(5, {"id": "huge", "note": "x" * 9_500_000})
    refused = warehouse.insert(DATASET, "identifies", rows, [r["id"] for r in rows], Deadline(30, clock=clock))
    assert [r.index for r in refused] == [5] and "at most" in refused[0].errors[0]["message"]
    assert len(write.rows[IDENTIFIES]) == 30
    sizes = [size for key, _, size in write.requests if key == IDENTIFIES]
    assert max(sizes) <= APPEND_BYTES_PER_REQUEST and len(sizes) == 5  # six 1.4 MB rows per 9 MB request


def test_many_small_rows_go_in_one_request(write: FakeWriteClient, warehouse: Warehouse) -> None:
    calls = [identify(f"c-{i}", n=i) for i in range(1_234)]
    settings = Settings(ingest_deadline_seconds=30, max_message_bytes=10_000_000)
    outcome = ingest(message({"batch": calls}), warehouse, settings)
    assert outcome.rows == {"personas_default.identifies": 1_234}
    assert [n for key, n, _ in write.requests if key == IDENTIFIES] == [1_234]


def test_a_new_trait_and_a_track_through_ingest(write: FakeWriteClient, warehouse: Warehouse) -> None:
    track = {
        "type": "track",
        "userId": "u1",
        "messageId": "t1",
        "event": "Audience Entered",
        "properties": {"audience_key": "a", "a": True},
    }
    outcome = ingest(message({"batch": [identify("i1", score=3), track]}), warehouse, SETTINGS)
    assert sum(outcome.rows.values()) == 3 and not outcome.rejections
    [entered] = write.rows["personas-test.personas_default.audience_entered"]
    assert (entered["event_text"], entered["a"], entered["audience_key"]) == ("Audience Entered", True, "a")
    assert write.rows[IDENTIFIES][0]["score"] == 3


# -- connections -------------------------------------------------------------------------------------------


def test_appends_to_a_table_share_one_kept_connection(
    write: FakeWriteClient, warehouse: Warehouse, writer: StorageWriteWriter, clock: FakeClock
) -> None:
    for n in range(5):
        ingest(message(identify(f"c-{n}", score=n), f"m-{n}"), warehouse, SETTINGS)
        clock.advance(1)
    assert len(write.rows[IDENTIFIES]) == 5
    assert (writer.appends, write.connections) == (5, 1)


def test_a_kept_connection_is_taken_only_while_it_has_life_left_and_no_more_than_the_callers_time(
    write: FakeWriteClient, warehouse: Warehouse, clock: FakeClock
) -> None:
    ensure(warehouse, clock)

    def insert(row_id: str, seconds: float) -> None:
        assert warehouse.insert(DATASET, "identifies", [{"id": row_id}], [row_id], Deadline(seconds, clock=clock)) == []

    insert("a", 30)  # opens one that lives CONNECTION_SECONDS
    insert("b", CONNECTION_SECONDS / 2)  # its wait for an answer could outlast this caller: a new one
    insert("c", 30)  # the first again (or the second: either fits)
    assert write.connections == 2
    clock.advance(CONNECTION_SECONDS - MIN_CONNECTION_LIFE + 0.1)
    insert("d", 30)  # both are too close to their end now
    assert write.connections == 3
    assert [r["id"] for r in write.rows[IDENTIFIES]] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    "lost",
    [
        gexc.ServiceUnavailable("Socket closed"),
        gexc.Aborted("Closing the stream because it has been inactive for 600 seconds. Entity: ..."),
        gexc.Unknown("There was a problem opening the stream"),
    ],
)
def test_a_kept_connection_that_broke_is_replaced_for_that_append_without_a_backoff(
    write: FakeWriteClient, warehouse: Warehouse, clock: FakeClock, lost: Exception
) -> None:
    """A connection kept across requests can be gone when the next request comes (the server closed it,
    or it broke while the instance had no CPU): the append goes again at once on a new connection."""
    ingest(message(identify("c-1")), warehouse, SETTINGS)
    write.failures = [lost]
    ingest(message(identify("c-2"), "m-2"), warehouse, SETTINGS)
    assert [r["id"] for r in write.rows[IDENTIFIES]] == ["c-1", "c-2"]
    assert write.connections == 2 and clock.now == 0


def test_a_connection_is_not_kept_once_the_tables_columns_changed(
    write: FakeWriteClient, warehouse: Warehouse, clock: FakeClock
) -> None:
    """bqemulator decodes a connection's rows into the table as it was when the connection opened (a later
    column is dropped); Google's Java client reconnects on a schema update too."""
    ingest(message(identify("c-1")), warehouse, SETTINGS)
    ingest(message(identify("c-2", fresh="x"), "m-2"), warehouse, SETTINGS)
    ingest(message(identify("c-3", fresh="y"), "m-3"), warehouse, SETTINGS)
    assert write.connections == 2
    assert [r.get("fresh") for r in write.rows[IDENTIFIES]] == [None, "x", "y"]


# -- configuration ---------------------------------------------------------------------------------------------


def test_writer_setting_is_validated() -> None:
    assert load_settings({}).bigquery_writer == "storage_write"  # the default: docs/writers.md
    assert load_settings({"BIGQUERY_WRITER": "insert_all"}).bigquery_writer == "insert_all"
    with pytest.raises(ConfigError, match="BIGQUERY_WRITER='streaming' must be one of insert_all, storage_write"):
        load_settings({"BIGQUERY_WRITER": "streaming"})
    with pytest.raises(ConfigError, match="needs BIGQUERY_EMULATOR_GRPC_HOST"):
        load_settings({"BIGQUERY_EMULATOR_HOST": "http://127.0.0.1:9050"})
    assert load_settings({"BIGQUERY_WRITER": "insert_all", "BIGQUERY_EMULATOR_HOST": "http://127.0.0.1:9050"})
    local = {"BIGQUERY_EMULATOR_HOST": "http://127.0.0.1:9050", "BIGQUERY_EMULATOR_GRPC_HOST": "127.0.0.1:9060"}
    assert load_settings({**local, "BIGQUERY_WRITER": "storage_write"}).bigquery_emulator_grpc_host == "127.0.0.1:9060"


def test_the_function_builds_the_writers_its_settings_name(monkeypatch: pytest.MonkeyPatch) -> None:
    import personas_warehouse.app as app

    local = {"bigquery_emulator_host": "http://127.0.0.1:1", "bigquery_emulator_grpc_host": "127.0.0.1:1"}
    for name, wanted in (
        ("insert_all", [InsertAllWriter]),
        ("storage_write", [StorageWriteWriter, InsertAllWriter]),  # insertAll takes the rows the Write API defers
    ):
        monkeypatch.setattr(app, "SETTINGS", Settings(project="p", bigquery_writer=name, **local))
        app.warehouse.cache_clear()
        try:
            built = app.warehouse()
            assert [type(w) for w in built.writers] == wanted
            assert built.writers[0].name == name
        finally:
            app.warehouse.cache_clear()
