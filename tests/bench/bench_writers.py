"""The two BigQuery writers side by side on the same 1,000 rows: rows per request and client CPU per row
(time.process_time around serialization and the call). Both run their real code down to the wire and no
further: insertAll through google-cloud-bigquery's own Client (its JSON body built and handed to an HTTP
session that answers `{}` at once), the Storage Write API through StorageWriter down to the serialized
AppendRowsRequest (what gRPC would send; answered with a success). Local wall time of the Write API on
bqemulator is meaningless (~0.5 s per append), so neither writer is timed against the emulator.

    PYTHONPATH=functions:. .venv/bin/python -m tests.bench.bench_writers
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import requests
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from google.cloud.bigquery_storage_v1 import types

from personas_warehouse.bigquery import Deadline, Schema, Warehouse
from personas_warehouse.storage_write import StorageWriter

ROWS = 1_000
RUNS = 5
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


def sample_rows(n: int = ROWS) -> list[dict[str, Any]]:
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
        for i in range(n)
    ]


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
    """The Write API's end of the wire: serializes the request as gRPC would, answers success."""

    def __init__(self) -> None:
        self.calls = 0

    def append_rows(self, requests: Iterator[types.AppendRowsRequest], **_: Any) -> Iterator[Any]:
        for request in requests:
            self.calls += 1
            types.AppendRowsRequest.serialize(request)
            yield types.AppendRowsResponse(append_result=types.AppendRowsResponse.AppendResult())


class _Tables:
    def existing_schema(self, dataset: str, table: str, deadline: Deadline) -> Schema:
        return SCHEMA

    def forget(self, dataset: str, table: str) -> None:
        pass


def _insert_all() -> tuple[float, int]:
    session = _Session()
    client = bigquery.Client(project="bench", credentials=AnonymousCredentials(), _http=session)  # type: ignore[no-untyped-call]
    warehouse = Warehouse(client)
    rows = sample_rows()
    ids = [r["id"] for r in rows]
    warehouse.insert(DATASET, TABLE, rows[:1], ids[:1], Deadline(60))  # warm-up: the client's first call
    session.calls = 0
    started = time.process_time()
    assert warehouse.insert(DATASET, TABLE, rows, ids, Deadline(60)) == []
    return time.process_time() - started, session.calls


def _storage_write() -> tuple[float, int]:
    client = _WriteClient()
    writer = StorageWriter(client, "bench", _Tables())  # type: ignore[arg-type]
    rows = sample_rows()
    ids = [r["id"] for r in rows]
    writer.write(DATASET, TABLE, rows[:1], ids[:1], Deadline(60))  # warm-up: builds the row descriptor
    client.calls = 0
    started = time.process_time()
    assert writer.write(DATASET, TABLE, rows, ids, Deadline(60)) == []
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


def main() -> None:
    figures = measure_writers()
    print(f"{ROWS} rows, median of {RUNS} runs (client CPU: serialization and the call, no network)")
    print(f"{'writer':<15}{'requests':>10}{'rows/request':>14}{'CPU us/row':>12}")
    for name, f in figures.items():
        print(f"{name:<15}{f['requests']:>10.0f}{f['rows_per_request']:>14.0f}{f['cpu_us_per_row']:>12.1f}")
    ratio = figures["storage_write"]["cpu_us_per_row"] / figures["insert_all"]["cpu_us_per_row"]
    print(f"storage_write / insert_all CPU per row: {ratio:.2f}x")


if __name__ == "__main__":
    main()
