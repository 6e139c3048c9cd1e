"""An in-memory stand-in for the Storage Write API's BigQueryWriteClient, as strict as BigQuery where
bqemulator is lenient: it sees the tables of a FakeBigQuery (the REST fake), refuses requests without
`write_stream` (bqemulator answers 404 "Stream not found"), over 10 MB, without a writer schema, with a
descriptor field the table lacks or types that do not match the column (INVALID_ARGUMENT, as BigQuery),
and rows that do not parse; it answers `row_errors` for the rows `refuse` picks (and appends none of the
request, as BigQuery), and raises or answers the failures queued in `failures`. Rows are committed only
when the caller reads the response, so a writer that returned early would lose them here."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud.bigquery_storage_v1 import types
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.rpc import status_pb2

from tests.fakes import FakeBigQuery

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


class FakeWriteClient:
    def __init__(self, bq: FakeBigQuery) -> None:
        self.bq = bq
        self.rows: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, int, int]] = []  # (table, rows, serialized bytes) of every request
        # Queued outcomes of the next calls: an exception to raise, or an error code (with message) to answer.
        self.failures: list[Exception | tuple[int, str]] = []
        # Columns the Write API does not see yet (BigQuery's lag after a column is added): name -> calls left.
        self.hidden: dict[str, int] = {}
        self.refuse: Callable[[dict[str, Any]], str | None] = lambda row: None

    def append_rows(self, requests: Iterator[Any], **kwargs: Any) -> Iterator[types.AppendRowsResponse]:
        assert kwargs.get("retry") is None, "the client's own retry must be off (it would resend a spent iterator)"
        batch = list(requests)
        assert len(batch) == 1, "one request per call"
        request = types.AppendRowsRequest.pb(batch[0])
        size = request.ByteSize()
        if not request.write_stream:
            raise gexc.NotFound("Stream not found: ")
        key = self._table_key(request.write_stream)
        self.requests.append((key, len(request.proto_rows.rows.serialized_rows), size))
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return iter([self._error(request.write_stream, *failure)])
        if size > WRITE_API_LIMIT_BYTES:
            raise gexc.InvalidArgument(f"AppendRows request too large: {size} limit {WRITE_API_LIMIT_BYTES}")
        if key not in self.bq.tables:
            raise gexc.NotFound(f"Requested entity was not found. Entity: {request.write_stream}")
        if not request.proto_rows.HasField("writer_schema"):
            raise gexc.InvalidArgument("Writer schema is missing on the first request of a connection")
        descriptor = request.proto_rows.writer_schema.proto_descriptor
        table = {f.name.lower(): f.field_type for f in self.bq.tables[key].schema}
        visible = {n: t for n, t in table.items() if self.hidden.get(n, 0) <= 0}
        self.hidden = {n: left - 1 for n, left in self.hidden.items() if n in table}
        extra = [f.name for f in descriptor.field if f.name.lower() not in visible]
        if extra:
            raise gexc.InvalidArgument(
                f"Input schema has more fields than BigQuery schema, extra fields: '{','.join(extra)}'"
            )
        for f in descriptor.field:
            if _PROTO_OF.get(visible[f.name.lower()]) != f.type:
                raise gexc.InvalidArgument(f"The proto field mismatched with BigQuery field at Row.{f.name}")
        row_class = _row_class(descriptor)
        decoded = []
        for body in request.proto_rows.rows.serialized_rows:
            message = row_class()
            message.ParseFromString(body)  # raises DecodeError on rows that are not this descriptor's
            decoded.append({f.name: getattr(message, f.name) for f, _ in message.ListFields()})
        bad = {i: why for i, row in enumerate(decoded) if (why := self.refuse(row)) is not None}
        if bad:
            response = self._error(request.write_stream, INVALID_ARGUMENT, "Rows have errors")
            for index, why in bad.items():
                response.row_errors.append(types.RowError(index=index, code=1, message=why))
            return iter([response])
        return self._commit(key, request.write_stream, decoded)

    def _commit(self, key: str, stream: str, decoded: list[dict[str, Any]]) -> Iterator[types.AppendRowsResponse]:
        """Rows become durable as the response is read, not before."""
        self.rows.setdefault(key, []).extend(decoded)
        yield types.AppendRowsResponse(write_stream=stream, append_result=types.AppendRowsResponse.AppendResult())

    @staticmethod
    def _error(stream: str, code: int, message: str) -> types.AppendRowsResponse:
        return types.AppendRowsResponse(write_stream=stream, error=status_pb2.Status(code=code, message=message))

    @staticmethod
    def _table_key(stream: str) -> str:
        parts = stream.split("/")
        assert parts[0] == "projects" and parts[2] == "datasets" and parts[4] == "tables", stream
        assert parts[6:] == ["streams", "_default"], stream
        return f"{parts[1]}.{parts[3]}.{parts[5]}"
