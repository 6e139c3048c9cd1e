"""Core CPU and memory of ingest, in process (section 4 of docs/performance.md; `make bench` runs it).

1. Core CPU per call: decode + validate + shape + fit (`core()`), against json.loads of the same bytes,
   both timed in the same repetition; the figure is the median of the repetitions' ratios.
2. Core CPU per call in 100-call batch envelopes, against single-call messages, the same way.
3. Memory after 10,000 calls: the whole ingest path (`ingest()` over `Warehouse` over a fake BigQuery
   client that keeps no rows), tracemalloc's current traced memory after 1,000 calls against after
   10,000: a flat line is a ratio of about 1.

Run alone: PYTHONPATH=functions:. python -m tests.bench.bench_ingest
"""

from __future__ import annotations

import base64
import contextlib
import gc
import json
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from personas_warehouse.messages import PubSubMessage, decode
from personas_warehouse.settings import Settings, SpaceConfig
from personas_warehouse.shaping import fit_rows, plan_columns, shape
from tests.fakes import FakeBigQuery

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


def cpu_seconds(fn: Callable[[], Any]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


@dataclass(frozen=True)
class CoreFigures:
    runs: int
    json_loads_us: float  # median CPU per call
    single_us: float
    batched_us: float
    single_vs_json: float  # median of the runs' ratios
    batched_vs_single: float


def measure_core(runs: int = 5, n: int = 2000) -> CoreFigures:
    """Each run times json.loads, single-call messages and 100-call batches back to back (same bytes)."""
    singles = [message(personas_identify(i), i) for i in range(n)]
    raw = [base64.b64decode(m.data_b64) for m in singles]
    batches = [message({"batch": [personas_identify(i * 100 + j) for j in range(100)]}, i) for i in range(n // 100)]
    core(singles[0])  # warm: imports, caches
    loads, single, batched = [], [], []
    for _ in range(runs):
        loads.append(cpu_seconds(lambda: [json.loads(r) for r in raw]) / n)
        single.append(cpu_seconds(lambda: [core(m) for m in singles]) / n)
        batched.append(cpu_seconds(lambda: [core(m) for m in batches]) / n)
    return CoreFigures(
        runs=runs,
        json_loads_us=statistics.median(loads) * 1e6,
        single_us=statistics.median(single) * 1e6,
        batched_us=statistics.median(batched) * 1e6,
        single_vs_json=statistics.median(s / j for s, j in zip(single, loads, strict=True)),
        batched_vs_single=statistics.median(b / s for b, s in zip(batched, single, strict=True)),
    )


class _KeepsNoRows(FakeBigQuery):
    """A fake BigQuery that forgets the rows it is given: what grows then is ingest's own memory."""

    def insert_rows_json(self, ref: Any, rows: list[dict[str, Any]], row_ids: list[str], **kw: Any) -> list[Any]:
        errors = super().insert_rows_json(ref, rows, row_ids, **kw)
        self.rows[self._key(ref)].clear()
        return errors


@dataclass(frozen=True)
class MemoryFigures:
    calls_first: int
    calls_total: int
    current_after_first: int  # tracemalloc's current traced bytes, after gc
    current_after_total: int
    peak_first: int  # the highest traced bytes during the first calls
    peak_rest: int  # ... during the calls after them

    @property
    def peak_growth(self) -> float:
        return self.peak_rest / self.peak_first

    @property
    def retained_per_call(self) -> float:
        """Bytes still held per call made after the first ones: about 0 when nothing accumulates."""
        return (self.current_after_total - self.current_after_first) / (self.calls_total - self.calls_first)


def measure_memory(first: int = 1_000, total: int = 10_000) -> MemoryFigures:
    """The whole ingest path in process, one single-call message per call, its log lines sent to
    /dev/null (written, as in production, but not kept); 100 warm-up calls before tracing."""
    from personas_warehouse.bigquery import Warehouse
    from personas_warehouse.ingest import ingest

    warehouse = Warehouse(_KeepsNoRows())  # type: ignore[arg-type]
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        for i in range(100):
            ingest(message(personas_identify(-1 - i), -1 - i), warehouse, SETTINGS)
        gc.collect()
        tracemalloc.start()
        try:
            for i in range(first):
                ingest(message(personas_identify(i), i), warehouse, SETTINGS)
            gc.collect()
            after_first, peak_first = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            for i in range(first, total):
                ingest(message(personas_identify(i), i), warehouse, SETTINGS)
            gc.collect()
            after_total, peak_rest = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return MemoryFigures(first, total, after_first, after_total, peak_first, peak_rest)


def main() -> int:
    figures = measure_core()
    print(
        f"core per call, single-call messages: {figures.single_vs_json:6.1f}x json.loads ({figures.single_us:.0f} us)"
    )
    print(f"core per call, 100-call batches:     {figures.batched_vs_single:6.2f}x single-call messages")
    memory = measure_memory()
    print(
        f"memory, calls {memory.calls_first:,}-{memory.calls_total:,} vs the first {memory.calls_first:,}: peak "
        f"{memory.peak_growth:.2f}x; {memory.retained_per_call:.1f} bytes retained per call"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
