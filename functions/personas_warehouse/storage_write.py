"""The Storage Write API writer (BIGQUERY_WRITER=storage_write): rows appended to a table's `_default`
stream as protobuf rows, with the same contract as the insertAll writer (`Warehouse.insert`): it returns
only once BigQuery has answered the append without error (rows on the default stream are committed, so
durable and visible, when the response arrives); it returns the rows BigQuery refused for themselves
(`AppendRowsResponse.row_errors`) and nothing else; a table whose columns changed is read again and its
row descriptor rebuilt; everything transient is retried with backoff inside the caller's Deadline, then
raises TransientError (Pub/Sub redelivers).

Why one AppendRows call per request (a request iterator of one), not a long-lived `AppendRowsStream`:
- a function instance is short-lived and Cloud Functions gen2 may give it no CPU between requests, so a
  connection kept open across requests, with its background response thread, would be starved and
  dropped; the lead's group-commit layer already gathers the rows of many requests, so one append per
  group is the unit of work and the per-connection cost is paid once per group, not once per call;
- the answer to our request is the only response on its connection: no offset bookkeeping, no pairing of
  futures with responses, and an error can only concern our own rows.
Google's best practices prefer reusing a connection for many appends; with group commit the appends are
few and full, which is what that advice is about. Reusing a connection per table is the next step if the
per-append setup ever shows up in profiles.

Why protobuf rows built at run time: the table's columns change while the pipeline runs (a new trait is a
new column), so the descriptor is made from the table's schema, read fresh whenever rows carry a column
the descriptor lacks or BigQuery answers that the schema does not match. Column names made by
`naming.py` are lowercase `[a-z0-9_]` starting with a letter or `_`: valid proto field names as they are
(BigQuery matches proto field names to columns case-insensitively). Columns that are not proto
identifiers (an operator's own flexible names) or of types this project never writes are left out of the
descriptor: we never write them, and a field left out is NULL for BigQuery.

The default stream has no deduplication: insert ids are not sent (see README, "Choosing the writer").
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

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
from personas_warehouse.bigquery import Deadline, RowRefusal, Schema, is_transient
from personas_warehouse.errors import TransientError
from personas_warehouse.settings import Settings

# The Write API's limit (https://cloud.google.com/bigquery/quotas#write-api-limits): 10 MB per AppendRows
# request. What we send: a byte budget safely under it, counted on the serialized request (rows, the row
# descriptor that travels with every request, the stream name). No row limit applies to the Write API.
WRITE_API_MAX_REQUEST_BYTES = 10 * 1024 * 1024
APPEND_BYTES_PER_REQUEST = 9_000_000
_FIXED_REQUEST_BYTES = 64  # tags and length prefixes of the request's nested messages
_FIRST_DELAY, _MAX_DELAY = 0.25, 4.0
_SCHEMA_READS = 4  # fresh reads of a table that still lacks a column the rows carry, before giving up

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
# INVALID_ARGUMENT texts of a descriptor that no longer matches the table (a column BigQuery's Write API
# does not see yet, right after it was added: its view of the schema lags by seconds to minutes).
_SCHEMA_MISMATCH = re.compile(r"schema|field", re.IGNORECASE)
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


class Tables(Protocol):
    """What the writer needs of the BigQuery adapter (Warehouse has both)."""

    def existing_schema(self, dataset: str, table: str, deadline: Deadline) -> Schema | None: ...

    def forget(self, dataset: str, table: str) -> None: ...


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
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _parse(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)  # the form we write (…Z) parses here, fast
    except ValueError:
        parsed = values.parse_timestamp(text)
        if parsed is None:
            raise ValueError(f"not a timestamp: {text!r}") from None
        return parsed


@dataclass(frozen=True)
class Layout:
    """One table's row descriptor and the message class made from it."""

    schema: Schema
    descriptor: descriptor_pb2.DescriptorProto
    row_class: type[Message]
    fields: frozenset[str]
    timestamps: frozenset[str]
    descriptor_bytes: int

    def encode(self, row: dict[str, Any]) -> bytes:
        present = {k: v for k, v in row.items() if v is not None}
        for name in self.timestamps.intersection(present):
            present[name] = timestamp_micros(present[name])
        return bytes(self.row_class(**present).SerializeToString())


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
    """Bytes one serialized row adds to a request: its tag, its length prefix, itself."""
    return 1 + len(_varint(size)) + size


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


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
class _Outcome:
    """What one AppendRows call left to do."""

    refused: list[RowRefusal] = field(default_factory=list)
    retry: list[int] = field(default_factory=list)
    pause: bool = False  # back off before the retry
    stale: bool = False  # the layout may no longer match the table: read it again before the retry


def _refusal(index: int, message: str, location: str = "") -> RowRefusal:
    return RowRefusal(index, [{"reason": "invalid", "location": location, "message": message}])


class StorageWriter:
    """Appends rows to tables' default streams; one instance per function instance (thread-safe: its
    only state is a cache of row layouts, replaced whole)."""

    def __init__(
        self,
        client: BigQueryWriteClient,
        project: str,
        tables: Tables,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.project = project
        self.tables = tables
        self._sleep = sleep
        self._layouts: dict[tuple[str, str], Layout] = {}
        self.appends = 0  # AppendRows calls made (for the benchmark's requests per rows)

    def write(
        self,
        dataset: str,
        table: str,
        rows: Sequence[dict[str, Any]],
        insert_ids: Sequence[str],
        deadline: Deadline,
    ) -> list[RowRefusal]:
        """Append `rows`; returns the rows refused for themselves, sorted by index. `insert_ids` are not
        sent: the default stream does not deduplicate (the `<table>_view` views do)."""
        if len(rows) != len(insert_ids):
            raise ValueError("one insert id per row")
        refused: list[RowRefusal] = []
        pending = list(range(len(rows)))
        delay = _FIRST_DELAY
        while pending:
            layout = self._layout(dataset, table, rows, pending, deadline)
            encoded, bad = self._encode(dataset, table, layout, rows, pending, deadline)
            refused += bad
            budget = APPEND_BYTES_PER_REQUEST - self._overhead(dataset, table, layout)
            sizes = {i: _row_bytes(len(body)) for i, body in encoded.items()}
            refused += [_too_big(i, sizes[i], budget) for i in encoded if sizes[i] > budget]
            retry: list[int] = []
            for request in _requests([i for i in encoded if sizes[i] <= budget], sizes, budget):
                outcome = self._append(dataset, table, layout, request, encoded, deadline)
                refused += outcome.refused
                retry += outcome.retry
                if outcome.stale:
                    self._layouts.pop((dataset, table), None)
                if outcome.pause:
                    delay = self._pause(delay, deadline)
            pending = sorted(retry)
        return sorted(refused, key=lambda r: r.index)

    # -- the row layout ------------------------------------------------------------------------------

    def _layout(
        self, dataset: str, table: str, rows: Sequence[dict[str, Any]], pending: list[int], deadline: Deadline
    ) -> Layout:
        """The cached layout, or one built from a fresh read when the rows carry a column it lacks."""
        needed = {name for i in pending for name, value in rows[i].items() if value is not None}
        layout = self._layouts.get((dataset, table))
        delay = _FIRST_DELAY
        for attempt in range(_SCHEMA_READS):
            if layout is not None and needed <= layout.fields:
                return layout
            if attempt:
                delay = self._pause(delay, deadline)
            layout = self._refresh(dataset, table, deadline)
        assert layout is not None
        missing = sorted(needed - layout.fields)
        self.tables.forget(dataset, table)  # the redelivery's ensure_table reads it fresh and adds them
        raise TransientError(f"{dataset}.{table} lacks {missing[:5]} after {_SCHEMA_READS} reads; redeliver")

    def _refresh(self, dataset: str, table: str, deadline: Deadline) -> Layout:
        schema = self.tables.existing_schema(dataset, table, deadline)
        if schema is None:
            self._layouts.pop((dataset, table), None)
            self.tables.forget(dataset, table)  # the redelivery creates it again
            raise TransientError(f"{dataset}.{table} was not found; redeliver")
        layout = build_layout(schema)
        self._layouts[(dataset, table)] = layout
        return layout

    def _encode(
        self,
        dataset: str,
        table: str,
        layout: Layout,
        rows: Sequence[dict[str, Any]],
        pending: list[int],
        deadline: Deadline,
    ) -> tuple[dict[int, bytes], list[RowRefusal]]:
        """Serialized rows; a row whose values do not fit the table's types is refused for itself, as
        BigQuery would, unless the table changed types under us (then the message is re-fitted)."""
        encoded: dict[int, bytes] = {}
        failed: dict[int, str] = {}
        for i in pending:
            try:
                encoded[i] = layout.encode(rows[i])
            except (TypeError, ValueError, OverflowError) as exc:
                failed[i] = str(exc)
        if not failed:
            return encoded, []
        fresh = self._refresh(dataset, table, deadline)
        carried = {name for i in failed for name, value in rows[i].items() if value is not None}
        if any(layout.schema.get(name) != fresh.schema.get(name) for name in carried):
            self.tables.forget(dataset, table)
            raise TransientError(f"{dataset}.{table} changed types under this instance; redeliver to re-fit")
        return encoded, [_refusal(i, why) for i, why in failed.items()]

    def _overhead(self, dataset: str, table: str, layout: Layout) -> int:
        return _FIXED_REQUEST_BYTES + len(default_stream(self.project, dataset, table)) + layout.descriptor_bytes

    # -- one AppendRows call ---------------------------------------------------------------------------

    def _append(
        self,
        dataset: str,
        table: str,
        layout: Layout,
        request: list[int],
        encoded: dict[int, bytes],
        deadline: Deadline,
    ) -> _Outcome:
        stream = default_stream(self.project, dataset, table)
        proto = types.AppendRowsRequest.pb()(write_stream=stream)
        proto.proto_rows.writer_schema.proto_descriptor.CopyFrom(layout.descriptor)
        proto.proto_rows.rows.serialized_rows.extend(encoded[i] for i in request)
        try:
            response = self._call(stream, types.AppendRowsRequest.wrap(proto), deadline)
        except gexc.NotFound:
            self._refresh(dataset, table, deadline)  # raises when the table is gone; else not visible yet
            return _Outcome(retry=request, pause=True)
        except gexc.InvalidArgument as exc:
            if not _SCHEMA_MISMATCH.search(str(exc)):
                raise  # a request we should never have made: a bug, not the rows' fault
            return _Outcome(retry=request, pause=True, stale=True)
        except Exception as exc:
            if not (is_transient(exc) or isinstance(exc, (gexc.Aborted, gexc.Unknown, gexc.Cancelled))):
                raise
            return _Outcome(retry=request, pause=True)
        if response.row_errors:
            # No row of the request was appended: the refused ones are out, the others go again at once.
            bad = {int(e.index): e.message for e in response.row_errors}
            refused = [_refusal(request[n], why) for n, why in bad.items() if 0 <= n < len(request)]
            return _Outcome(refused=refused, retry=[i for n, i in enumerate(request) if n not in bad])
        code = response.error.code if "error" in response else 0
        if code == 0:
            return _Outcome()  # committed: the default stream's rows are durable once answered
        if code == _NOT_FOUND:
            self._refresh(dataset, table, deadline)
            return _Outcome(retry=request, pause=True)
        if code == _INVALID_ARGUMENT and _SCHEMA_MISMATCH.search(response.error.message):
            return _Outcome(retry=request, pause=True, stale=True)
        if code in _TRANSIENT_CODES:
            return _Outcome(retry=request, pause=True)
        raise RuntimeError(f"AppendRows to {stream} answered {code}: {response.error.message}")

    def _call(self, stream: str, request: types.AppendRowsRequest, deadline: Deadline) -> types.AppendRowsResponse:
        """One connection, one request, its one response (read to the end, so the call closes cleanly).
        The client's own retry is off: it would resend an iterator already consumed, past our deadline."""
        self.appends += 1
        responses = self.client.append_rows(
            iter([request]),
            retry=None,
            timeout=deadline.budget(20),
            metadata=(("x-goog-request-params", f"write_stream={stream}"),),
        )
        answer = None
        try:
            for response in responses:
                answer = answer or response
        except grpc.RpcError as exc:
            raise gexc.from_grpc_error(exc) from exc  # type: ignore[no-untyped-call]
        if answer is None:
            raise TransientError(f"AppendRows to {stream} closed without an answer")
        return answer

    def _pause(self, delay: float, deadline: Deadline) -> float:
        """Sleep `delay` (TransientError when the deadline leaves no time); the next delay."""
        self._sleep(min(deadline.budget(delay), delay))
        return min(delay * 2, _MAX_DELAY)


def _too_big(index: int, size: int, budget: int) -> RowRefusal:
    return _refusal(index, f"Row is {size} bytes as protobuf; one AppendRows request carries at most {budget}.")
