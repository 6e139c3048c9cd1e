"""An in-memory stand-in for the Storage Write API's BigQueryWriteClient, as strict as BigQuery where
bqemulator is lenient. It sees the tables of a StrictFakeBigQuery (the REST fake) and:
- serves each `append_rows` call as one connection, answering each request as it is read (the first one
  at once, as the real client reads the first answer before it returns); a connection can carry many
  requests, and rows are committed only when their answer is read, so a writer that returned early would
  lose them here;
- lags: a column added to a table less than `lag_seconds` ago (on the REST fake's clock) is invisible to
  appends, which are then refused whole as BigQuery refuses them: INVALID_ARGUMENT "Input schema has more
  fields than BigQuery schema, extra fields: 'a,b'" in the response's error, with a StorageError of code
  SCHEMA_MISMATCH_EXTRA_FIELDS in its details (writers/storage_write.py cites both);
- tells a connection that outlived a column's lag about it: the next answer on it carries `updated_schema`
  (the table as the stream now sees it), once, as BigQuery does for a schema update;
- refuses requests without `write_stream` (bqemulator answers 404 "Stream not found"), over 10 MB, a first
  request without a writer schema, descriptor fields the table lacks or types that do not match the
  column, and rows that do not parse; answers `row_errors` for the rows `refuse` picks (and appends none
  of the request, as BigQuery); raises or answers the failures queued in `failures` (an exception raised
  ends its connection, as a gRPC error does)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud.bigquery_storage_v1 import types
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.rpc import status_pb2

from tests.fakes import StrictFakeBigQuery

WRITE_API_LIMIT_BYTES = 10 * 1024 * 1024
_FIELD = descriptor_pb2.FieldDescriptorProto
_PROTO_OF = {
    "STRING": _FIELD.TYPE_STRING,
    "INT64": _FIELD.TYPE_INT64,
    "INTEGER": _FIELD.TYPE_INT64,
    "FLOAT64": _FIELD.TYPE_DOUBLE,
    "FLOAT": _FIELD.TYPE_DOUBLE,
    "BOOL": _FIELD.TYPE_BOOL,
    "BOOLEAN": _FIELD.TYPE_BOOL,
    "TIMESTAMP": _FIELD.TYPE_INT64,
}
INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE, INTERNAL = 3, 5, 14, 13


def _row_class(descriptor: descriptor_pb2.DescriptorProto) -> Any:
    file = descriptor_pb2.FileDescriptorProto(name=f"fake_{uuid.uuid4().hex}.proto", syntax="proto2")
    file.message_type.add().CopyFrom(descriptor)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(descriptor.name))


def extra_fields_error(stream: str, fields: list[str]) -> status_pb2.Status:
    """BigQuery's answer to an append whose descriptor has fields the stream does not see."""
    message = f"Input schema has more fields than BigQuery schema, extra fields: '{','.join(fields)}'"
    detail = any_pb2.Any()
    detail.Pack(
        types.StorageError.pb()(
            code=types.StorageError.StorageErrorCode.SCHEMA_MISMATCH_EXTRA_FIELDS, entity=stream, error_message=message
        )
    )
    return status_pb2.Status(code=INVALID_ARGUMENT, message=f"{message} Entity: {stream}", details=[detail])


class FakeWriteClient:
    def __init__(self, bq: StrictFakeBigQuery, *, lag_seconds: float = 0.0) -> None:
        self.bq = bq
        self.lag_seconds = lag_seconds
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, int, int]] = []  # (table, rows, serialized bytes) of every request
        self.descriptors: list[tuple[str, frozenset[str]]] = []  # (table, descriptor fields) of every request
        # (table, extra fields, row ids, when) of every append refused for fields the stream does not see
        self.refusals: list[tuple[str, tuple[str, ...], tuple[str, ...], float]] = []
        self.updated_schemas: list[tuple[str, frozenset[str]]] = []  # (table, columns) of every updated_schema sent
        self.connections = 0
        # Queued outcomes of the next requests: an exception to raise, or an error code (with message) to answer.
        self.failures: list[Exception | tuple[int, str]] = []
        self.refuse: Callable[[dict[str, Any]], str | None] = lambda row: None

    def visible(self, key: str) -> dict[str, str]:
        """The table's columns the Write API sees now."""
        now = self.bq.clock()
        return {
            f.name.lower(): f.field_type
            for f in self.bq.tables[key].schema
            if now - self.bq.added_at.get((key, f.name.lower()), -float("inf")) >= self.lag_seconds
        }

    def append_rows(self, requests: Iterator[Any], **kwargs: Any) -> Iterator[types.AppendRowsResponse]:
        assert kwargs.get("retry") is None, "the client's own retry must be off (it would resend a spent iterator)"
        assert kwargs.get("timeout"), "a connection must have a deadline"
        self.connections += 1
        answers = self._connection(requests)
        first = next(answers)  # the real client reads the first answer before it returns
        return _chain(first, answers)

    def _connection(self, requests: Iterator[Any]) -> Iterator[types.AppendRowsResponse]:
        row_class = None
        known: dict[str, str] | None = None  # the table as this connection last told the writer
        for wrapped in requests:
            request = types.AppendRowsRequest.pb(wrapped)
            size = request.ByteSize()
            if not request.write_stream:
                raise gexc.NotFound("Stream not found: ")
            key = self._table_key(request.write_stream)
            self.requests.append((key, len(request.proto_rows.rows.serialized_rows), size))
            if self.failures:
                failure = self.failures.pop(0)
                if isinstance(failure, Exception):
                    raise failure
                yield self._error(request.write_stream, status_pb2.Status(code=failure[0], message=failure[1]))
                continue
            if size > WRITE_API_LIMIT_BYTES:
                raise gexc.InvalidArgument(f"AppendRows request too large: {size} limit {WRITE_API_LIMIT_BYTES}")
            if key not in self.bq.tables:
                raise gexc.NotFound(f"Requested entity was not found. Entity: {request.write_stream}")
            if request.proto_rows.HasField("writer_schema"):
                descriptor = request.proto_rows.writer_schema.proto_descriptor
                row_class = _row_class(descriptor)
            elif row_class is None:
                raise gexc.InvalidArgument("Writer schema is missing on the first request of a connection")
            fields = [f for f in row_class.DESCRIPTOR.fields]
            self.descriptors.append((key, frozenset(f.name.lower() for f in fields)))
            visible = self.visible(key)
            if known is None:
                known = visible
            extra = [f.name for f in fields if f.name.lower() not in visible]
            if extra:
                ids = tuple(
                    str(getattr(row_class.FromString(body), "id", ""))
                    for body in request.proto_rows.rows.serialized_rows
                )
                self.refusals.append((key, tuple(extra), ids, self.bq.clock()))
                yield self._error(request.write_stream, extra_fields_error(request.write_stream, extra))
                continue
            for f in fields:
                if _PROTO_OF.get(visible[f.name.lower()]) != f.type:
                    raise gexc.InvalidArgument(f"The proto field mismatched with BigQuery field at Row.{f.name}")
            decoded = []
            for body in request.proto_rows.rows.serialized_rows:
                message = row_class()
                message.ParseFromString(body)  # raises DecodeError on rows that are not this descriptor's
                decoded.append({f.name: getattr(message, f.name) for f, _ in message.ListFields()})
            bad = {i: why for i, row in enumerate(decoded) if (why := self.refuse(row)) is not None}
            if bad:
                response = self._error(
                    request.write_stream, status_pb2.Status(code=INVALID_ARGUMENT, message="Rows have errors")
                )
                for index, why in bad.items():
                    response.row_errors.append(types.RowError(index=index, code=1, message=why))
                yield response
                continue
            self.rows.setdefault(key, []).extend(decoded)  # committed as the answer is read, not before
            response = types.AppendRowsResponse(write_stream=request.write_stream, append_result={})
            if set(visible) - set(known):
                known = visible
                self.updated_schemas.append((key, frozenset(visible)))
                response.updated_schema = types.TableSchema(
                    fields=[types.TableFieldSchema(name=name) for name in visible]
                )
            yield response

    @staticmethod
    def _error(stream: str, status: status_pb2.Status) -> types.AppendRowsResponse:
        return types.AppendRowsResponse(write_stream=stream, error=status)

    @staticmethod
    def _table_key(stream: str) -> str:
        parts = stream.split("/")
        assert parts[0] == "projects" and parts[2] == "datasets" and parts[4] == "tables", stream
        assert parts[6:] == ["streams", "_default"], stream
        return f"{parts[1]}.{parts[3]}.{parts[5]}"


def _chain(
    first: types.AppendRowsResponse, rest: Iterator[types.AppendRowsResponse]
) -> Iterator[types.AppendRowsResponse]:
    yield first
    yield from rest
