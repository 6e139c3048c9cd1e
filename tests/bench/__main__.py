"""`make bench`: run every benchmark and write docs/performance.md (the whole file, generated).

    PYTHONPATH=functions:. python -m tests.bench [--quick] [--out docs/performance.md]

Sections: the ingest function under concurrency over HTTP, through the Pub/Sub emulator's push,
BigQuery write requests, cold start (tests/bench/bench_stack.py, one stack of their own on ports
28050-28090); core CPU and memory (tests/bench/bench_ingest.py, in process); the two writers
(tests/bench/bench_writers.py, in process); users sync (tests/bench/bench_sync.py). Every ratio is
measured side by side in this run; figures are medians of `--runs` runs. `--quick` is for iterating
on the harness: fewer messages, a small sync table (its figures are then not the ones to publish).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from statistics import median
from typing import Any

from infra.local.stack import ROOT
from tests.bench import bench_ingest, bench_stack, bench_sync, bench_writers

MB = 1_000_000
ROW = tuple[str, str, str, str, str, str]
HEADER = "| figure | ours | baseline | ratio | target | met? |\n|---|---|---|---|---|---|"


def table(rows: Sequence[ROW]) -> str:
    return "\n".join([HEADER, *("| " + " | ".join(r) + " |" for r in rows)])


def met(ok: bool, why_not: str = "") -> str:
    return "yes" if ok else f"no: {why_not}" if why_not else "no"


# --- sections ---------------------------------------------------------------------------------------------


def cpu_ratio(level: bench_stack.Level) -> float:
    """CPU per message of ours (function and bqemulator) over the bare function's."""
    ours = median(level.ours_function_cpu) + median(level.ours_bigquery_cpu)
    return ours / median(level.bare_function_cpu)


def http_section(s: bench_stack.StackFigures) -> str:
    h = s.http
    rows: list[ROW] = []
    for level in h.levels:
        n, ratio = level.concurrency, median(level.ratios)
        target, verdict = "", ""
        if n == 32:
            writes = median(level.writes_per_1000)
            if writes >= 900:
                why = f"each message still pays its own BigQuery write ({writes:.0f} per 1,000 messages, section 3)"
            else:
                function_ratio = median(level.ours_function_cpu) / median(level.bare_function_cpu)
                why = (
                    f"ours spends {cpu_ratio(level):.1f}x the bare function's CPU per message on this 2-CPU "
                    f"machine (next rows): bqemulator writing the rows, which BigQuery's servers do in "
                    f"production, and in the function ({function_ratio:.1f}x the bare one's) the client side "
                    f"of {writes:.0f} insertAll calls per 1,000 messages (about 1 ms of CPU each in the "
                    "client library and requests); the per-call core is 3 to 4% of it (section 4)"
                )
            target, verdict = ">= 0.5x", met(ratio >= 0.5, why)
        rows.append(
            (
                f"calls/s, single-call push bodies, {n} in flight",
                f"{median(level.ours):,.0f}",
                f"{median(level.bare):,.0f}",
                f"{ratio:.2f}x",
                target,
                verdict,
            )
        )
    for level in h.levels:
        ours_function, ours_bigquery = median(level.ours_function_cpu), median(level.ours_bigquery_cpu)
        rows.append(
            (
                f"server CPU per message, {level.concurrency} in flight: function + bqemulator (ours), function (bare)",
                f"{(ours_function + ours_bigquery) * 1e6:,.0f} us ({ours_function * 1e6:,.0f} + "
                f"{ours_bigquery * 1e6:,.0f})",
                f"{median(level.bare_function_cpu) * 1e6:,.0f} us",
                f"{cpu_ratio(level):.2f}x",
                "",
                "",
            )
        )
    failed = sum(level.failed_ours for level in h.levels), sum(level.failed_bare for level in h.levels)
    return f"""## 1. Under concurrency, over HTTP

The ingest function as the stack runs it (functions-framework serving build/function, THREADS=80 as in
production, writing to bqemulator) against the bare function (`tests/bench/bare_function`: parses the
push body, base64-decodes and parses the call, answers 204; no write), served the same way. One load
generator (Python threads, one keep-alive `http.client` connection each) POSTs Pub/Sub push bodies of
single-call messages (an identify, as Personas sends) to each in turn, {h.messages} messages per
level and run, {h.runs} runs alternating which goes first; calls/s is messages over wall time, the
figure the median of the runs, the ratio the median of each run's ours/bare. Ours writes each level
and run into a space of its own (tables created by one call before the clock starts), because
bqemulator's insertAll slows as a table grows. The load generator shares the machine's CPUs with both
servers. Server CPU per message is the user and system time of each server's process group (from
/proc) over the messages of the run.

{table(rows)}

Every call ours acked (204) was then looked up in BigQuery by its id with `infra.ops.reconcile`'s
query: {h.acked_checked:,} acked, {h.missing} missing (a missing one fails `make bench`). Answers other
than 204: ours {failed[0]}, bare {failed[1]}.
"""


def push_section(s: bench_stack.StackFigures) -> str:
    p = s.push
    ours, bare = median(p.ours_seconds), median(p.bare_seconds)
    rows: list[ROW] = [
        (
            f"seconds until {p.messages} published single-call messages are acked",
            f"{ours:.2f} s",
            f"{bare:.2f} s",
            f"{median(p.ratios):.2f}x",
            "none (reported)",
            "",
        ),
        (
            "milliseconds per message (the seconds above / messages)",
            f"{ours / p.messages * 1000:.1f}",
            f"{bare / p.messages * 1000:.1f}",
            "",
            "",
            "",
        ),
    ]
    return f"""## 2. Through the Pub/Sub emulator's push

{p.messages} single-call messages published to the stack's topic, whose push subscription targets ours,
and as many to a topic whose push subscription targets the bare function; the time from the first
publish until the last call landed (ours: its rows counted in BigQuery, polled every
{bench_stack.OURS_POLL:g} s; bare: the function's own ack counter, polled every {bench_stack.BARE_POLL:g} s).
{len(p.ratios)} runs, alternating. Google's emulator keeps about two
messages in flight per subscription, so this is the latency of one message (with the emulator's own
share), not throughput; real Pub/Sub push ramps up to many messages in flight.

{table(rows)}
"""


def writes_section(s: bench_stack.StackFigures) -> str:
    rows: list[ROW] = []
    for level in s.http.levels:
        n, writes = level.concurrency, median(level.writes_per_1000)
        floor = 1000 / n
        target, verdict = "", ""
        if n >= 8:
            target = "<= 50"
            if floor > 50:
                why = (
                    f"with ack-after-durable and {n} in flight, at most {n} messages' rows can share a write, so "
                    f"the floor is {floor:.0f} per table"
                )
            elif writes >= 900:
                why = "one write per message: requests in flight do not share writes"
            else:
                why = (
                    f"{writes / floor:.1f}x the floor, {1000 / writes:.0f} messages per write: the load generator "
                    "sends a message when one is answered, so the requests one write releases come back while "
                    "the next is in flight and two cohorts take turns. Making a group wait a few ms for them "
                    "(tried: 1 and 3 ms) cut writes to 50-57 per 1,000 but lowered calls/s, so it was not kept"
                )
            verdict = met(writes <= 50, why)
        rows.append(
            (
                f"BigQuery write requests per 1,000 single-call messages, {n} in flight",
                f"{writes:.0f}",
                f"{floor:.0f} (floor: 1,000 / {n})",
                f"{writes / floor:.2f}x the floor",
                target,
                verdict,
            )
        )
    return f"""## 3. BigQuery write requests

Counted on the server: the local bqemulator launcher (`infra/local/bqemulator_server.py`) counts
insertAll POSTs and Storage Write API AppendRows requests (`GET /_personas/counters`); the figure is
the delta around ours' runs of section 1, per 1,000 messages, median of the runs. Every message is
one identify, so every write goes to one table. A request is acked only once its rows are written,
so at {"/".join(str(level.concurrency) for level in s.http.levels)} in flight one write can carry the
rows of at most that many messages: the floor is 1,000 / concurrency writes per table.

{table(rows)}
"""


def core_section(core: bench_ingest.CoreFigures, memory: bench_ingest.MemoryFigures) -> str:
    rows: list[ROW] = [
        (
            "core CPU per call (decode, validate, shape, fit), single-call messages, vs `json.loads` of the same bytes",
            f"{core.single_us:.0f} us",
            f"{core.json_loads_us:.1f} us",
            f"{core.single_vs_json:.1f}x",
            "<= 5x",
            met(core.single_vs_json <= 5, f"{core.single_vs_json / 5:.1f}x over the target: see issue 7 part 3"),
        ),
        (
            "core CPU per call in 100-call batch envelopes vs single-call messages",
            f"{core.batched_us:.0f} us",
            f"{core.single_us:.0f} us",
            f"{core.batched_vs_single:.2f}x",
            "none (reported)",
            "",
        ),
        (
            f"peak traced memory during calls {memory.calls_first + 1:,}-{memory.calls_total:,} vs during the "
            f"first {memory.calls_first:,}",
            f"{memory.peak_rest:,} B",
            f"{memory.peak_first:,} B",
            f"{memory.peak_growth:.2f}x",
            "<= 1.1x",
            met(memory.peak_growth <= 1.1),
        ),
        (
            f"bytes still held per call after the first {memory.calls_first:,} (traced after gc, at "
            f"{memory.calls_total:,} calls minus at {memory.calls_first:,})",
            f"{memory.retained_per_call:.1f} B",
            "",
            "",
            "<= 10 B (a kept row would be ~1,000 B)",
            met(memory.retained_per_call <= 10),
        ),
    ]
    return f"""## 4. Core CPU and memory

In process (`tests/bench/bench_ingest.py`). CPU: `core()` (decode, validate, shape, fit of one
Personas identify) over 2,000 single-call messages, `json.loads` of the same 2,000 call bodies, and
the same calls in 100-call batch envelopes, timed back to back (process CPU time) in each of
{core.runs} runs; figures are medians, ratios the median of each run's ratio. Memory: the whole ingest
path (`ingest()` over `Warehouse` over a fake BigQuery client that keeps no rows; log lines written
to /dev/null) for {memory.calls_total:,} single-call messages after 100 untraced warm-up calls,
measured with tracemalloc: a flat line holds no more at {memory.calls_total:,} calls than at
{memory.calls_first:,}.

{table(rows)}
"""


def cold_gap(c: bench_stack.ColdFigures) -> str:
    """Where the difference goes: imports, or the first request (its BigQuery round trips)."""
    total = median(c.ours_first) - median(c.bare_first)
    imports = median(c.ours_import) - median(c.bare_import)
    client = median(c.ours_client_import) - median(c.bare_client_import)
    validation = median(c.ours_validation_import)
    rest = imports - client - validation
    return (
        f"{imports * 1000:.0f} of the {total * 1000:.0f} ms more are imports: marshmallow and PyYAML up to "
        f"{validation * 1000:.0f} ms (timed alone, with standard-library modules that other imports would "
        f"load anyway), google-cloud-bigquery-storage's effect on the client's import {client * 1000:.0f} ms, "
        f"the package itself and its config at least {max(rest, 0) * 1000:.0f} ms; the rest is the first "
        "request's round trips to BigQuery (the table's schema, the write). marshmallow validates calls and "
        "the config at start-up; the Write API package is what BIGQUERY_WRITER=storage_write needs"
    )


def cold_section(s: bench_stack.StackFigures) -> str:
    c = s.cold
    first, imported = median(c.ratios), median(o / b for o, b in zip(c.ours_import, c.bare_import, strict=True))
    rows: list[ROW] = [
        (
            "spawn to first answer: interpreter, imports, app, one push request written to bqemulator",
            f"{median(c.ours_first) * 1000:.0f} ms",
            f"{median(c.bare_first) * 1000:.0f} ms",
            f"{first:.2f}x",
            "<= 1.2x",
            met(first <= 1.2, cold_gap(c)),
        ),
        (
            "of which `import google.cloud.bigquery` alone (google-cloud-bigquery-storage, installed beside it "
            "for BIGQUERY_WRITER=storage_write, makes it import the Storage Read client)",
            f"{median(c.ours_client_import) * 1000:.0f} ms",
            f"{median(c.bare_client_import) * 1000:.0f} ms",
            f"{median(c.ours_client_import) / median(c.bare_client_import):.2f}x",
            "",
            "",
        ),
        (
            "of which `import marshmallow, yaml` (validation of calls and of the config file; ours only)",
            f"{median(c.ours_validation_import) * 1000:.0f} ms",
            "",
            "",
            "",
            "",
        ),
        (
            "spawn to app built (interpreter and imports only)",
            f"{median(c.ours_import) * 1000:.0f} ms",
            f"{median(c.bare_import) * 1000:.0f} ms",
            f"{imported:.2f}x",
            "",
            "",
        ),
    ]
    return f"""## 5. Cold start

A fresh `python` process builds functions-framework's app (`create_app`) for the staged function
(build/function/main.py, with the env the stack gives it: emulator hosts, PYTHONPATH on the staged
copy) and answers one push request through Flask's test client: a real first call, which reads the
table's schema from bqemulator and writes the row. The baseline process imports only
`functions_framework` and `google.cloud.bigquery` and does the same with the bare function. Times
from spawn, by the parent's clock; medians of {len(c.ratios)} runs alternating which goes first; the
ratio is the median of each run's ratio. Each process runs in a venv holding exactly what its
deployment installs (`.cache/bench-venvs/`, built once): ours `functions/requirements.txt`, the baseline
functions-framework and google-cloud-bigquery at the same pins. Not the dev venv: there bqemulator's
pyarrow and numpy are installed, and `google.cloud.bigquery` imports them, in both processes. A Cloud
Functions cold start adds the platform's own (container start) time to both.

{table(rows)}
"""


def writers_section(writers: dict[str, dict[str, float]], shared: dict[str, dict[str, float]]) -> str:
    insert_all, storage_write = writers["insert_all"], writers["storage_write"]
    ratio = storage_write["cpu_us_per_row"] / insert_all["cpu_us_per_row"]
    kept, each, http = shared["storage_write"], shared["storage_write_no_reuse"], shared["insert_all"]
    group = f"{bench_writers.WRITES} writes of {bench_writers.GROUP} rows"
    rows: list[ROW] = [
        (
            f"rows per write request, {bench_writers.ROWS:,} rows handed to the writer at once",
            f"{storage_write['rows_per_request']:,.0f} (storage_write)",
            f"{insert_all['rows_per_request']:,.0f} (insert_all)",
            f"{storage_write['rows_per_request'] / insert_all['rows_per_request']:.1f}x",
            "none (reported)",
            "",
        ),
        (
            "client CPU per row, those rows (preparing and serializing them, no transport)",
            f"{storage_write['cpu_us_per_row']:.1f} us (storage_write)",
            f"{insert_all['cpu_us_per_row']:.1f} us (insert_all)",
            f"{ratio:.2f}x",
            "none (reported)",
            "",
        ),
        (
            f"client CPU per shared write, {group}, over the real transports",
            f"{kept['cpu_us_per_write']:,.0f} us (storage_write, kept connection)",
            f"{http['cpu_us_per_write']:,.0f} us (insert_all, HTTP keep-alive)",
            f"{kept['cpu_us_per_write'] / http['cpu_us_per_write']:.2f}x",
            "none (reported)",
            "",
        ),
        (
            f"the same, the Write API's connection kept or opened per append ({group})",
            f"{kept['cpu_us_per_write']:,.0f} us, {kept['connections']:.0f} connection",
            f"{each['cpu_us_per_write']:,.0f} us, {each['connections']:.0f} connections",
            f"{kept['cpu_us_per_write'] / each['cpu_us_per_write']:.2f}x",
            "< 1 (Google: one connection for many writes)",
            met(kept["cpu_us_per_write"] < each["cpu_us_per_write"]),
        ),
    ]
    return f"""## 7. The two writers

`tests/bench/bench_writers.py`, process CPU time of the client alone. First the same {bench_writers.ROWS:,}
fitted `identifies` rows handed to each writer at once, prepared and written by its real code down to
the wire and no further (insertAll through google-cloud-bigquery's own `Client` to an HTTP session that
answers at once; the Write API's `StorageWriteWriter` down to the serialized `AppendRowsRequest`), median
of {bench_writers.RUNS} runs. Then {group} (what a group carries with a few dozen single-call requests in
flight) over the real transports to a local server in another process that answers at once: insertAll
over HTTP, the Write API over gRPC with its kept connection, and with a new connection per append;
median of 3 runs. Local wall time of the Write API on bqemulator says nothing about BigQuery's, so neither
is timed against the emulator. docs/writers.md weighs these figures in choosing the default writer.

{table(rows)}
"""


def sync_section(sync: dict[str, Any], quick: bool) -> str:
    layout, paths = sync["layout"], sync["paths"]
    wall, schedules = sync["local_wall_times"], sync["schedules_at_1M_calls_and_1M_users"]
    buckets = bench_sync.BUCKETS
    touched_share = 1 - (1 - 1 / buckets) ** layout["touched_users"]
    ratio = sync["ratio_read"]
    wall_ratio = wall["incremental_seconds"] / wall["full_seconds"]
    local = f"{wall['rows']:,} rows, {wall['users']:,} users, 1% touched (`--local-rows {wall['rows']}`)"
    why = {
        "fold": f"the rows loaded since the last run; the {touched_share:.1%} of `users_state`'s {buckets:,} "
        f"partitions that hold one of the {layout['touched_users']:,} users touched",
        "idle": "the history (one query per run, every space) and the window, both empty: no DML",
        "column switched back on": "the whole history of the column and the order columns, in chunks of at most 4,000 "
        "partitions (here every partition holds a user with a value: the worst case)",
        "full rebuild": "the whole history, once per chunk of 4,000 partitions (three for 10,000): a space's "
        "first run, `--full`, a layout change",
    }
    rows = "\n".join(
        f"| {path} | {p['jobs']} ({p['dml']}) | {p['read'] / MB:,.1f} MB | {p['billed'] / MB:,.1f} MB | "
        f"{p['read_unpruned'] / MB:,.1f} MB | {why[path]} |"
        for path, p in paths.items()
    )
    cost_rows = "\n".join(
        f"| {name} | {f['runs']:,} | {f['MB billed per run']:,.0f} MB | ${f['USD per day']:.2f} | "
        f"${f['USD per day, target unpruned']:.2f} | ${f['idle USD per day']:.2f} |"
        for name, f in schedules.items()
    )
    every_minute = schedules["every minute (the default)"]
    return f"""## 6. The sync: what each path reads (issue 13)

Method. Dry runs on bqemulator report 0 bytes, so the bytes are computed by BigQuery's billing rule:
a query pays for every column it reads of every partition it cannot prune, at least 10 MB per table.
The statements are the sync's own (`run_sync` over a recording client, once per path); the columns each
statement reads come from Google's ZetaSQL analyzer with unused columns pruned; the rows each scan covers
follow from the layout: `identifies` is partitioned by day and clustered on `loaded_at` (a statement
bounded by `@since` reads the rows loaded since the last run; the others the whole history); every
statement names the `users_state` partitions it may touch as constants in its merge condition (of
{buckets:,}, by a hash of the user id). Google documents pruning on such constant filters but says the
optimizer "might or might not" push a merge condition down, so every path is also priced with the
target read whole ("unpruned"). Bytes per value are BigQuery's (STRING 2 + length,
INT64/FLOAT64/TIMESTAMP 8, BOOL 1, NULL 0); every user is assumed to have every one of
{layout["traits"]} traits (an upper bound on `users_state`).

Layout: {layout["identify_rows"]:,} identify rows over {layout["days"]} daily partitions, {layout["users"]:,}
users, {layout["touched_users"] / layout["users"]:.0%} of them ({layout["touched_users"]:,}) touched by
{layout["new_rows"]:,} rows since the last run, {layout["traits"]} traits, {layout["traits_per_call"]} traits per call.

| path | jobs (DML) | read | billed | read, target unpruned | what it reads |
|---|---|---|---|---|---|
{rows}

A fold reads {ratio:.4f}x the bytes of a full rebuild (target 0.05: met{"" if ratio <= 0.05 else " NOT"}); with day
partitions only (no clustering on `loaded_at`) {sync["ratio_read_day_partitions_only"]:.4f}x. No statement modifies
more than 4,000 partitions (BigQuery's limit per job; `tests/unit/test_sync_partitions.py` drives every path at
1,000,000 users through a model that refuses more). On bqemulator, {local}: full run {wall["full_seconds"]:.1f} s,
incremental {wall["incremental_seconds"]:.1f} s ({wall_ratio:.3f}x; local timings say nothing about BigQuery's{
        " and this run used `--quick`" if quick else ""
    }).

### The sync: what a schedule costs

Same model, 1,000,000 calls a day, 1,000,000 users, `SYNC_OVERLAP_SECONDS` =
{bench_sync.Settings().sync_overlap_seconds:g} (each run re-reads that much), ${bench_sync.PRICE_PER_TIB} per TiB
on-demand (source and date in `docs/costs.md`). "Idle space": a space with no new calls, whose run still
sends its window query and the run's history query (10 MB minimum each).

| schedule | runs a day | billed per run | per day | per day, target unpruned | idle space, per day |
|---|---|---|---|---|---|
{cost_rows}

A one-minute schedule is the default (`sync_schedule` in Terraform; `make up` runs the same locally):
${every_minute["USD per day"]:.2f} a day buys `users` within about a minute of a call, and each idle space
adds ${every_minute["idle USD per day"]:.2f}. Set `sync_schedule = "*/15 * * * *"` or `"0 * * * *"` for the
cheaper rows.
"""


# --- the document -----------------------------------------------------------------------------------------


def environment() -> str:
    from infra.local.load import environment as stack_environment

    env = stack_environment()
    return "\n".join(f"- {key}: {value}" for key, value in env.items())


def document(parts: list[str], env: str, when: datetime, command: str, seconds: float, quick: bool, runs: int) -> str:
    body = "\n".join(parts)
    notice = "\n**This run used `--quick`: fewer messages and a small sync table. Not for publishing.**\n"
    return f"""# Performance

Generated by `make bench` (`{command}`) on {when:%Y-%m-%d %H:%M} UTC in {seconds / 60:.1f} minutes;
do not edit by hand. Machines here are noisy (other jobs share the CPUs): every ratio is measured side
by side in this one run, every timing is a median of {runs} runs, and counts do not depend on speed.
Tables: figure, ours, the baseline it is compared with, ratio, target, and whether it is met (or why
not).
{notice if quick else ""}
Machine and versions:

{env}
- date: {when:%Y-%m-%d}

{body}"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for iterating on the harness")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (medians; at least 3)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    began, when = time.monotonic(), datetime.now(UTC)
    env = environment()
    print("core CPU and memory ...", file=sys.stderr)
    core = bench_ingest.measure_core(runs=max(5, args.runs))
    memory = bench_ingest.measure_memory()
    stack = bench_stack.measure_stack(
        messages=100 if args.quick else 1000, push_messages=30 if args.quick else 200, runs=args.runs
    )
    print("the two writers ...", file=sys.stderr)
    writers = bench_writers.measure_writers(runs=bench_writers.RUNS)
    shared = bench_writers.measure_shared_writes()
    print("users sync ...", file=sys.stderr)
    sync = bench_sync.figures(20_000 if args.quick else 200_000)
    parts = [
        http_section(stack),
        push_section(stack),
        writes_section(stack),
        core_section(core, memory),
        cold_section(stack),
        writers_section(writers, shared),
        sync_section(sync, args.quick),
    ]
    flags = shlex.join(sys.argv[1:] if argv is None else argv)
    command = f"PYTHONPATH=functions:. python -m tests.bench {flags}".strip()
    text = document(parts, env, when, command, time.monotonic() - began, args.quick, args.runs)
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
