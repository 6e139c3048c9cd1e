"""The two BigQuery writers side by side, on client CPU (time.process_time) and requests; local wall time
of either against bqemulator says nothing about BigQuery's, so neither is timed that way.

1. A batch: the same 1,000 fitted `identifies` rows handed to each writer at once (prepared as
   Warehouse.insert prepares them), written by its real code down to the wire and no further: insertAll
   through google-cloud-bigquery's own Client (its JSON body built and handed to an HTTP session that
   answers `{}` at once), the Storage Write API down to the serialized AppendRowsRequest (what gRPC would
   send; answered with a success). Rows per request and CPU per row.
2. Shared writes: WRITES writes of GROUP rows each (what a group carries with a few dozen single-call
   requests in flight), over the real transports to a local server in another process that answers each
   request at once (so the CPU measured is the client's alone): insertAll over HTTP/1.1 (keep-alive), the
   Write API over gRPC with its kept connection, and the Write API with a new connection per append
   (MIN_CONNECTION_LIFE above CONNECTION_SECONDS: nothing is ever kept). CPU per write and connections.

    PYTHONPATH=functions:. .venv/bin/python -m tests.bench.bench_writers
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import requests
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from google.cloud.bigquery_storage_v1 import BigQueryWriteClient, types
from google.cloud.bigquery_storage_v1.services.big_query_write.transports import BigQueryWriteGrpcTransport

import personas_warehouse.writers.storage_write as storage_write
from personas_warehouse.bigquery import Deadline, Schema
from personas_warehouse.writers.contract import Entry, Writer
from personas_warehouse.writers.insert_all import InsertAllWriter
from personas_warehouse.writers.storage_write import StorageWriteWriter

ROWS = 1_000
RUNS = 5
WRITES, GROUP = 300, 10
DATASET, TABLE = "personas_bench", "identifies"
SCHEMA: Schema = {
    "id": "STRING",
    "user_id": "STRING",
    "anonymous_id": "STRING",
    "received_at": "TIMESTAMP",
    "sent_at": "TIMESTAMP",
    "original_timestamp": "TIMESTAMP",
    "timestamp": "TIMESTAMP",
    "loaded_at": "TIMESTAMP",
    "context_personas_computation_key": "STRING",
    "context_personas_computation_class": "STRING",
    "first_time_shopper": "BOOL",
    "total_revenue_180_days": "FLOAT64",
    "orders": "INT64",
    "email": "STRING",
}


def sample_rows(n: int = ROWS, start: int = 0) -> list[dict[str, Any]]:
    """Rows as ingest hands them to the writer (fitted identifies rows of Personas audience calls)."""
    return [
        {
            "id": f"msg-{i:06d}",
            "user_id": f"user-{i % 97}",
            "anonymous_id": None,
            "received_at": "2026-11-01T10:00:00.123456Z",
            "sent_at": "2026-11-01T09:59:59.000000Z",
            "original_timestamp": None,
            "timestamp": "2026-11-01T10:00:00.000000Z",
            "loaded_at": "2026-11-01T10:00:01.000000Z",
            "context_personas_computation_key": "first_time_shopper",
            "context_personas_computation_class": "audience",
            "first_time_shopper": i % 2 == 0,
            "total_revenue_180_days": 450.25 + i,
            "orders": i,
            "email": f"user{i}@example.com",
        }
        for i in range(start, start + n)
    ]


def entries(writer: Writer, rows: Sequence[dict[str, Any]]) -> list[Entry]:
    return [writer.prepare(DATASET, TABLE, row, row["id"], SCHEMA) for row in rows]


class _Session(requests.Session):
    """What google-cloud-bigquery's HTTP layer talks to: every request answered 200 `{}` at once."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.is_mtls = False  # google.auth's AuthorizedSession has it; the client reads it

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.calls += 1
        response = requests.Response()
        response.status_code = 200
        response._content = b"{}"
        response.headers["content-type"] = "application/json"
        return response


class _WriteClient:
    """The Write API's end of the wire: serializes each request as gRPC would, answers success."""

    def __init__(self) -> None:
        self.calls = 0

    def append_rows(self, requests: Iterator[types.AppendRowsRequest], **_: Any) -> Iterator[Any]:
        for request in requests:
            self.calls += 1
            types.AppendRowsRequest.serialize(request)
            yield types.AppendRowsResponse(append_result=types.AppendRowsResponse.AppendResult())


class _Tables:
    """The table catalog as the writers see it: the table has SCHEMA."""

    def existing_schema(self, dataset: str, table: str, deadline: Deadline) -> Schema:
        return SCHEMA

    def restore(self, dataset: str, table: str, deadline: Deadline) -> Schema:
        return SCHEMA

    def add_columns(self, dataset: str, table: str, columns: dict[str, str], deadline: Deadline) -> Schema:
        raise AssertionError("the bench table has every column")

    def forget(self, dataset: str, table: str) -> None:
        pass


def _write(writer: Writer, rows: list[dict[str, Any]]) -> None:
    """As Warehouse.insert does it in one request: prepare the rows, write them."""
    assert writer.write(DATASET, TABLE, entries(writer, rows), Deadline(60), _Tables()) == {}


# -- 1. a batch ---------------------------------------------------------------------------------------


def _insert_all() -> tuple[float, int]:
    session = _Session()
    client = bigquery.Client(project="bench", credentials=AnonymousCredentials(), _http=session)  # type: ignore[no-untyped-call]
    writer = InsertAllWriter(client)
    rows = sample_rows()
    _write(writer, rows[:1])  # warm-up: the client's first call
    session.calls = 0
    started = time.process_time()
    _write(writer, rows)
    return time.process_time() - started, session.calls


def _storage_write() -> tuple[float, int]:
    client = _WriteClient()
    writer = StorageWriteWriter(client, "bench")  # type: ignore[arg-type]
    rows = sample_rows()
    _write(writer, rows[:1])  # warm-up: builds the row layout, learns what the stream sees
    client.calls = 0
    started = time.process_time()
    _write(writer, rows)
    return time.process_time() - started, client.calls


def measure_writers(runs: int = RUNS) -> dict[str, dict[str, float]]:
    """Median over `runs` of client CPU per row (microseconds) and rows per request, per writer."""
    figures: dict[str, dict[str, float]] = {}
    for name, measure in (("insert_all", _insert_all), ("storage_write", _storage_write)):
        samples = [measure() for _ in range(runs)]
        cpu = statistics.median(s[0] for s in samples)
        calls = samples[0][1]
        figures[name] = {"cpu_us_per_row": cpu / ROWS * 1e6, "rows_per_request": ROWS / calls, "requests": calls}
    return figures


# -- 2. shared writes over the real transports ------------------------------------------------------


_OK = types.AppendRowsResponse.serialize(
    types.AppendRowsResponse(append_result=types.AppendRowsResponse.AppendResult())
)


def serve() -> None:
    """The server side of section 2 (run in a process of its own): AppendRows answers success to each
    request; HTTP answers `{}` to each insertAll POST. Prints its two ports, then serves until stdin closes."""

    def append_rows(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for _ in requests:
            yield _OK

    handler = grpc.method_handlers_generic_handler(
        "google.cloud.bigquery.storage.v1.BigQueryWrite",
        {"AppendRows": grpc.stream_stream_rpc_method_handler(append_rows)},
    )
    server = grpc.server(ThreadPoolExecutor(8))
    server.add_generic_rpc_handlers((handler,))
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    class InsertAll(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), InsertAll)
    ThreadPoolExecutor(1).submit(http.serve_forever)
    print(grpc_port, http.server_address[1], flush=True)
    sys.stdin.read()
    os._exit(0)  # the servers' threads would keep the process alive


def _shared_writes(writer: Writer) -> float:
    """Client CPU (process time) of WRITES writes of GROUP rows each, after one warm-up write."""
    _write(writer, sample_rows(GROUP, start=10**6))
    started = time.process_time()
    for n in range(WRITES):
        _write(writer, sample_rows(GROUP, start=n * GROUP))
    return time.process_time() - started


def measure_shared_writes(runs: int = 3) -> dict[str, dict[str, float]]:
    """Median over `runs` of client CPU per shared write of GROUP rows (microseconds), and connections opened."""
    server = subprocess.Popen(
        [sys.executable, "-c", "import tests.bench.bench_writers as b; b.serve()"],
        cwd=Path(__file__).resolve().parents[2],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        grpc_port, http_port = map(int, server.stdout.readline().split())
        figures: dict[str, dict[str, float]] = {}
        for name in ("insert_all", "storage_write", "storage_write_no_reuse"):
            samples, connections = [], 0.0
            for _ in range(runs):
                if name == "insert_all":
                    client = bigquery.Client(
                        project="bench",
                        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                        client_options=ClientOptions(api_endpoint=f"http://127.0.0.1:{http_port}"),
                    )
                    samples.append(_shared_writes(InsertAllWriter(client)))
                    continue
                channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
                write_client = BigQueryWriteClient(transport=BigQueryWriteGrpcTransport(channel=channel))  # type: ignore[no-untyped-call]
                writer = StorageWriteWriter(write_client, "bench")
                kept = storage_write.MIN_CONNECTION_LIFE
                if name == "storage_write_no_reuse":
                    storage_write.MIN_CONNECTION_LIFE = storage_write.CONNECTION_SECONDS + 1
                try:
                    samples.append(_shared_writes(writer))
                finally:
                    storage_write.MIN_CONNECTION_LIFE = kept
                connections = writer.connections.opened
                channel.close()
            cpu = statistics.median(samples)
            figures[name] = {
                "cpu_us_per_write": cpu / WRITES * 1e6,
                "cpu_us_per_row": cpu / (WRITES * GROUP) * 1e6,
                "connections": connections,
            }
        return figures
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(timeout=30)


def main() -> None:
    figures = measure_writers()
    print(f"1. {ROWS} rows at once, median of {RUNS} runs (client CPU: serialization and the call, no network)")
    print(f"{'writer':<15}{'requests':>10}{'rows/request':>14}{'CPU us/row':>12}")
    for name, f in figures.items():
        print(f"{name:<15}{f['requests']:>10.0f}{f['rows_per_request']:>14.0f}{f['cpu_us_per_row']:>12.1f}")
    ratio = figures["storage_write"]["cpu_us_per_row"] / figures["insert_all"]["cpu_us_per_row"]
    print(f"storage_write / insert_all CPU per row: {ratio:.2f}x")
    shared = measure_shared_writes()
    print(f"\n2. {WRITES} writes of {GROUP} rows over the real transports to a local server, median of 3 runs")
    print(f"{'writer':<24}{'CPU us/write':>14}{'CPU us/row':>12}{'connections':>13}")
    for name, f in shared.items():
        print(f"{name:<24}{f['cpu_us_per_write']:>14.0f}{f['cpu_us_per_row']:>12.1f}{f['connections']:>13.0f}")
    kept, each = shared["storage_write"]["cpu_us_per_write"], shared["storage_write_no_reuse"]["cpu_us_per_write"]
    print(f"kept connection / a connection per append: {kept / each:.2f}x")
    print(f"storage_write (kept) / insert_all per write: {kept / shared['insert_all']['cpu_us_per_write']:.2f}x")


if __name__ == "__main__":
    main()
