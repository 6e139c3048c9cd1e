"""What every path of the sync reads and is billed on BigQuery, and what a schedule costs.

Dry runs on the emulator report 0 bytes, so bytes are computed, by BigQuery's own billing rule: a query
is billed for every column it reads of every partition it cannot prune, at least 10 MB per table.

- The statements are the sync's own: `run_sync` runs over a recording client (no network) once per path:
  a fold of the rows loaded since the last run, a run with nothing new, a column switched back on by
  selective sync (filled from the whole history), and a full rebuild (a space's first run, `--full`, a
  layout change).
- The columns each statement reads come from Google's ZetaSQL analyzer (tests/sqlcheck.py, with unused
  columns pruned, as BigQuery bills).
- The rows each table scan covers follow from the layout and from how each is pruned:
  - identifies is partitioned by day on loaded_at and clustered on loaded_at: a statement bounded by
    `@since` reads the rows loaded since (clustering; the newest day's partition without it: both are
    printed); the others read the whole history (nothing prunes it for them);
  - users_state is partitioned into 10,000 integer ranges by a hash of the user id, and every statement
    names the ranges it may touch as constants in its merge condition (documented pruning: constant
    filters on the partitioning column, https://cloud.google.com/bigquery/docs/using-dml-with-partitioned-tables);
    Google says the optimizer "might or might not" push a merge condition down, so each path is also
    priced as if the target were read whole ("unpruned");
  - sync_history is read for a day (one query per run for every space and table), partitioned by day.
- Bytes per value are BigQuery's: STRING 2 + length, INT64/FLOAT64/TIMESTAMP 8, BOOL 1, NULL 0.

Then the same model prices schedules (every minute, the default; every 15 minutes; hourly) at 1M calls a
day and 1M users, and the idle space, and the wall time of a full and an incremental run is measured on
bqemulator (local; its timings say nothing about BigQuery's).

Run: make bench (or PYTHONPATH=functions:. python -m tests.bench.bench_sync)
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from google.cloud import bigquery

from personas_warehouse import naming, sync
from personas_warehouse.bigquery import Warehouse
from personas_warehouse.derived import DERIVED, users
from personas_warehouse.derived.frame import SYNC_HISTORY
from personas_warehouse.settings import Settings
from schemas.tables import spec
from tests import sqlcheck
from tests.fakes import FakeBigQuery
from tests.sync_fakes import _BETWEEN, _IN, confined_to

MB, TIB = 1_000_000, 2**40
MIN_BILLED = 10 * MB  # BigQuery's minimum per table referenced by a query
PROJECT, SPACE = "personas-bench", "default"
DATASET = naming.space_dataset(SPACE)
PRICE_PER_TIB = 6.25  # on-demand query, US; see docs/costs.md for the source and date
BUCKETS = spec("users_state").buckets or 1
NOW = datetime(2026, 12, 1, tzinfo=UTC)
PATHS = ("fold", "idle", "column switched back on", "full rebuild")


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
    history_rows_per_day: int = 1_440  # sync_history rows a day (one per run, table and space)


def value_bytes(layout: Layout) -> dict[str, dict[str, float]]:
    """Average bytes per row of each column, per table."""
    key = 2 + 32  # sql.KEY: 16 hex digits of the timestamp, 16 of the messageId's fingerprint
    trait_share = layout.traits_per_call / layout.traits
    identifies = {
        "id": 2 + layout.id_chars,
        "user_id": 2 + layout.user_id_chars,
        "anonymous_id": 0,
        **{c: 8 for c in ("received_at", "sent_at", "original_timestamp", "timestamp", "loaded_at")},
        **{trait(i): 8 * trait_share for i in range(layout.traits)},
    }
    state = {"id": 2 + layout.user_id_chars, "received_at": 8, users.ROW_ASOF: key, "_bucket": 8}
    for i in range(layout.traits):  # every user has every trait: an upper bound
        state |= {trait(i): 8, naming.asof_column(trait(i)): key}
    history = {c.name: 20.0 for c in spec(SYNC_HISTORY).columns}
    # users_history_calls: one row per identify call, its traits as sparse as in identifies.
    calls = {"user_id": 2 + layout.user_id_chars, "timestamp": 8, "_key": key, "_starts": 1, "_bucket": 8}
    calls |= {trait(i): 8 * trait_share for i in range(layout.traits)}
    # users_history: every period holds every trait (an upper bound, as for users_state).
    periods = {"id": 2 + layout.user_id_chars, "valid_from": 8, "valid_to": 8, "_bucket": 8}
    periods |= {trait(i): 8 for i in range(layout.traits)}
    return {
        "identifies": identifies,
        "users_state": state,
        "users_history_calls": calls,
        "users_history": periods,
        SYNC_HISTORY: history,
    }


def trait(i: int) -> str:
    return f"trait_{i:03d}"


class Recording(FakeBigQuery):
    """Records the sync's statements; answers its queries with what the layout implies: the window of a
    fold holds `new_rows` rows of `touched_users` users (in as many partitions as random users fall in),
    a history read holds every user."""

    def __init__(self, layout: Layout, *, previous: bool, skipped: list[str], idle: bool) -> None:
        super().__init__(PROJECT)
        self.layout, self.previous, self.skipped, self.idle = layout, previous, skipped, idle
        self.sent: list[tuple[str, dict[str, str]]] = []

    def query(self, text: str, job_config: bigquery.QueryJobConfig | None = None, **_: Any) -> Any:
        params = {
            p.name: p.type_ if isinstance(p, bigquery.ScalarQueryParameter) else f"ARRAY<{p.array_type}>"
            for p in (job_config.query_parameters if job_config else [])
        }
        self.sent.append((text, params))
        rows: list[dict[str, Any]] = []
        if "sync_history" in text and self.previous:
            rows = [
                {
                    "space": SPACE,
                    "table_name": d.name,
                    "layout": d.layout,
                    "watermark_to": NOW - timedelta(minutes=1),
                    "skipped_columns": json.dumps(self.skipped),
                }
                for d in DERIVED
            ]
        elif "AS rows_read" in text and "@since" in text:
            count = 0 if self.idle else self.layout.touched_users
            rng = random.Random(0)
            touched = sorted({rng.randrange(BUCKETS) for _ in range(count)})
            rows = [{"rows_read": 0 if self.idle else self.layout.new_rows, "touched": touched}]
        elif "AS rows_read" in text:
            rows = [{"rows_read": self.layout.identify_rows, "touched": list(range(BUCKETS))}]
        stats = SimpleNamespace(inserted_row_count=0, updated_row_count=0, deleted_row_count=0)
        return SimpleNamespace(result=lambda **_: rows, dml_stats=stats, num_dml_affected_rows=0)


def statements(layout: Layout, path: str) -> list[tuple[str, dict[str, str]]]:
    previous, skipped = path != "full rebuild", [trait(0)] if path == "column switched back on" else []
    client = Recording(layout, previous=previous, skipped=skipped, idle=path in ("idle", "column switched back on"))
    warehouse = Warehouse(client)  # type: ignore[arg-type]
    settings = Settings(project=PROJECT)
    deadline = sync.Deadline(60)
    traits = {trait(i): "FLOAT64" for i in range(layout.traits)}
    warehouse.ensure_table(DATASET, "identifies", spec("identifies"), deadline)
    warehouse.add_columns(DATASET, "identifies", traits, deadline)
    warehouse.ensure_table(DATASET, "users_state", spec("users_state"), deadline)
    state = {n: t for c in users.synced(list(traits)) for n, t in ((c.column, "FLOAT64"), (c.asof, "STRING"))}
    warehouse.add_columns(DATASET, "users_state", state, deadline)
    hidden = [users.ROW_ASOF, "_bucket", *(c for c in state if c.startswith(naming.ASOF_PREFIX))]
    warehouse.put_view(DATASET, "users", users.users_view_query(PROJECT, DATASET, hidden), deadline)  # as a run left it
    warehouse.ensure_table(settings.ops_dataset, SYNC_HISTORY, spec(SYNC_HISTORY), deadline)
    sync.run_sync(warehouse, settings, full=path == "full rebuild", spaces=[SPACE], now=lambda: NOW)
    return [(text, params) for text, params in client.sent if not text.startswith("CREATE")]


def catalog(layout: Layout) -> sqlcheck.Catalog:
    sizes = value_bytes(layout)
    found = sqlcheck.Catalog()
    for name in ("identifies", "users_state", "users_history_calls", "users_history"):
        columns = {c.name: c.type for c in spec(name).columns}
        dynamic = {c: "STRING" if c.startswith(naming.ASOF_PREFIX) else "FLOAT64" for c in sizes[name]}
        found.tables[f"{PROJECT}.{DATASET}.{name}"] = dynamic | columns
    history = spec(SYNC_HISTORY)
    found.tables[f"{PROJECT}.{Settings().ops_dataset}.{SYNC_HISTORY}"] = {c.name: c.type for c in history.columns}
    return found


def rows_read(table: str, text: str, layout: Layout, *, clustered: bool, pruned: bool) -> float:
    """Rows of `table` a statement cannot prune."""
    if table.endswith(".identifies"):
        if "@since" in text:  # partitioned by day on loaded_at, clustered by loaded_at first
            return layout.new_rows if clustered else layout.identify_rows / layout.days
        return layout.identify_rows
    kept = {".users_state": layout.users, ".users_history_calls": layout.identify_rows}
    # users_history: a period per call (an upper bound: a call that changes nothing starts none).
    kept[".users_history"] = layout.identify_rows
    for suffix, rows in kept.items():
        if table.endswith(suffix):
            named = confined_to(text, _BETWEEN, _IN)
            return rows * len(named) / BUCKETS if named is not None and pruned else rows
    if table.endswith(f".{SYNC_HISTORY}"):
        return layout.history_rows_per_day  # started_at >= a day ago: one daily partition or two
    return 0.0


@dataclass(frozen=True)
class Bytes:
    read: float  # what the statements read
    billed: float  # with BigQuery's 10 MB minimum per table per query
    jobs: int  # queries and DML statements
    dml: int  # DML statements
    lines: tuple[str, ...]
    by_table: dict[str, float]  # bytes read per table name


def measure(
    layout: Layout, analyzer: sqlcheck.Analyzer, path: str, *, clustered: bool = True, pruned: bool = True
) -> Bytes:
    sizes, tables, read, billed, lines = value_bytes(layout), catalog(layout), 0.0, 0.0, []
    by_table: dict[str, float] = {}
    sent = statements(layout, path)
    for text, params in sent:
        analysis = analyzer.analysis(text, params, tables)
        if analysis.errors:
            raise AssertionError(f"{analysis.errors}: {text[:300]}")
        for table, columns in analysis.scans.items():
            name = table.rsplit(".", 1)[-1]
            per_row = sum(sizes.get(name, {}).get(c, 0) for c in columns)
            scanned = per_row * rows_read(table, text, layout, clustered=clustered, pruned=pruned)
            read, billed = read + scanned, billed + max(MIN_BILLED, scanned)
            by_table[name] = by_table.get(name, 0.0) + scanned
            lines.append(f"  {analysis.kind:<11} {name:<13} {len(columns):>3} columns {scanned / MB:>10,.2f} MB read")
    dml = sum(1 for text, _ in sent if text.startswith("MERGE"))
    return Bytes(read, billed, len(sent), dml, tuple(lines), by_table)


def dollars(billed: float) -> float:
    return billed / TIB * PRICE_PER_TIB


def schedules(analyzer: sqlcheck.Analyzer) -> dict[str, dict[str, float]]:
    """At 1M calls a day and 1M users: the fold's cost per run and per day for each schedule, and an idle
    space's (a space with no new calls still sends its window query every run)."""
    calls_per_day, users_count = 1_000_000, 1_000_000
    overlap_minutes = Settings().sync_overlap_seconds / 60
    found = {}
    for name, minutes in (("every minute (the default)", 1), ("every 15 minutes", 15), ("every hour", 60)):
        runs = 1440 // minutes
        new = math.ceil(calls_per_day / 1440 * (minutes + overlap_minutes))
        day = replace(
            Layout(),
            identify_rows=calls_per_day * 30,
            days=30,
            users=users_count,
            new_rows=new,
            touched_users=new,
            history_rows_per_day=runs * len(DERIVED),
        )
        fold, idle = measure(day, analyzer, "fold"), measure(day, analyzer, "idle")
        unpruned = measure(day, analyzer, "fold", pruned=False)
        found[name] = {
            "runs": runs,
            "MB billed per run": fold.billed / MB,
            "USD per day": dollars(fold.billed) * runs,
            "USD per day, target unpruned": dollars(unpruned.billed) * runs,
            "idle MB billed per run": idle.billed / MB,
            "idle USD per day": dollars(idle.billed) * runs,
        }
    return found


def local_wall_times(rows: int, users_count: int) -> dict[str, float]:
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

        def load(first: int, count: int, user_of: Any, at: datetime, loaded: datetime) -> None:
            for chunk in range(first, first + count, 10_000):
                batch = []
                for n in range(chunk, min(first + count, chunk + 10_000)):
                    moment = (at + timedelta(seconds=n - first)).isoformat().replace("+00:00", "Z")
                    batch.append(
                        {"id": f"m{n}", "user_id": user_of(n), "received_at": moment, "timestamp": moment}
                        | {"loaded_at": loaded.isoformat().replace("+00:00", "Z"), trait(n % 4): float(n)}
                    )
                warehouse.insert(DATASET, "identifies", batch, [r["id"] for r in batch], deadline)

        load(0, rows, lambda n: f"u{n % users_count}", start, datetime.now(UTC) - timedelta(hours=1))
        began = time.perf_counter()
        sync.run_sync(warehouse, settings, spaces=[SPACE])  # the first run of a space is a full rebuild
        full = time.perf_counter() - began
        touched = max(1, users_count // 100)
        load(rows, touched, lambda n: f"u{n % touched}", datetime.now(UTC), datetime.now(UTC))
        began = time.perf_counter()
        [result] = sync.run_sync(warehouse, settings, spaces=[SPACE])["spaces"]
        incremental = time.perf_counter() - began
        kept = result["tables"]["users"]
        assert kept["mode"] == "incremental" and kept["source_rows_read"] == touched, kept
    return {"rows": rows, "users": users_count, "full_seconds": full, "incremental_seconds": incremental}


def figures(local_rows: int = 200_000) -> dict[str, Any]:
    """Every figure of this benchmark (docs/performance.md renders them; `main` prints them)."""
    analyzer = sqlcheck.Analyzer.load()
    layout = Layout()
    paths = {path: measure(layout, analyzer, path) for path in PATHS}
    unpruned = {path: measure(layout, analyzer, path, pruned=False) for path in PATHS}
    by_partition = measure(layout, analyzer, "fold", clustered=False)
    costs = schedules(analyzer)
    analyzer.close()
    wall = local_wall_times(local_rows, local_rows // 10)
    full = paths["full rebuild"]
    return {
        "local_wall_times": wall,
        "layout": layout.__dict__,
        "paths": {
            path: {
                "jobs": b.jobs,
                "dml": b.dml,
                "read": b.read,
                "billed": b.billed,
                "read_unpruned": unpruned[path].read,
                "billed_unpruned": unpruned[path].billed,
                "by_table": b.by_table,
                "lines": b.lines,
            }
            for path, b in paths.items()
        },
        "ratio_read": paths["fold"].read / full.read,
        "ratio_read_day_partitions_only": by_partition.read / full.read,
        "ratio_billed": paths["fold"].billed / full.billed,
        "schedules_at_1M_calls_and_1M_users": costs,
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
    print(f"layout: {Layout()}")
    for path, p in result["paths"].items():
        print(
            f"{path}: {p['jobs']} jobs ({p['dml']} DML), {p['read'] / MB:,.2f} MB read, {p['billed'] / MB:,.1f} MB "
            f"billed; target unpruned: {p['read_unpruned'] / MB:,.2f} MB read\n" + "\n".join(p["lines"])
        )
    print(f"read, fold / full rebuild: {result['ratio_read']:.4f} (target <= 0.05)")
    print(f"read, with day partitions only (no clustering): {result['ratio_read_day_partitions_only']:.4f}")
    wall = result["local_wall_times"]
    print(
        f"bqemulator, {wall['rows']:,} rows, {wall['users']:,} users: full run {wall['full_seconds']:.1f} s, "
        f"incremental (1% of users touched) {wall['incremental_seconds']:.1f} s: "
        f"{wall['incremental_seconds'] / wall['full_seconds']:.2f}x"
    )
    for name, cost in result["schedules_at_1M_calls_and_1M_users"].items():
        print(
            f"{name}: {cost['MB billed per run']:,.1f} MB billed per run, ${cost['USD per day']:.2f} a day "
            f"(${cost['USD per day, target unpruned']:.2f} if the target were read whole); an idle space "
            f"${cost['idle USD per day']:.2f} a day (${PRICE_PER_TIB}/TiB)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
