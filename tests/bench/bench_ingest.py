"""Benchmarks of ingest, printed as ratios against baselines measured in the same process (this
machine is noisy: absolute numbers mean little, ratios do). Not part of the test suite.

1. Core CPU per call: decode + validate + shape + fit, against json.loads of the same bytes.
2. Core CPU per call in a 100-call batch envelope, against single-call messages.
3. Peak memory of shaping 1,000 calls (tracemalloc), against holding their parsed JSON.
4. Write path on bqemulator (started here on spare ports): calls/s with 100-call batch messages,
   against one call per message (one insertAll each).

Run: make bench
"""

from __future__ import annotations

import base64
import json
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from personas_warehouse.messages import PubSubMessage, decode
from personas_warehouse.settings import Settings, SpaceConfig
from personas_warehouse.shaping import fit_rows, plan_columns, shape

SETTINGS = Settings()
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def personas_identify(i: int) -> dict[str, Any]:
    return {
        "type": "identify",
        "userId": f"u{i}",
        "messageId": f"m{i}",
        "timestamp": "2026-11-01T10:00:00.123Z",
        "sentAt": "2026-11-01T10:00:01Z",
        "traits": {"first_time_shopper": i % 2 == 0, "total_revenue_180_days": 450.0 + i},
        "context": {
            "personas": {
                "computation_class": "audience",
                "computation_id": "aud_1",
                "computation_key": "x",
                "namespace": "spa_1",
                "space_id": "spa_1",
            },
            "library": {"name": "unknown", "version": "unknown"},
        },
        "integrations": {"All": False, "Warehouses": {"all": True}},
        "channel": "server",
        "version": 2,
    }


def message(doc: Any, i: int) -> PubSubMessage:
    return PubSubMessage(f"p{i}", base64.b64encode(json.dumps(doc).encode()).decode(), NOW)


def core(msg: PubSubMessage) -> int:
    decoded = decode(msg, SETTINGS)
    rows = [r for c in decoded.calls for r in shape(c, received_at=NOW, insert_prefix=msg.message_id)]
    schema = dict.fromkeys(("first_time_shopper",), "BOOL")
    schema.update(plan_columns(rows, schema, SpaceConfig(), 5000))
    return len(fit_rows(rows, schema, SpaceConfig(), "2026-11-01T00:00:00Z").rows)


def per_call_seconds(fn: Callable[[], Any], calls: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best / calls


def bench_core() -> None:
    n = 2000
    singles = [message(personas_identify(i), i) for i in range(n)]
    raw = [base64.b64decode(m.data_b64) for m in singles]
    batches = [message({"batch": [personas_identify(i * 100 + j) for j in range(100)]}, i) for i in range(n // 100)]
    baseline = per_call_seconds(lambda: [json.loads(r) for r in raw], n)
    single = per_call_seconds(lambda: [core(m) for m in singles], n)
    batched = per_call_seconds(lambda: [core(m) for m in batches], n)
    print(f"core per call, single-call messages: {single / baseline:6.1f}x json.loads ({single * 1e6:.0f} us)")
    print(f"core per call, 100-call batches:     {batched / single:6.2f}x single-call messages")


def bench_memory() -> None:
    docs = [personas_identify(i) for i in range(1000)]
    tracemalloc.start()
    parsed = [json.loads(json.dumps(d)) for d in docs]
    _, baseline = tracemalloc.get_traced_memory()
    del parsed
    tracemalloc.reset_peak()
    msg = message({"batch": docs}, 0)
    tracemalloc.reset_peak()
    core(msg)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"peak memory shaping 1,000 calls:     {peak / baseline:6.2f}x holding their parsed JSON")


def bench_writes() -> None:
    from google.cloud import bigquery

    from infra.local.stack import StackConfig, running
    from personas_warehouse.bigquery import Warehouse, make_client
    from personas_warehouse.ingest import ingest

    config = StackConfig.private(28_000, "bench")
    with running(config):
        settings = Settings(project=config.project, bigquery_emulator_host=config.bigquery_url)
        warehouse = Warehouse(make_client(settings))
        assert isinstance(warehouse.client, bigquery.Client)
        ingest(message(personas_identify(-1), -1), warehouse, settings)  # create dataset, table, columns
        n = 200
        start = time.perf_counter()
        for i in range(n):
            ingest(message(personas_identify(i), i), warehouse, settings)
        single = n / (time.perf_counter() - start)
        start = time.perf_counter()
        for b in range(n // 100 * 5):
            ingest(
                message({"batch": [personas_identify(10_000 + b * 100 + j) for j in range(100)]}, 10_000 + b),
                warehouse,
                settings,
            )
        batched = n * 5 / (time.perf_counter() - start)
    print(
        f"bqemulator write path, calls/s:      {batched / single:6.1f}x with 100-call batches vs single calls "
        f"({single:.0f}/s single)"
    )


if __name__ == "__main__":
    bench_core()
    bench_memory()
    bench_writes()
