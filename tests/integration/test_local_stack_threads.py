"""The local stack's bqemulator under the concurrent REST traffic the functions and the sync make: insertAll
and queries (answered on its event loop) mixed with tables.get and tabledata.list (answered from a thread
pool). Before infra/local/bqemulator_server.py gave each pool thread a DuckDB cursor of its own (gap 8), this
mix wedged the emulator for good within a few hundred calls, and every later test hung."""

from __future__ import annotations

import threading
import time
import uuid

from google.cloud import bigquery

from infra.local.stack import Stack

CALLS = 400
THREADS = 16
DEADLINE_SECONDS = 120  # measured: 400 calls in about 10 s on this machine; a wedged emulator never ends


def test_reads_from_the_thread_pool_and_writes_on_the_loop_never_wedge_the_emulator(
    stack: Stack, bq: bigquery.Client
) -> None:
    project, dataset = stack.config.project, "threads_" + uuid.uuid4().hex[:8]
    bq.create_dataset(f"{project}.{dataset}")
    tables = [f"{project}.{dataset}.t{i}" for i in range(4)]
    schema = [bigquery.SchemaField("id", "STRING"), bigquery.SchemaField("n", "INT64")]
    for table in tables:
        bq.create_table(bigquery.Table(table, schema=schema))
        assert not bq.insert_rows_json(table, [{"id": f"seed{j}", "n": j} for j in range(50)])

    work = iter(range(CALLS))
    lock = threading.Lock()
    wrong: list[str] = []
    done = [0]

    def call(k: int) -> None:
        table = tables[k % len(tables)]
        if k % 2 == 0:
            assert not bq.insert_rows_json(table, [{"id": f"w{k}", "n": k}])
            return
        count = next(iter(bq.query(f"SELECT COUNT(*) AS n FROM `{table}`").result(timeout=60)))["n"]
        names = [field.name for field in bq.get_table(table).schema]
        first = next(iter(bq.list_rows(table, max_results=3)), None)
        if count < 50 or names != ["id", "n"] or first is None or set(first.keys()) != {"id", "n"}:
            wrong.append(f"{table}: count {count}, schema {names}, row {first}")

    def worker() -> None:
        while True:
            with lock:
                k = next(work, None)
            if k is None:
                return
            try:
                call(k)
            except Exception as error:  # reported below, with the call that raised it
                wrong.append(f"call {k}: {error!r}")
            with lock:
                done[0] += 1

    # Daemon threads: a wedged emulator fails this test instead of hanging the session at exit.
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    end = time.monotonic() + DEADLINE_SECONDS
    for thread in threads:
        thread.join(timeout=max(0.0, end - time.monotonic()))
    assert done[0] == CALLS, f"only {done[0]} of {CALLS} calls answered within {DEADLINE_SECONDS}s: wedged"
    assert not wrong, wrong[:5]
