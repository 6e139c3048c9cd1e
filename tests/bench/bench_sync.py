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
  - tracks (read by identities) is partitioned by day on received_at and clustered as tables.json says:
    a statement bounded by `@since` reads the rows loaded since only when its clustering starts with
    loaded_at; otherwise nothing prunes it and it reads the whole history;
  - users_state and identities_state are partitioned into 10,000 integer ranges by a hash of their key,
    and every statement names the ranges it may touch as constants in its merge condition (documented
    pruning: constant filters on the partitioning column,
    https://cloud.google.com/bigquery/docs/using-dml-with-partitioned-tables); Google says the optimizer
    "might or might not" push a merge condition down, so each path is also priced as if the target were
    read whole ("unpruned");
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
from unittest import mock

from google.cloud import bigquery

from personas_warehouse import naming, sync
from personas_warehouse.bigquery import Warehouse
from personas_warehouse.derived import DERIVED, memberships, users
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
    # identities: a space whose computations send track calls as well, as many as identify calls
    track_rows: int = 1_000_000
    identifiers_per_user: int = 4  # identifier rows per profile (user_id, email, a device id, an anonymousId)
    mobile_share: float = 0.5  # calls carrying context.device ids
    external_ids_share: float = 0.5  # calls carrying context.externalIds
    external_ids_chars: int = 120  # their JSON text
    email_chars: int = 20
    # audience_memberships: identify calls of an audience class are `audience_share` of identifies (one
    # audience each); the Audience Entered / Exited tables hold `audience_track_rows` each, `new_track_rows` of them
    # in a fold's window; `discards` holds `audience_discards` rows of audience columns (values ingest could
    # not store); every call is a distinct event (an upper bound), and a stay holds two events.
    audiences: int = 5
    audience_share: float = 0.5
    audience_track_rows: int = 250_000
    new_track_rows: int = 250
    audience_discards: int = 1_000


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
    for i in range(layout.audiences):  # and every audience (users keeps their newest values too)
        state |= {audience(i): 1, naming.asof_column(audience(i)): key}
    history = {c.name: 20.0 for c in spec(SYNC_HISTORY).columns}
    mobile, external = layout.mobile_share, layout.external_ids_share
    context = {
        "context_traits_email": 2 + layout.email_chars,
        "context_device_type": mobile * (2 + 3),
        "context_device_id": mobile * (2 + layout.id_chars),
        "context_device_advertising_id": mobile * (2 + layout.id_chars),
        "context_device_ad_tracking_enabled": mobile * 1,
        "context_device_token": mobile * (2 + 64),
        "context_external_ids": external * (2 + layout.external_ids_chars),
    }
    identifies |= {"email": 2 + layout.email_chars} | context
    state |= {"email": 2 + layout.email_chars, naming.asof_column("email"): key}  # email is a trait to users
    base = {c: b for c, b in identifies.items() if c in spec("tracks").column_names}
    tracks = base | {"event": 2 + 16, "event_text": 2 + 16} | context
    # identities_state: identifier rows (what identities shows) and one message row per call folded.
    ids = layout.users * layout.identifiers_per_user
    messages = layout.identify_rows + layout.track_rows
    shown = ids / (ids + messages)
    identities_state = {
        "user_id": 2 + layout.user_id_chars,  # message rows name the profile too (forget deletes by it)
        "anonymous_id": 0.0,
        "type": shown * (2 + 10),
        "value": shown * (2 + 30),
        "collection": shown * (2 + 5),
        "encoding": shown * (2 + 4),
        **{c: shown * 8 for c in ("first_seen_at", "last_seen_at", "calls")},
        "_profile": 2 + 2 + layout.user_id_chars,
        "_message": (1 - shown) * (2 + layout.id_chars),
        "_bucket": 8,
    }
    identifies |= {
        "context_personas_computation_class": (2 + 8) * layout.audience_share,
        "context_personas_computation_key": (2 + 12) * layout.audience_share,
        **{audience(i): 1 * layout.audience_share / layout.audiences for i in range(layout.audiences)},
    }
    track = {c: identifies[c] for c in ("id", "user_id", "anonymous_id", "timestamp", "loaded_at")}
    track |= {"audience_key": 2 + 12, "context_personas_computation_key": 2 + 12, "received_at": 8}
    discards = {"row_id": 2 + layout.id_chars, "table_name": 2 + 10, "column_name": 2 + 12, "column_value": 2 + 4}
    discards |= {"loaded_at": 8, "received_at": 8}
    event = {k: track[k] for k in ("id", "user_id", "anonymous_id", "audience_key", "timestamp")}
    event |= {"entered": 1, "_key": key, "_bucket": 8}
    stay = {"user_id": track["user_id"], "anonymous_id": 0, "audience_key": 2 + 12, "entered_at": 8, "exited_at": 8}
    stay |= {"entered_message_id": 2 + layout.id_chars, "exited_message_id": 2 + layout.id_chars, "_bucket": 8}
    # users_history_calls: one row per identify call, its traits as sparse as in identifies.
    calls = {"user_id": 2 + layout.user_id_chars, "timestamp": 8, "_key": key, "_starts": 1, "_bucket": 8}
    calls |= {trait(i): 8 * trait_share for i in range(layout.traits)}
    # users_history: every period holds every trait (an upper bound, as for users_state).
    periods = {"id": 2 + layout.user_id_chars, "valid_from": 8, "valid_to": 8, "_bucket": 8}
    periods |= {trait(i): 8 for i in range(layout.traits)}
    return {
        "identifies": identifies,
        "tracks": tracks,
        "users_state": state,
        "identities_state": identities_state,
        "users_history_calls": calls,
        "users_history": periods,
        SYNC_HISTORY: history,
        **{name: track for name in AUDIENCE_TRACKS},
        "discards": discards,
        memberships.EVENTS: event,
        memberships.TABLE: stay,
    }


# Types of the columns ingest makes that the model's tables have (the others are base columns or traits).
CONTEXT_TYPES = {"context_device_ad_tracking_enabled": "BOOL", "email": "STRING"}


def trait(i: int) -> str:
    return f"trait_{i:03d}"


def audience(i: int) -> str:
    return f"audience_{i:03d}"


AUDIENCE_TRACKS = ("audience_entered", "audience_exited")


def audience_events(layout: Layout) -> int:
    """Rows of audience_events: every audience call ever sent, each a distinct event (an upper bound)."""
    return int(layout.identify_rows * layout.audience_share) + 2 * layout.audience_track_rows


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
        elif " AS fingerprint" in text:  # the audiences of the window's identify calls
            rows = [
                {"audience_key": audience(i), "fingerprint": i + 1, "calls": 1} for i in range(self.layout.audiences)
            ]
        elif "AS not_read" in text:
            rows = [{"not_read": 0, "missing": 0}]
        elif "AS rows_read" in text and "@since" in text:
            count = 0 if self.idle else self.layout.touched_users
            rng = random.Random(0)
            touched = sorted({rng.randrange(BUCKETS) for _ in range(count)})
            rows = [{"rows_read": 0 if self.idle else self.layout.new_rows, "touched": touched}]
        elif "AS rows_read" in text:
            rows = [{"rows_read": self.layout.identify_rows, "touched": list(range(BUCKETS))}]
        stats = SimpleNamespace(inserted_row_count=0, updated_row_count=0, deleted_row_count=0)
        return SimpleNamespace(result=lambda **_: rows, dml_stats=stats, num_dml_affected_rows=0)


def statements(layout: Layout, path: str, only: str | None = None) -> list[tuple[str, dict[str, str]]]:
    """The sync's statements on `path`, of every derived table or `only` the one of that name."""
    if only is not None:
        with mock.patch.object(sync, "DERIVED", tuple(d for d in DERIVED if d.name == only)):
            return statements(layout, path)
    previous, skipped = path != "full rebuild", [trait(0)] if path == "column switched back on" else []
    client = Recording(layout, previous=previous, skipped=skipped, idle=path in ("idle", "column switched back on"))
    warehouse = Warehouse(client)  # type: ignore[arg-type]
    settings = Settings(project=PROJECT)
    deadline = sync.Deadline(60)
    traits = {trait(i): "FLOAT64" for i in range(layout.traits)}
    sizes = value_bytes(layout)
    context = {c: CONTEXT_TYPES.get(c, "STRING") for c in sizes["tracks"] if c.startswith("context_")}
    warehouse.ensure_table(DATASET, "identifies", spec("identifies"), deadline)
    personas = {"context_personas_computation_class": "STRING", "context_personas_computation_key": "STRING"}
    audiences = {audience(i): "BOOL" for i in range(layout.audiences)}
    made = traits | context | personas | audiences | {"email": "STRING"}
    warehouse.add_columns(DATASET, "identifies", made, deadline)
    warehouse.ensure_table(DATASET, "tracks", spec("tracks"), deadline)
    warehouse.add_columns(DATASET, "tracks", context, deadline)
    for name in AUDIENCE_TRACKS:
        warehouse.ensure_table(DATASET, name, spec("track_event"), deadline)
        warehouse.add_columns(DATASET, name, {"audience_key": "STRING", **personas}, deadline)
    warehouse.ensure_table(DATASET, "discards", spec("discards"), deadline)
    warehouse.ensure_table(DATASET, "users_state", spec("users_state"), deadline)
    state = {n: t for c in users.synced(list(traits)) for n, t in ((c.column, "FLOAT64"), (c.asof, "STRING"))}
    state |= {n: t for c in users.synced(list(audiences)) for n, t in ((c.column, "BOOL"), (c.asof, "STRING"))}
    state |= {"email": "STRING", naming.asof_column("email"): "STRING"}
    warehouse.add_columns(DATASET, "users_state", state, deadline)
    hidden = [users.ROW_ASOF, "_bucket", *(c for c in state if c.startswith(naming.ASOF_PREFIX))]
    warehouse.put_view(DATASET, "users", users.users_view_query(PROJECT, DATASET, hidden), deadline)  # as a run left it
    warehouse.ensure_table(settings.ops_dataset, SYNC_HISTORY, spec(SYNC_HISTORY), deadline)
    sync.run_sync(warehouse, settings, full=path == "full rebuild", spaces=[SPACE], now=lambda: NOW)
    return [(text, params) for text, params in client.sent if not text.startswith("CREATE")]


def catalog(layout: Layout) -> sqlcheck.Catalog:
    sizes = value_bytes(layout)
    found = sqlcheck.Catalog()
    kept = ("identifies", "tracks", "users_state", "identities_state", "discards", memberships.EVENTS)
    kept += (memberships.TABLE, "users_history_calls", "users_history")
    for name in (*kept, *AUDIENCE_TRACKS):
        columns = {c.name: c.type for c in spec(name if name not in AUDIENCE_TRACKS else "track_event").columns}
        dynamic = {c: _dynamic_type(c) for c in sizes[name]}
        found.tables[f"{PROJECT}.{DATASET}.{name}"] = dynamic | columns
    history = spec(SYNC_HISTORY)
    found.tables[f"{PROJECT}.{Settings().ops_dataset}.{SYNC_HISTORY}"] = {c.name: c.type for c in history.columns}
    return found


def _dynamic_type(column: str) -> str:
    if column in CONTEXT_TYPES:
        return CONTEXT_TYPES[column]
    if column.startswith("audience_0"):
        return "BOOL"
    return "STRING" if column.startswith((naming.ASOF_PREFIX, "context_")) or column == "audience_key" else "FLOAT64"


def rows_read(table: str, text: str, layout: Layout, *, clustered: bool, pruned: bool) -> float:
    """Rows of `table` a statement cannot prune."""
    if table.endswith(".identifies"):
        if "@since" in text:  # partitioned by day on loaded_at, clustered by loaded_at first
            return layout.new_rows if clustered else layout.identify_rows / layout.days
        return layout.identify_rows
    if table.endswith(".tracks"):  # partitioned by day on received_at: a window on loaded_at prunes no day
        by_load = spec("tracks").clustering[:1] == ("loaded_at",)
        return layout.new_rows if "@since" in text and by_load and clustered else layout.track_rows
    kept = {".users_state": layout.users, ".identities_state": layout.users * layout.identifiers_per_user}
    kept[".users_history_calls"] = layout.identify_rows
    # users_history: a period per call (an upper bound: a call that changes nothing starts none).
    kept[".users_history"] = layout.identify_rows
    for suffix, rows in kept.items():
        if not table.endswith(suffix):
            continue
        if suffix == ".identities_state":
            rows += layout.identify_rows + layout.track_rows  # a message row per call folded
        named = confined_to(text, _BETWEEN, _IN)
        return rows * len(named) / BUCKETS if named is not None and pruned else rows
    if table.endswith(f".{SYNC_HISTORY}"):
        return layout.history_rows_per_day  # started_at >= a day ago: one daily partition or two
    # The event tables and discards are partitioned by day on received_at: a bound on loaded_at prunes none
    # of it; the memberships sync's bound on received_at (a month before @since) prunes the older days.
    recent = min(1.0, memberships.RECEIVED_BEFORE_LOADED_DAYS / layout.days) if "TIMESTAMP_SUB(@since" in text else 1.0
    if table.rsplit(".", 1)[-1] in AUDIENCE_TRACKS:
        return layout.audience_track_rows * recent  # clustered by user_id only
    if table.endswith(".discards"):
        return layout.audience_discards * recent  # clustered by table_name, column_name: the audience columns
    if table.endswith((f".{memberships.EVENTS}", f".{memberships.TABLE}")):
        rows = audience_events(layout) / (1 if table.endswith(f".{memberships.EVENTS}") else 2)
        named = confined_to(text, _BETWEEN, _IN)
        return rows * len(named) / BUCKETS if named is not None and pruned else rows
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
    layout: Layout,
    analyzer: sqlcheck.Analyzer,
    path: str,
    *,
    clustered: bool = True,
    pruned: bool = True,
    only: str | None = None,
) -> Bytes:
    sizes, tables, read, billed, lines = value_bytes(layout), catalog(layout), 0.0, 0.0, []
    by_table: dict[str, float] = {}
    sent = statements(layout, path, only)
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
            track_rows=calls_per_day * 30,
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
            **{
                f"{d.name} USD per day": dollars(measure(day, analyzer, "fold", only=d.name).billed) * runs
                for d in DERIVED
            },
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
    by_derived = {d.name: {path: measure(layout, analyzer, path, only=d.name).read for path in PATHS} for d in DERIVED}
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
        "read_by_derived_table": by_derived,
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
    for name, read in result["read_by_derived_table"].items():
        each = ", ".join(f"{path} {b / MB:,.2f} MB" for path, b in read.items())
        print(f"{name} alone: {each}; fold / full rebuild {read['fold'] / read['full rebuild']:.4f}")
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
            f"${cost['idle USD per day']:.2f} a day (${PRICE_PER_TIB}/TiB); "
            + ", ".join(f"{d.name} alone ${cost[f'{d.name} USD per day']:.2f}" for d in DERIVED)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
