"""users_history: the two designs priced by the bench's bytes model (bench_sync: its layouts, its bytes per
value, its partitions), so that the choice in docs/users_history.md can be checked and redone.

(a) per-period as-of keys: users_history keeps, beside every trait of every period, the key of the call its
    value came from (as users_state does per user), so that a late call is folded into the periods after
    it. A period is then a call (its as-of keys change at every call, so periods cannot be merged), and a
    fold reads and rewrites the touched users' partitions of that wide table.
(b) what derived/users_history.py does: users_history holds the periods only; users_history_calls one row
    per call (its traits as sparse as in identifies); a fold inserts the window's calls, then recomputes
    the touched users' periods from their calls.

Per fold, BigQuery bills a MERGE q' (the columns it reads of the partitions it scans) plus, when it has an
UPDATE or DELETE clause, t' (every column of the partitions it modifies); a MERGE with only an INSERT clause
pays q' alone (https://cloud.google.com/bigquery/docs/reference/standard-sql/dml-syntax, "On-demand query
size calculation"). The bench's analyzer-based figures (bench_sync.measure) leave t' out; here it is in.

Run: PYTHONPATH=functions:. python -m tests.bench.history_designs
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tests.bench import bench_sync
from tests.bench.bench_sync import BUCKETS, MB, PRICE_PER_TIB, TIB, Layout, trait, value_bytes


@dataclass(frozen=True)
class Priced:
    fold_bytes: float  # billed per fold (q' + t'), without BigQuery's 10 MB minimum per table
    stored_bytes: float  # what the design keeps, all users


def touched_share(layout: Layout) -> float:
    """Share of the 10,000 partitions that hold one of the touched users (a random user per partition)."""
    return 1 - (1 - 1 / BUCKETS) ** layout.touched_users


def designs(layout: Layout) -> dict[str, Priced]:
    sizes = value_bytes(layout)
    identifies, calls, periods = sizes["identifies"], sizes["users_history_calls"], sizes["users_history"]
    share = touched_share(layout)
    window = layout.new_rows
    window_row = sum(identifies[c] for c in ("id", "user_id", "timestamp", "received_at", "loaded_at"))
    window_row += sum(identifies[trait(i)] for i in range(layout.traits))
    # (b): the calls (rows per call), the periods (a period per call: an upper bound).
    call_row, period_row = sum(calls.values()), sum(periods.values())
    rows = layout.identify_rows * share
    store = window * window_row + rows * (calls["user_id"] + calls["_key"] + calls["_bucket"])  # insert only
    recompute = 2 * window * (identifies["user_id"] + identifies["timestamp"])  # the scope, twice
    recompute += rows * call_row  # the touched users' calls
    recompute += rows * (periods["id"] + periods["valid_from"] + periods["valid_to"] + periods["_bucket"])
    recompute += rows * period_row  # t': the periods' partitions it modifies
    b = Priced(store + recompute, layout.identify_rows * (call_row + period_row))
    # (a): a period per call with a 34-byte key beside every trait and one for the period's own call.
    key = calls["_key"]
    wide_row = period_row + key + layout.traits * key
    a = Priced(window * window_row + 2 * rows * wide_row, layout.identify_rows * wide_row)  # q' reads it all, t'
    return {"(a) per-period as-of keys": a, "(b) calls kept, periods recomputed": b}


def schedule(minutes: int) -> Layout:
    """bench_sync's schedule layout: 1,000,000 calls a day for 30 days, 1,000,000 users."""
    overlap = bench_sync.Settings().sync_overlap_seconds / 60
    new = math.ceil(1_000_000 / 1440 * (minutes + overlap))
    return replace(Layout(), identify_rows=30_000_000, days=30, users=1_000_000, new_rows=new, touched_users=new)


def main() -> int:
    print("layout            design                                fold, MB billed   USD a day   stored, GB")
    for label, layout, runs in (
        ("bench default", Layout(), 0),
        ("every minute", schedule(1), 1440),
        ("every 15 minutes", schedule(15), 96),
        ("every hour", schedule(60), 24),
    ):
        for name, priced in designs(layout).items():
            day = f"{priced.fold_bytes * runs / TIB * PRICE_PER_TIB:>9.2f}" if runs else f"{'':>9}"
            print(
                f"{label:<17} {name:<37} {priced.fold_bytes / MB:>15,.1f}   {day}   {priced.stored_bytes / 1e9:>10,.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
