"""What a users sync reads on BigQuery, incremental against a full rebuild, and what a schedule costs.

Dry runs on the emulator report 0 bytes, so bytes are computed, by BigQuery's own billing rule: a query
is billed for every column it reads of every partition it cannot prune, at least 10 MB per table.

- The statements are the sync's own: `run_sync` runs over a recording client (no network), once
  incremental and once full.
- The columns each statement reads come from Google's ZetaSQL analyzer (tests/sqlcheck.py, with
  unused columns pruned, as BigQuery bills).
- The rows each table scan covers follow from the layout: identifies is partitioned by day on
  loaded_at (a fold's `loaded_at >= @since` reads the newest day; clustering on loaded_at narrows it
  to the rows since the last run: both figures are printed); users_state is partitioned into 10,000
  buckets of user ids (a fold reads the buckets of the users it touches); everything else whole.
- Bytes per value are BigQuery's: STRING 2 + length, INT64/FLOAT64/TIMESTAMP 8, BOOL 1, NULL 0.

Then the same model prices a schedule (every minute, every hour) at 1M calls a day and 1M users, and
the wall time of a full and an incremental run is measured on bqemulator (local; its timings say
nothing about BigQuery's, but a run that does less should not take longer).

Run: make bench (or PYTHONPATH=functions:. python -m tests.bench.bench_sync)
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from google.cloud import bigquery

from personas_warehouse import naming, sql, sync
from personas_warehouse.bigquery import Warehouse
from personas_warehouse.settings import Settings
from schemas.tables import spec
from tests import sqlcheck
from tests.fakes import FakeBigQuery

MB, TIB = 1_000_000, 2**40
MIN_BILLED = 10 * MB  # BigQuery's minimum per table referenced by a query
PROJECT, SPACE = "personas-bench", "default"
DATASET = naming.space_dataset(SPACE)
PRICE_PER_TIB = 6.25  # on-demand query, US; see docs/costs.md for the source and date


@dataclass(frozen=True)
class Layout:
    """The warehouse a figure is computed for."""

    identify_rows: int = 1_000_000
    days: int = 90  # daily partitions of identifies
    users: int = 100_000
    new_rows: int = 1_000  # identify rows loaded since the last run (re-read overlap included)
    touched_users: int = 1_000  # the users those rows belong to (1% of users)
    traits: int = 20  # trait and audience columns
    traits_per_call: int = 2  # non-null traits of one identify call
    id_chars: int = 36  # messageId
    user_id_chars: int = 10


def value_bytes(layout: Layout) -> dict[str, dict[str, float]]:
    """Average bytes per row of each column, per table."""
    key = 2 + 32  # sql.KEY: 16 hex digits of the timestamp, 16 of the id's fingerprint
    trait_share = layout.traits_per_call / layout.traits
    identifies = {
        "id": 2 + layout.id_chars,
        "user_id": 2 + layout.user_id_chars,
        "anonymous_id": 0,
        **{c: 8 for c in ("received_at", "sent_at", "original_timestamp", "timestamp", "loaded_at")},
        **{trait(i): 8 * trait_share for i in range(layout.traits)},
    }
    state = {"id": 2 + layout.user_id_chars, "received_at": 8, sql.ROW_ASOF: key, sql.REBUILD: 1, sql.BUCKET: 8}
    for i in range(layout.traits):  # every user has every trait: an upper bound
        state |= {trait(i): 8, naming.asof_column(trait(i)): key}
    return {"identifies": identifies, "users_state": state}


def trait(i: int) -> str:
    return f"trait_{i:03d}"


class Recording(FakeBigQuery):
    """Records the sync's statements; answers its SELECTs with what the layout implies."""

    def __init__(self, layout: Layout) -> None:
        super().__init__(PROJECT)
        self.layout = layout
        self.sent: list[tuple[str, dict[str, str]]] = []

    def query(self, text: str, job_config: bigquery.QueryJobConfig | None = None, **_: Any) -> Any:
        params = {
            p.name: p.type_ if isinstance(p, bigquery.ScalarQueryParameter) else f"ARRAY<{p.array_type}>"
            for p in (job_config.query_parameters if job_config else [])
        }
        self.sent.append((text, params))
        mark = datetime(2026, 11, 28, tzinfo=UTC)
        touched = list(range(self.layout.touched_users))  # distinct buckets, as many as users at most
        row = {"rows_read": self.layout.new_rows, "watermark_to": mark, "touched": touched, "ids": None}
        row["mark"] = mark - timedelta(minutes=1)
        stats = SimpleNamespace(inserted_row_count=0, updated_row_count=0)
        return SimpleNamespace(result=lambda **_: [row], dml_stats=stats, num_dml_affected_rows=0)


def statements(layout: Layout, *, full: bool) -> list[tuple[str, dict[str, str]]]:
    client = Recording(layout)
    warehouse = Warehouse(client)  # type: ignore[arg-type]
    settings = Settings(project=PROJECT)
    deadline = sync.Deadline(60)
    traits = {trait(i): "FLOAT64" for i in range(layout.traits)}
    warehouse.ensure_table(DATASET, "identifies", spec("identifies"), deadline)
    warehouse.add_columns(DATASET, "identifies", traits, deadline)
    warehouse.ensure_table(DATASET, "users_state", spec("users_state"), deadline)
    state = {n: t for c in sql.synced(list(traits)) for n, t in ((c.column, "FLOAT64"), (c.asof, "STRING"))}
    warehouse.add_columns(DATASET, "users_state", state, deadline)
    hidden = [sql.ROW_ASOF, sql.REBUILD, sql.BUCKET, *(c for c in state if c.startswith(naming.ASOF_PREFIX))]
    warehouse.put_view(DATASET, "users", sql.users_view_query(PROJECT, DATASET, hidden), deadline)  # as a run left it
    warehouse.ensure_table(settings.ops_dataset, "sync_history", spec("sync_history"), deadline)
    sync.run_sync(warehouse, settings, full=full, spaces=[SPACE])
    return [(text, params) for text, params in client.sent if not text.startswith("CREATE")]


def catalog(layout: Layout) -> sqlcheck.Catalog:
    sizes = value_bytes(layout)
    types = {"identifies": spec("identifies"), "users_state": spec("users_state")}
    found = sqlcheck.Catalog()
    for name, table in types.items():
        columns = {c.name: c.type for c in table.columns}
        dynamic = {c: "STRING" if c.startswith(naming.ASOF_PREFIX) else "FLOAT64" for c in sizes[name]}
        found.tables[f"{PROJECT}.{DATASET}.{name}"] = dynamic | columns
    history = spec("sync_history")
    found.tables[f"{PROJECT}.{Settings().ops_dataset}.sync_history"] = {c.name: c.type for c in history.columns}
    return found


def rows_read(table: str, text: str, layout: Layout, *, clustered: bool) -> float:
    """Rows of `table` a statement cannot prune."""
    if table.endswith(".identifies"):
        if f"@{sql.SINCE}" in text:  # partitioned by day on loaded_at, clustered by loaded_at first
            return layout.new_rows if clustered else layout.identify_rows / layout.days
        if f"@{sql.REBUILD_USERS}" in text:
            return layout.identify_rows
        return layout.identify_rows
    if table.endswith(".users_state"):
        if f"@{sql.TOUCHED}" in text:  # integer-range partitions of user buckets
            buckets = spec("users_state").buckets or 1
            return layout.users * (1 - (1 - 1 / buckets) ** layout.touched_users)
        return layout.users
    return 0.0  # operations tables: tiny, billed at the minimum


@dataclass(frozen=True)
class Bytes:
    read: float  # what the statements read
    billed: float  # with BigQuery's 10 MB minimum per table per query
    lines: tuple[str, ...]
    by_table: dict[str, float]  # bytes read per table name


def measure(layout: Layout, analyzer: sqlcheck.Analyzer, *, full: bool, clustered: bool) -> Bytes:
    sizes, tables, read, billed, lines = value_bytes(layout), catalog(layout), 0.0, 0.0, []
    by_table: dict[str, float] = {}
    for text, params in statements(layout, full=full):
        analysis = analyzer.analysis(text, params, tables)
        if analysis.errors:
            raise AssertionError(f"{analysis.errors}: {text[:300]}")
        for table, columns in analysis.scans.items():
            name = table.rsplit(".", 1)[-1]
            per_row = sum(sizes.get(name, {}).get(c, 0) for c in columns)
            scanned = per_row * rows_read(table, text, layout, clustered=clustered)
            read, billed = read + scanned, billed + max(MIN_BILLED, scanned)
            by_table[name] = by_table.get(name, 0.0) + scanned
            lines.append(f"  {analysis.kind:<11} {name:<13} {len(columns):>3} columns {scanned / MB:>10,.2f} MB read")
    return Bytes(read, billed, tuple(lines), by_table)


def cost_per_day(layout: Layout, analyzer: sqlcheck.Analyzer, runs_per_day: int) -> dict[str, float]:
    run = measure(layout, analyzer, full=False, clustered=True)
    dollars = run.billed * runs_per_day / TIB * PRICE_PER_TIB
    return {"runs": runs_per_day, "MB billed per run": run.billed / MB, "USD per day": dollars}


def local_wall_times(rows: int, users: int) -> dict[str, float]:
    """Seconds of a full run over `rows` identify rows, then of an incremental run after 1% of the users
    got a new call, on bqemulator started here on spare ports."""
    import time

    from infra.local.stack import StackConfig, running
    from personas_warehouse.bigquery import make_client

    config = StackConfig.spare(26_000, "bench-sync")
    with running(config):
        settings = Settings(project=config.project, bigquery_emulator_host=config.bigquery_url, sync_overlap_seconds=0)
        warehouse = Warehouse(make_client(settings))
        deadline = sync.Deadline(600)
        warehouse.ensure_table(DATASET, "identifies", spec("identifies"), deadline)
        traits = {trait(i): "FLOAT64" for i in range(4)}
        warehouse.add_columns(DATASET, "identifies", traits, deadline)
        start = datetime(2026, 8, 1, tzinfo=UTC)

        def load(first: int, count: int, user_of: Any, at: datetime) -> None:
            for chunk in range(first, first + count, 10_000):
                batch = []
                for n in range(chunk, min(first + count, chunk + 10_000)):
                    moment = (at + timedelta(seconds=n - first)).isoformat().replace("+00:00", "Z")
                    batch.append(
                        {"id": f"m{n}", "user_id": user_of(n), "received_at": moment, "timestamp": moment}
                        | {"loaded_at": moment, trait(n % 4): float(n)}
                    )
                warehouse.insert(DATASET, "identifies", batch, [r["id"] for r in batch], deadline)

        load(0, rows, lambda n: f"u{n % users}", start)
        began = time.perf_counter()
        sync.run_sync(warehouse, settings, spaces=[SPACE])  # the first run of a space is a full rebuild
        full = time.perf_counter() - began
        touched = max(1, users // 100)
        load(rows, touched, lambda n: f"u{n % touched}", datetime.now(UTC))
        began = time.perf_counter()
        [result] = sync.run_sync(warehouse, settings, spaces=[SPACE])["spaces"]
        incremental = time.perf_counter() - began
        # The watermark is inclusive: the newest row of the first load is read again (and changes nothing).
        assert result["mode"] == "incremental" and result["identify_rows_read"] in (touched, touched + 1), result
    return {"rows": rows, "users": users, "full_seconds": full, "incremental_seconds": incremental}


def figures(local_rows: int = 200_000) -> dict[str, Any]:
    """Every figure of this benchmark (docs/performance.md renders them; `main` prints them)."""
    analyzer = sqlcheck.Analyzer.load()
    layout = Layout()
    incremental = measure(layout, analyzer, full=False, clustered=True)
    by_partition = measure(layout, analyzer, full=False, clustered=False)
    full = measure(layout, analyzer, full=True, clustered=True)
    calls_per_day, users = 1_000_000, 1_000_000
    overlap_minutes = Settings().sync_overlap_seconds / 60
    schedules = {}
    for name, minutes in (("every minute", 1), ("every 15 minutes", 15), ("every hour", 60)):
        new = math.ceil(calls_per_day / 1440 * (minutes + overlap_minutes))
        day = replace(layout, identify_rows=calls_per_day * 30, days=30, users=users, new_rows=new, touched_users=new)
        schedules[name] = cost_per_day(day, analyzer, 1440 // minutes)
    analyzer.close()
    wall = local_wall_times(local_rows, local_rows // 10)
    return {
        "local_wall_times": wall,
        "layout": layout.__dict__,
        "read": {"incremental": incremental.read, "day_partitions_only": by_partition.read, "full": full.read},
        "read_by_table": {"incremental": incremental.by_table, "full": full.by_table},
        "lines": {"incremental": incremental.lines, "full": full.lines},
        "billed": {"incremental": incremental.billed, "full": full.billed},
        "ratio_read": incremental.read / full.read,
        "ratio_read_day_partitions_only": by_partition.read / full.read,
        "ratio_billed": incremental.billed / full.billed,
        "schedules_at_1M_calls_and_1M_users": schedules,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--local-rows", type=int, default=200_000, help="identify rows for the local wall times")
    args = parser.parse_args(argv)
    result = figures(args.local_rows)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    layout, wall, schedules = Layout(), result["local_wall_times"], result["schedules_at_1M_calls_and_1M_users"]
    read = result["read"]
    print(f"layout: {layout}")
    print(f"incremental run: {read['incremental'] / MB:,.2f} MB read\n" + "\n".join(result["lines"]["incremental"]))
    print(f"full rebuild:    {read['full'] / MB:,.2f} MB read\n" + "\n".join(result["lines"]["full"]))
    print(f"read, incremental / full: {result['ratio_read']:.4f} (target <= 0.05)")
    print(f"read, with day partitions only (no clustering): {result['ratio_read_day_partitions_only']:.4f}")
    print(f"billed (10 MB minimum per table), incremental / full: {result['ratio_billed']:.4f}")
    print(
        f"bqemulator, {wall['rows']:,} rows, {wall['users']:,} users: full run {wall['full_seconds']:.1f} s, "
        f"incremental (1% of users touched) {wall['incremental_seconds']:.1f} s: "
        f"{wall['incremental_seconds'] / wall['full_seconds']:.2f}x"
    )
    for name, cost in schedules.items():
        print(
            f"{name}: {cost['MB billed per run']:,.1f} MB billed per run, ${cost['USD per day']:.2f} a day "
            f"at 1M calls a day and 1M users (${PRICE_PER_TIB}/TiB)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
