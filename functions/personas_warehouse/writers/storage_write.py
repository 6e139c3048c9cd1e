"""The Storage Write API writer (BIGQUERY_WRITER=storage_write): rows appended to a table's `_default`
stream as protobuf rows, under the writers' contract (contract.py). Rows on the default stream are
committed, so durable and visible, when the append is answered without error; `row_errors` refuse
exactly their rows (none of the request is appended, so the others go again at once).

Rows built at run time. The table's columns change while the pipeline runs (a new trait is a new
column), so the writer reads the table's schema (fresh, whenever rows carry a column it does not know)
and numbers every column it can write as a proto2 field (unset = NULL). Column names made by `naming.py`
are lowercase `[a-z0-9_]` starting with a letter or `_`: valid proto field names as they are (BigQuery
matches proto fields to columns by name, case-insensitively). Columns that are not proto identifiers (an
operator's own flexible names) or of types this project never writes are left out: we never write them.

A column just added. The Write API sees a new column only after a while ("in order of minutes", Google's
client docs: https://github.com/googleapis/java-bigquerystorage/pull/437; issue #1465 there), and until
then it refuses a whole append whose row descriptor has a field it does not see: INVALID_ARGUMENT "Input
schema has more fields than BigQuery schema, extra fields: 'a,b'" (text as reported in
https://github.com/memiiso/debezium-server-bigquery/issues/268), with a StorageError of code
SCHEMA_MISMATCH_EXTRA_FIELDS in the status details (google.cloud.bigquery_storage_v1.types.StorageError;
Google's Java client turns exactly that code into its SchemaMismatchedException). So:
- an append's descriptor carries only the fields its rows carry (numbered as in the table, so a row is
  encoded once whatever its neighbours): a new column cannot fail the appends of rows without it;
- per table, the writer remembers which columns the stream took (every field of an answered append, every
  column of an `updated_schema` in a response: "if backend detects a schema update, pass it to user so that
  user can use it to input new type of message", AppendRowsResponse) and which it refused, and when;
- rows carrying a column it refused less than PROBE_SECONDS ago are deferred at once, without a request
  (the Warehouse hands them to the insertAll writer); rows carrying a column it has not taken yet go in an
  append of their own, so a refusal costs only them; a refusal names its fields, and the append's other
  rows go again at once.
Only that answer counts as lag. Any other INVALID_ARGUMENT is a request we should never have made: it is
raised, not retried, and the table's cached schema is forgotten so a redelivery starts from a fresh read.

Connections. Google's best practices: "use one connection for as many data writes as possible; do not use a
connection for a single write" (https://cloud.google.com/bigquery/docs/write-api-best-practices). Each
append goes on a connection kept per table: an AppendRows call opened with the first request queued (the
client reads the first answer before it returns) and then fed one request at a time, each answered before
the next is sent, so an answer is always about our own rows. No thread of ours runs between requests (Cloud
Functions gen2 may give the instance no CPU then): a kept connection is a request queue and gRPC's own
stream. A connection lives CONNECTION_SECONDS at most (its gRPC deadline, which also bounds any one wait
for an answer) and is taken again only if that leaves MIN_CONNECTION_LIFE and no more than the caller's
time; the server closes connections idle for 600 s ("Closing the stream because it has been inactive for
600 seconds", googleapis/nodejs-bigquery-storage#427) and Python clients kept idle on Cloud Run for minutes
failed to reopen (googleapis/python-bigquery#2359), neither of which a 20-second connection meets. A kept
connection that fails is replaced by a new one for that append, once. A connection is tied to the table's
columns as this instance knows them: when they change it is not reused (as Google's Java client opens a new
connection on a schema update, googleapis/java-bigquerystorage#1447).

The default stream has no deduplication: insert ids are not sent (docs/writers.md).
"""

from __future__ import annotations

import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc  # type: ignore[import-untyped]  # no stub package is pinned; used at a few call sites
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.cloud.bigquery_storage_v1 import BigQueryWriteClient, types
from google.cloud.bigquery_storage_v1.services.big_query_write.transports import BigQueryWriteGrpcTransport
from google.protobuf import (  # type: ignore[import-untyped]
    descriptor_pb2,
    descriptor_pool,
    message_factory,
)
from google.protobuf.message import Message  # type: ignore[import-untyped]

from personas_warehouse import values
from personas_warehouse.deadline import FIRST_DELAY, Deadline, is_transient, pause
from personas_warehouse.errors import RequestRefused, TransientError
from personas_warehouse.settings import Settings
from personas_warehouse.writers.contract import Deferred, Entry, Problems, Schema, Tables, Verdict

# The Write API's limit (https://cloud.google.com/bigquery/quotas#write-api-limits): 10 MB per AppendRows
# request. What we send: a byte budget safely under it, counted on the serialized request (rows, the row
# descriptor that travels with every request, the stream name). No row limit applies to the Write API.
WRITE_API_MAX_REQUEST_BYTES = 10 * 1024 * 1024
APPEND_BYTES_PER_REQUEST = 9_000_000
_FIXED_REQUEST_BYTES = 64  # tags and length prefixes of the request's nested messages
_SCHEMA_READS = 4  # fresh reads of a table that still lacks a column the rows carry, before giving up
PROBE_SECONDS = 10.0  # rows carrying a column the stream refused wait this long before trying it again
CONNECTION_SECONDS = 20.0  # a kept connection's life (its gRPC deadline)
MIN_CONNECTION_LIFE = 5.0  # a kept connection with less life left is closed, not taken again
_MAX_DESCRIPTORS = 256  # per table layout: descriptors for distinct field sets, kept for reuse

_FIELD = descriptor_pb2.FieldDescriptorProto
# BigQuery column type -> proto type, per the Write API's supported protobuf types. TIMESTAMP travels as
# int64 microseconds since the epoch. values.py makes only these five (tables.json uses them too).
_PROTO_TYPES = {
    "STRING": _FIELD.TYPE_STRING,
    "INT64": _FIELD.TYPE_INT64,
    "FLOAT64": _FIELD.TYPE_DOUBLE,
    "BOOL": _FIELD.TYPE_BOOL,
    "TIMESTAMP": _FIELD.TYPE_INT64,
}
_PROTO_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_EXTRA_FIELDS = re.compile(r"Input schema has more fields than BigQuery schema, extra fields: '([^']*)'")
_SCHEMA_MISMATCH_EXTRA_FIELDS = types.StorageError.StorageErrorCode.SCHEMA_MISMATCH_EXTRA_FIELDS
_TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE.value[0],
        grpc.StatusCode.INTERNAL.value[0],
        grpc.StatusCode.ABORTED.value[0],
        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
        grpc.StatusCode.UNKNOWN.value[0],
        grpc.StatusCode.CANCELLED.value[0],
    }
)
_INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]

Key = tuple[str, str]  # (dataset, table)


def make_write_client(settings: Settings) -> BigQueryWriteClient:
    """The Write API client: an insecure channel to bqemulator's gRPC port locally, Google's default
    credentials otherwise."""
    if settings.bigquery_emulator_grpc_host:
        channel = grpc.insecure_channel(settings.bigquery_emulator_grpc_host)
        return BigQueryWriteClient(transport=BigQueryWriteGrpcTransport(channel=channel))  # type: ignore[no-untyped-call]
    return BigQueryWriteClient(client_options=ClientOptions())  # type: ignore[no-untyped-call]


def default_stream(project: str, dataset: str, table: str) -> str:
    return f"projects/{project}/datasets/{dataset}/tables/{table}/streams/_default"


def timestamp_micros(value: Any) -> int:
    """Microseconds since the epoch of a TIMESTAMP value as rows carry it (values.format_timestamp's
    text, or any ISO-8601 text with a zone; a datetime)."""
    moment = value if isinstance(value, datetime) else _parse(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # BigQuery reads a zoneless timestamp as UTC
    return (moment - _EPOCH) // _MICROSECOND


def _parse(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)  # the form we write (…Z) parses here, fast
    except ValueError:
        parsed = values.parse_timestamp(text)
        if parsed is None:
            raise ValueError(f"not a timestamp: {text!r}") from None
        return parsed


# -- rows as protobuf -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """One table's columns as proto fields, the message class made from them, and the descriptors of
    appends (each naming only the fields its rows carry, with the same numbers)."""

    schema: Schema
    descriptor: descriptor_pb2.DescriptorProto  # every column we can write
    row_class: type[Message]
    fields: frozenset[str]
    timestamps: frozenset[str]
    descriptor_bytes: int
    _partial: dict[frozenset[str], descriptor_pb2.DescriptorProto] = field(
        default_factory=dict, compare=False, repr=False
    )

    def encode(self, row: dict[str, Any]) -> bytes:
        return self.encode_present({k: v for k, v in row.items() if v is not None})

    def encode_present(self, present: dict[str, Any]) -> bytes:
        """A row without its None values (changed in place: timestamps become microseconds)."""
        for name in self.timestamps.intersection(present):
            present[name] = timestamp_micros(present[name])
        return bytes(self.row_class(**present).SerializeToString())

    def descriptor_for(self, fields: frozenset[str]) -> descriptor_pb2.DescriptorProto:
        """The descriptor of an append whose rows carry `fields`: those fields only."""
        found = self._partial.get(fields)
        if found is None:
            found = descriptor_pb2.DescriptorProto(name=self.descriptor.name)
            found.field.extend(f for f in self.descriptor.field if f.name in fields)
            if len(self._partial) >= _MAX_DESCRIPTORS:
                self._partial.clear()
            self._partial[fields] = found
        return found


def build_layout(schema: Schema) -> Layout:
    """A proto2 message with one optional field per column we can write (proto2: an unset field is NULL,
    not 0 or ""). Field numbers follow the schema's order; at most 10,000 columns keeps them below
    protobuf's reserved 19000-19999."""
    message = descriptor_pb2.DescriptorProto(name="Row")
    timestamps = set()
    for number, (name, kind) in enumerate(schema.items(), start=1):
        proto_type = _PROTO_TYPES.get(kind)
        if proto_type is None or not _PROTO_NAME.match(name):
            continue
        # json_name = name: two of our names can share a default JSON name (`a_b`, `a__b`), which the pool refuses.
        message.field.add(name=name, number=number, type=proto_type, label=_FIELD.LABEL_OPTIONAL, json_name=name)
        if kind == "TIMESTAMP":
            timestamps.add(name)
    file = descriptor_pb2.FileDescriptorProto(name=f"row_{uuid.uuid4().hex}.proto", syntax="proto2")
    file.message_type.add().CopyFrom(message)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    row_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("Row"))
    fields = frozenset(f.name for f in message.field)
    return Layout(dict(schema), message, row_class, fields, frozenset(timestamps), message.ByteSize())


def _row_bytes(size: int) -> int:
    """Bytes one serialized row adds to a request: its tag, its length prefix (a varint: 7 bits a byte),
    itself."""
    return 1 + max(1, -(-size.bit_length() // 7)) + size


def _requests(indices: Sequence[int], sizes: dict[int, int], budget: int) -> Iterator[list[int]]:
    """Consecutive runs of `indices` whose rows fit in `budget` bytes."""
    run: list[int] = []
    used = 0
    for i in indices:
        if run and used + sizes[i] > budget:
            yield run
            run, used = [], 0
        run.append(i)
        used += sizes[i]
    if run:
        yield run


@dataclass(frozen=True)
class _Prepared:
    """A row as prepare() left it: encoded with `layout` (None: not yet), and the fields it carries."""

    layout: Layout | None
    body: bytes | None
    carried: frozenset[str]


def _estimate(row: dict[str, Any]) -> int:
    """About the bytes a row not encoded yet will take (it sizes groups; appends are split on the real size)."""
    return sum(len(k) + (len(v) if isinstance(v, str) else 10) + 3 for k, v in row.items() if v is not None)


def _problems(message: str, location: str = "") -> Problems:
    return [{"reason": "invalid", "location": location, "message": message}]


# -- what a table's stream sees ------------------------------------------------------------------------


@dataclass
class Sight:
    """What one table's default stream is known to see, as this instance learnt it."""

    took: set[str] = field(default_factory=set)  # fields of appends it answered, columns of an updated_schema
    refused: dict[str, float] = field(default_factory=dict)  # field -> when an append was refused for it

    def sort(
        self, carried: dict[int, frozenset[str]], now: float
    ) -> tuple[list[int], list[int], dict[int, tuple[str, ...]]]:
        """(rows whose fields it took, rows carrying a field it has not taken, {row: fields it refused
        less than PROBE_SECONDS ago})."""
        lagging = {name for name, when in self.refused.items() if now - when < PROBE_SECONDS}
        ready: list[int] = []
        probe: list[int] = []
        waiting: dict[int, tuple[str, ...]] = {}
        for i, fields in carried.items():
            behind = fields & lagging
            if behind:
                waiting[i] = tuple(sorted(behind))
            elif fields <= self.took:
                ready.append(i)
            else:
                probe.append(i)
        return ready, probe, waiting

    def saw(self, fields: Iterable[str]) -> None:
        for name in fields:
            self.took.add(name)
            self.refused.pop(name, None)

    def lags(self, fields: Iterable[str], now: float) -> None:
        for name in fields:
            self.took.discard(name)
            self.refused[name] = now


def extra_fields(message: str, details: Iterable[Any] | None) -> tuple[str, ...] | None:
    """The fields of a SCHEMA_MISMATCH_EXTRA_FIELDS answer (the stream does not see them: () when it names
    none we can read); None when the answer is anything else."""
    structured = None
    for detail in details or ():
        error = _storage_error(detail)
        if error is not None and error.code == _SCHEMA_MISMATCH_EXTRA_FIELDS:
            structured = error
    match = _EXTRA_FIELDS.search(structured.error_message if structured is not None else "") or _EXTRA_FIELDS.search(
        message
    )
    if structured is None and match is None:
        return None
    if match is None:
        return ()
    return tuple(sorted({name.strip().lower() for name in match.group(1).split(",") if name.strip()}))


def _storage_error(detail: Any) -> Any:
    """A status detail (google.protobuf.Any) unpacked as a StorageError; None for any other detail."""
    pb = types.StorageError.pb()
    if not hasattr(detail, "Is") or not detail.Is(pb.DESCRIPTOR):
        return None
    error = pb()
    detail.Unpack(error)
    return error


# -- connections ----------------------------------------------------------------------------------------

_CLOSE = object()


class _Connection:
    """One AppendRows call kept open for more appends to one table."""

    def __init__(self, client: BigQueryWriteClient, stream: str, layout: Layout, life: float, now: float) -> None:
        self.layout = layout
        self.expires = now + life
        self.reused = False
        self._client = client
        self._stream = stream
        self._life = life
        self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._responses: Iterator[types.AppendRowsResponse] | None = None

    def append(self, request: types.AppendRowsRequest) -> types.AppendRowsResponse:
        """Send one request and read its answer. The client's own retry is off: it would resend requests
        already consumed, past our deadline."""
        self._requests.put(request)
        try:
            if self._responses is None:  # the client reads the first answer before it returns
                self._responses = iter(
                    self._client.append_rows(
                        self._sent(),
                        retry=None,
                        timeout=self._life,
                        metadata=(("x-goog-request-params", f"write_stream={self._stream}"),),
                    )
                )
            return next(self._responses)
        except StopIteration:
            raise TransientError(f"AppendRows to {self._stream} closed without an answer") from None
        except grpc.RpcError as exc:
            raise gexc.from_grpc_error(exc) from exc  # type: ignore[no-untyped-call]

    def _sent(self) -> Iterator[types.AppendRowsRequest]:
        """The request stream: what append() queues, until close() or the end of the connection's life
        (gRPC reads it on a thread of its own, which so never outlives the connection)."""
        end = time.monotonic() + self._life
        while True:
            try:
                request = self._requests.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                return
            if request is _CLOSE:
                return
            yield cast(types.AppendRowsRequest, request)

    def close(self) -> None:
        self._requests.put(_CLOSE)  # ends the request stream (and gRPC's thread reading it)
        cancel = getattr(self._responses, "cancel", None)
        if cancel is not None:
            cancel()


def _connection_lost(exc: BaseException) -> bool:
    return isinstance(exc, (TransientError, gexc.Aborted, gexc.Cancelled, gexc.Unknown)) or is_transient(exc)


class Connections:
    """The kept connections of one writer, per table (more than one only while appends to a table overlap)."""

    def __init__(self, client: BigQueryWriteClient, clock: Callable[[], float]) -> None:
        self._client = client
        self._clock = clock
        self._lock = threading.Lock()
        self._idle: dict[Key, list[_Connection]] = {}
        self.opened = 0  # connections opened (tests, benchmark)

    def append(
        self, key: Key, stream: str, layout: Layout, request: types.AppendRowsRequest, deadline: Deadline
    ) -> types.AppendRowsResponse:
        budget = deadline.budget(CONNECTION_SECONDS)
        connection = self._take(key, layout, budget) or self._open(stream, layout, budget)
        try:
            response = connection.append(request)
        except Exception as exc:
            connection.close()
            if not (connection.reused and _connection_lost(exc)):
                raise
            # A kept connection can be gone (closed by the server, or broken while the instance had no CPU):
            # the append goes once more on a new one. If the first copy landed after all, the default stream
            # keeps both; the `<table>_view` views keep one row per id.
            connection = self._open(stream, layout, deadline.budget(CONNECTION_SECONDS))
            try:
                response = connection.append(request)
            except Exception:
                connection.close()
                raise
        with self._lock:
            self._idle.setdefault(key, []).append(connection)
        return response

    def _take(self, key: Key, layout: Layout, budget: float) -> _Connection | None:
        """A kept connection of this table and layout whose life left is enough but not more than the
        caller's time (its deadline bounds the wait for an answer); closes the ones past use."""
        now = self._clock()
        found = None
        with self._lock:
            for table, kept in self._idle.items():
                usable = []
                for connection in kept:
                    left = connection.expires - now
                    if left < MIN_CONNECTION_LIFE or (table == key and connection.layout is not layout):
                        connection.close()
                    elif found is None and table == key and left <= budget:
                        connection.reused = True
                        found = connection
                    else:
                        usable.append(connection)
                kept[:] = usable
        return found

    def _open(self, stream: str, layout: Layout, life: float) -> _Connection:
        self.opened += 1
        return _Connection(self._client, stream, layout, life, self._clock())


# -- the writer ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    """What one append left to do."""

    verdicts: dict[int, Verdict] = field(default_factory=dict)
    retry: list[int] = field(default_factory=list)
    pause: bool = False  # back off before the retry


class StorageWriteWriter:
    """Appends rows to tables' default streams; one per function instance, thread-safe (its state: row
    layouts, what each table's stream sees, kept connections)."""

    name = "storage_write"
    max_group_rows = 10_000
    max_group_bytes = APPEND_BYTES_PER_REQUEST

    def __init__(
        self,
        client: BigQueryWriteClient,
        project: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.project = project
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._layouts: dict[Key, Layout] = {}
        self._sights: dict[Key, Sight] = {}
        self.connections = Connections(client, clock)
        self.appends = 0  # AppendRows requests sent (tests, benchmark)

    def prepare(self, dataset: str, table: str, row: dict[str, Any], insert_id: str, fitted_to: Schema) -> Entry:
        """The row encoded with the table's layout when this instance has one that covers it (else in
        write(), after a fresh read of the table). The insert id is not sent: the default stream does not
        deduplicate."""
        present = {k: v for k, v in row.items() if v is not None}
        carried = frozenset(present)
        layout = self._layouts.get((dataset, table))
        body = None
        if layout is not None and carried <= layout.fields:
            try:
                body = layout.encode_present(present)
            except (TypeError, ValueError, OverflowError):
                body = None  # write() refuses it, or finds the table changed
        size = _row_bytes(len(body)) if body is not None else _estimate(row)
        return Entry(row, insert_id, fitted_to, _Prepared(layout, body, carried), size)

    def oversized(self, item: Entry) -> Problems | None:
        return None  # measured on the encoded row, in write()

    def sight(self, dataset: str, table: str) -> Sight:
        with self._lock:
            return self._sights.setdefault((dataset, table), Sight())

    def write(
        self, dataset: str, table: str, entries: Sequence[Entry], deadline: Deadline, tables: Tables
    ) -> dict[int, Verdict]:
        prepared: list[_Prepared] = [e.wire for e in entries]
        rows = [e.row for e in entries]
        verdicts: dict[int, Verdict] = {}
        pending = list(range(len(rows)))
        delay = FIRST_DELAY
        sight = self.sight(dataset, table)
        while pending:
            layout = self._layout(dataset, table, prepared, pending, deadline, tables)
            encoded, refused = self._encode(dataset, table, layout, rows, prepared, pending, deadline, tables)
            verdicts.update(refused)
            carried = {i: prepared[i].carried for i in encoded}
            with self._lock:
                ready, probe, waiting = sight.sort(carried, self._clock())
            verdicts.update({i: Deferred(columns) for i, columns in waiting.items()})
            budget = APPEND_BYTES_PER_REQUEST - self._overhead(dataset, table, layout)
            sizes = {i: _row_bytes(len(body)) for i, body in encoded.items()}
            retry: list[int] = []
            for batch in (ready, probe):  # apart: a refused probe costs only the rows with an untried column
                for i in batch:
                    if sizes[i] > budget:
                        verdicts[i] = _problems(
                            f"Row is {sizes[i]} bytes as protobuf; one append carries at most {budget}."
                        )
                fitting = [i for i in batch if sizes[i] <= budget]
                for request in _requests(fitting, sizes, budget):
                    outcome = self._append(dataset, table, layout, request, encoded, carried, deadline, tables)
                    verdicts.update(outcome.verdicts)
                    retry += outcome.retry
                    if outcome.pause:
                        delay = pause(self._sleep, delay, deadline)
            pending = sorted(retry)
        return verdicts

    # -- the row layout ------------------------------------------------------------------------------

    def _layout(
        self,
        dataset: str,
        table: str,
        prepared: Sequence[_Prepared],
        pending: list[int],
        deadline: Deadline,
        tables: Tables,
    ) -> Layout:
        """The cached layout, or one built from a fresh read when the rows carry a column it lacks."""
        needed = frozenset[str]().union(*(prepared[i].carried for i in pending))
        layout = self._layouts.get((dataset, table))
        delay = FIRST_DELAY
        for attempt in range(_SCHEMA_READS):
            if layout is not None and needed <= layout.fields:
                return layout
            if attempt:
                delay = pause(self._sleep, delay, deadline)
            layout = self._refresh(dataset, table, deadline, tables)
        assert layout is not None
        missing = sorted(needed - layout.fields)
        tables.forget(dataset, table)  # the redelivery's ensure_table reads it fresh and adds them
        raise TransientError(f"{dataset}.{table} lacks {missing[:5]} after {_SCHEMA_READS} reads; redeliver")

    def _refresh(self, dataset: str, table: str, deadline: Deadline, tables: Tables) -> Layout:
        """The table read again; its layout rebuilt only when its columns changed (connections stay tied)."""
        schema = tables.existing_schema(dataset, table, deadline)
        if schema is None:
            self._layouts.pop((dataset, table), None)
            tables.forget(dataset, table)  # the redelivery creates it again
            raise TransientError(f"{dataset}.{table} was not found; redeliver")
        layout = self._layouts.get((dataset, table))
        if layout is None or layout.schema != schema:
            layout = self._layouts[(dataset, table)] = build_layout(schema)
        return layout

    def _encode(
        self,
        dataset: str,
        table: str,
        layout: Layout,
        rows: Sequence[dict[str, Any]],
        prepared: Sequence[_Prepared],
        pending: list[int],
        deadline: Deadline,
        tables: Tables,
    ) -> tuple[dict[int, bytes], dict[int, Verdict]]:
        """Serialized rows (as prepared when they were encoded with this layout); a row whose values do not
        fit the table's types is refused for itself, as BigQuery would, unless the table changed types
        under us (then the message is re-fitted)."""
        encoded: dict[int, bytes] = {}
        failed: dict[int, str] = {}
        for i in pending:
            ready = prepared[i]
            if ready.layout is layout and ready.body is not None:
                encoded[i] = ready.body
                continue
            try:
                encoded[i] = layout.encode(rows[i])
            except (TypeError, ValueError, OverflowError) as exc:
                failed[i] = str(exc)
        if not failed:
            return encoded, {}
        fresh = self._refresh(dataset, table, deadline, tables)
        carried = {name for i in failed for name, value in rows[i].items() if value is not None}
        if any(layout.schema.get(name) != fresh.schema.get(name) for name in carried):
            tables.forget(dataset, table)
            raise TransientError(f"{dataset}.{table} changed types under this instance; redeliver to re-fit")
        return encoded, {i: _problems(why) for i, why in failed.items()}

    def _overhead(self, dataset: str, table: str, layout: Layout) -> int:
        return _FIXED_REQUEST_BYTES + len(default_stream(self.project, dataset, table)) + layout.descriptor_bytes

    # -- one append ---------------------------------------------------------------------------------------

    def _append(
        self,
        dataset: str,
        table: str,
        layout: Layout,
        request: list[int],
        encoded: dict[int, bytes],
        carried: dict[int, frozenset[str]],
        deadline: Deadline,
        tables: Tables,
    ) -> _Outcome:
        stream = default_stream(self.project, dataset, table)
        sent = frozenset[str]().union(*(carried[i] for i in request))
        proto = types.AppendRowsRequest.pb()(write_stream=stream)
        proto.proto_rows.writer_schema.proto_descriptor.CopyFrom(layout.descriptor_for(sent))
        proto.proto_rows.rows.serialized_rows.extend(encoded[i] for i in request)
        self.appends += 1
        try:
            response = self.connections.append(
                (dataset, table), stream, layout, types.AppendRowsRequest.wrap(proto), deadline
            )
        except gexc.NotFound:
            self._refresh(dataset, table, deadline, tables)  # raises when the table is gone; else not visible yet
            return _Outcome(retry=request, pause=True)
        except gexc.InvalidArgument as exc:
            extra = extra_fields(exc.message, exc.details)
            if extra is None:
                tables.forget(dataset, table)  # a redelivery starts from a fresh read of the table
                raise
            return self._lagging(dataset, table, request, carried, sent, extra, tables)
        except Exception as exc:
            if not _connection_lost(exc):
                raise
            return _Outcome(retry=request, pause=True)
        sight = self.sight(dataset, table)
        if "updated_schema" in response:
            with self._lock:
                sight.saw(f.name.lower() for f in response.updated_schema.fields)
        if response.row_errors:
            # No row of the request was appended: the refused ones are out, the others go again at once.
            bad = {int(e.index): e.message for e in response.row_errors}
            verdicts: dict[int, Verdict] = {
                request[n]: _problems(why) for n, why in bad.items() if 0 <= n < len(request)
            }
            return _Outcome(verdicts=verdicts, retry=[i for n, i in enumerate(request) if n not in bad])
        code = response.error.code if "error" in response else 0
        if code == 0:
            with self._lock:
                sight.saw(sent)
            return _Outcome()  # committed: the default stream's rows are durable once answered
        if code == _NOT_FOUND:
            self._refresh(dataset, table, deadline, tables)
            return _Outcome(retry=request, pause=True)
        if code == _INVALID_ARGUMENT:
            extra = extra_fields(response.error.message, response.error.details)
            if extra is not None:
                return self._lagging(dataset, table, request, carried, sent, extra, tables)
        if code in _TRANSIENT_CODES:
            return _Outcome(retry=request, pause=True)
        tables.forget(dataset, table)
        raise RequestRefused(f"AppendRows to {stream} answered {code}: {response.error.message}")

    def _lagging(
        self,
        dataset: str,
        table: str,
        request: list[int],
        carried: dict[int, frozenset[str]],
        sent: frozenset[str],
        extra: tuple[str, ...],
        tables: Tables,
    ) -> _Outcome:
        """The stream refused the append for fields it does not see: the rows carrying them are deferred,
        the others go again at once (the refusal shows the stream sees every other field sent)."""
        sight = self.sight(dataset, table)
        with self._lock:
            behind = set(extra) & sent if extra else set(sent) - sight.took
            if behind:
                sight.lags(behind, self._clock())
                sight.saw(sent - behind)
        if not behind:  # refused for fields it had taken, or that we did not send: the table changed
            self._layouts.pop((dataset, table), None)
            tables.forget(dataset, table)
            raise TransientError(
                f"{dataset}.{table}: the Write API refused {list(extra) or sorted(sent)} as extra fields; redeliver"
            )
        verdicts: dict[int, Verdict] = {
            i: Deferred(tuple(sorted(carried[i] & behind))) for i in request if carried[i] & behind
        }
        return _Outcome(verdicts=verdicts, retry=[i for i in request if not carried[i] & behind])
