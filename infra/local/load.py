"""Load test: at least 20,000 single-call messages through Google's Pub/Sub emulator and its push
subscription into the ingest function, then prove with the operator's own command
(`python -m infra.ops.reconcile --ids-file`) that every call is accounted for.

    python -m infra.local.load [--calls 20000] [--malformed-percent 1] [--doc docs/load.md | --no-doc]
    make load

It starts its own stack on spare ports below Linux's ephemeral range (24085, 24050, 24060, 24080,
24081, plus PERSONAS_TEST_PORT_OFFSET; the users sync scheduler is off), so it neither needs nor disturbs
`make up` or the integration tests, and stops every process it started, whatever happens. What it
publishes, round-robin over four spaces (the `space` attribute):
identify and track calls shaped like Personas' (audience booleans and computed traits under `traits`,
`context.personas`, "Audience Entered" / "Audience Exited" / "Trait Computed"), and 1% malformed
messages, half not JSON at all and half valid JSON that breaks the call schema (no userId or
anonymousId, a track without event, traits not an object, an unknown call type, a bad timestamp).

It writes the ids file as `python -m infra.publish --ids-file` does (the bad-JSON messages carry no
call id, so reconcile finds them by their Pub/Sub id), waits until rows plus rejections stop growing
(bounded by --timeout), runs reconcile on the ids file, and compares its per-space answer with what
was published: every valid call a row, every malformed one a rejection of the expected class.

Exit status 0 when nothing is missing or unexplained (duplicate rows are reported: Pub/Sub delivers at
least once and the `_view`s remove them); 1 otherwise; 2 when the stack could not start.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra.local.stack import ROOT, StackConfig, running

SPACES = ("load_marketing", "load_sales", "load_support", "load_growth")
EVENTS = ("Audience Entered", "Audience Exited", "Trait Computed")
AUDIENCES = ("first_time_shopper", "cart_abandoner", "high_value", "churn_risk")
USERS_PER_SPACE = 2_000
POLL_SECONDS = 3.0  # each poll is a query on bqemulator, which is also what every push request writes to
LOAD_CONFIG = StackConfig.spare(24_000, "load")
WORK = ROOT / "build" / "load"
DOC = ROOT / "docs" / "load.md"
COMMAND = "make load  (python -m infra.local.load)"


@dataclass(frozen=True)
class Published:
    """One message to publish and what it must become."""

    space: str
    data: bytes
    call_id: str | None  # its call's messageId (None: not JSON, nothing to name it by)
    expect: str  # "row", or the error class of its rejection


@dataclass
class Result:
    calls: int = 0
    malformed: int = 0
    publish_seconds: float = 0.0
    seconds: float = 0.0  # first publish to the last row or rejection seen
    quiet: str = ""  # how the wait ended
    reconcile_seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)
    table: str = ""
    problems: list[str] = field(default_factory=list)
    latency_ms: list[int] = field(default_factory=list)  # the ingest function's, per push request
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, calls landed) per poll
    load_after: str = ""  # load average when the pipeline went quiet: the machine is shared

    def rate_between(self, start: float, end: float) -> float:
        """Calls landed per second between two moments of the run (nearest polls)."""
        inside = [(t, n) for t, n in self.samples if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return float("nan")
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])

    def rate_text(self) -> str:
        first = self.rate_between(0, 60)
        last = self.rate_between(self.seconds - 60, self.seconds)
        return f"{first:.0f} calls/s in the first minute, {last:.0f} in the last"

    @property
    def in_flight(self) -> float:
        """Requests inside the ingest function on average: its busy time over the run's duration."""
        return sum(self.latency_ms) / 1000 / self.seconds if self.seconds else 0.0

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


# --- what is published ------------------------------------------------------------------------------------


def _personas_context(space_id: str, computation_class: str, key: str) -> dict[str, Any]:
    return {
        "personas": {
            "computation_class": computation_class,
            "computation_id": f"{computation_class[:3]}_{key}",
            "computation_key": key,
            "namespace": space_id,
            "space_id": space_id,
        },
        "library": {"name": "unknown", "version": "unknown"},
    }


def valid_call(i: int, run: str, space: str) -> dict[str, Any]:
    """Alternately an identify and a track, as Personas sends them for audiences and computed traits."""
    user = f"u{(i // len(SPACES)) % USERS_PER_SPACE}"
    stamp = f"2026-11-29T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z"
    audience = AUDIENCES[i % len(AUDIENCES)]
    common: dict[str, Any] = {
        "userId": user,
        "messageId": f"load-{run}-{i}",
        "timestamp": stamp,
        "sentAt": stamp,
        "integrations": {"All": False, "Warehouses": {"all": True}},
        "channel": "server",
        "version": 2,
    }
    if i % 2 == 0:
        if i % 4 == 0:
            traits: dict[str, Any] = {audience: i % 8 == 0}
            context = _personas_context(f"spa_{space}", "audience", audience)
        else:
            traits = {"total_revenue_180_days": 450.0 + i % 997}
            context = _personas_context(f"spa_{space}", "trait", "total_revenue_180_days")
        return {"type": "identify", **common, "traits": traits, "context": context}
    event = EVENTS[(i // 2) % len(EVENTS)]
    if event == "Trait Computed":
        props: dict[str, Any] = {"trait_key": "total_revenue_180_days", "total_revenue_180_days": 450.0 + i % 997}
        context = _personas_context(f"spa_{space}", "trait", "total_revenue_180_days")
    else:
        props = {"audience_key": audience, audience: event == "Audience Entered"}
        context = _personas_context(f"spa_{space}", "audience", audience)
    return {"type": "track", **common, "event": event, "properties": props, "context": context}


def schema_violation(i: int, run: str, variant: int) -> dict[str, Any]:
    """Valid JSON, invalid call: each kind a different field of the schema."""
    base: dict[str, Any] = {"type": "identify", "userId": f"u{i}", "messageId": f"load-{run}-{i}", "traits": {}}
    variants: list[dict[str, Any]] = [
        {**base, "userId": None},  # neither userId nor anonymousId
        {**base, "type": "track"},  # track without event
        {**base, "traits": ["not", "an", "object"]},
        {**base, "type": "page"},
        {**base, "timestamp": "yesterday"},
    ]
    return variants[variant % len(variants)]


def messages(count: int, malformed_percent: float, run: str) -> list[Published]:
    """`count` single-call messages; every (100 / malformed_percent)-th is malformed, alternately not
    JSON and a schema violation."""
    every = round(100 / malformed_percent) if malformed_percent > 0 else 0
    out: list[Published] = []
    bad = 0
    for i in range(count):
        space = SPACES[i % len(SPACES)]
        if every and i % every == every - 1:
            bad += 1
            space = SPACES[(bad // 2) % len(SPACES)]  # each space gets both kinds
            if bad % 2:
                data = f'{{"type": "identify", "userId": "u{i}", "messageId": "load-{run}-{i}", "traits": {{'
                out.append(Published(space, data.encode(), None, "invalid_json"))
            else:
                doc = schema_violation(i, run, bad // 2)
                out.append(Published(space, json.dumps(doc).encode(), doc["messageId"], "schema_violation"))
            continue
        doc = valid_call(i, run, space)
        out.append(Published(space, json.dumps(doc, separators=(",", ":")).encode(), doc["messageId"], "row"))
    return out


def expected_by_space(items: list[Published]) -> dict[str, dict[str, Any]]:
    """Per space: calls, rows, and rejections by class, as reconcile should report them."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        entry = out.setdefault(item.space, {"calls": 0, "rows": 0, "rejected": Counter()})
        entry["calls"] += 1
        if item.expect == "row":
            entry["rows"] += 1
        else:
            entry["rejected"][item.expect] += 1
    return out


# --- publishing, waiting, reconciling ---------------------------------------------------------------------


def publish(items: list[Published], config: StackConfig, ids_path: Path) -> float:
    """Publish every message with its `space` attribute and write the ids file as `infra.publish
    --ids-file` does. Returns the seconds publishing took (until every message was confirmed)."""
    from infra.publish import BATCH_SETTINGS, ids_line

    publisher = config.publisher(batch_settings=BATCH_SETTINGS)
    topic = publisher.topic_path(config.project, config.topic)
    published_after = datetime.now(UTC)
    start = time.monotonic()
    try:
        futures: list[Future[str]] = [publisher.publish(topic, item.data, space=item.space) for item in items]
        ids = [future.result(timeout=120) for future in futures]
    finally:
        publisher.stop()
    seconds = time.monotonic() - start
    with open(ids_path, "w", encoding="utf-8") as out:
        for item, pubsub_id in zip(items, ids, strict=True):
            out.write(ids_line(pubsub_id, [item.call_id], item.space, published_after))
    return seconds


def landed(reader: Any) -> int:
    """Raw rows of identifies and tracks of every space, plus rejection rows: one per call that arrived
    (more if a redelivery duplicated one)."""
    from infra.ops import common, queries
    from personas_warehouse.sql import table

    parts = [
        f"SELECT COUNT(*) AS n FROM {table(reader.project, t.dataset, t.table)}"
        for t in common.raw_tables(reader.space_tables(), queries.RAW_TABLES)
    ]
    if "rejected_messages" in reader.ops_tables():
        parts.append(f"SELECT COUNT(*) AS n FROM {table(reader.project, reader.ops_dataset, 'rejected_messages')}")
    if not parts:
        return 0
    rows = reader.run(queries.Query("landed", "\nUNION ALL\n".join(parts)))
    return sum(int(r["n"]) for r in rows)


def wait_until_quiet(
    reader: Any,
    expected: int,
    started: float,
    *,
    quiet: float,
    stall: float,
    timeout: float,
    samples: list[tuple[float, int]] | None = None,
) -> tuple[float, str, int]:
    """Poll until the count stops growing: for `quiet` seconds once everything expected is there, or
    for `stall` seconds short of it (a stuck pipeline), or `timeout` after `started`. Returns (seconds
    from `started` to the last growth seen, how it ended, the count); `samples` gets every (seconds,
    count) polled, to show how the rate moved during the run."""
    count, last_change = -1, time.monotonic()
    shown = 0.0
    while True:
        now = time.monotonic()
        try:
            current = landed(reader)
        except Exception as exc:  # a table created between the listing and the query: ask again
            print(f"  (count failed, retrying: {type(exc).__name__})", file=sys.stderr)
            current = count
        if current != count:
            count, last_change = current, now
        if samples is not None:
            samples.append((now - started, count))
        if now - shown >= 10:
            print(f"  {now - started:6.0f} s  {count:>6} of {expected} calls landed", file=sys.stderr)
            shown = now
        idle = now - last_change
        if count >= expected and idle >= quiet:
            return last_change - started, f"quiet for {quiet:g} s with every call landed", count
        if idle >= stall:
            return last_change - started, f"stalled: no growth for {stall:g} s", count
        if now - started >= timeout:
            return last_change - started, f"timed out after {timeout:g} s", count
        time.sleep(POLL_SECONDS)


def reconcile(config: StackConfig, ids_path: Path) -> tuple[dict[str, Any], str, float]:
    """The operator's command, as an operator runs it: its JSON for checking, its table for the report."""
    env = {**os.environ, **config.exports()}
    argv = [sys.executable, "-m", "infra.ops.reconcile", "--ids-file", str(ids_path), "--project", config.project]
    start = time.monotonic()
    as_json = subprocess.run([*argv, "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - start
    if as_json.returncode not in (0, 1):
        raise RuntimeError(f"reconcile failed ({as_json.returncode}): {as_json.stderr[-2000:]}")
    table = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600).stdout
    return json.loads(as_json.stdout), table.rstrip(), seconds


def check(report: dict[str, Any], expected: dict[str, dict[str, Any]]) -> list[str]:
    """What reconcile says against what was published: anything missing, or rows and rejections that
    differ per space and class from the published mix, is a problem."""
    problems = []
    if report["totals"]["missing"]:
        problems.append(f"{report['totals']['missing']} calls missing")
    got = {s["space"]: s for s in report["spaces"]}
    for space in sorted(set(got) | set(expected)):
        want = expected.get(space, {"calls": 0, "rows": 0, "rejected": Counter()})
        have = got.get(space, {"calls": 0, "rows": 0, "rejected": {}})
        for key in ("calls", "rows"):
            if have[key] != want[key]:
                problems.append(f"{space}: {have[key]} {key}, published {want[key]}")
        if dict(have["rejected"]) != dict(want["rejected"]):
            problems.append(f"{space}: rejected {dict(have['rejected'])}, published {dict(want['rejected'])}")
    return problems


# --- the report -------------------------------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    emulator = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "google-cloud-cli-pubsub-emulator"], capture_output=True, text=True
    ).stdout
    return {
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu})",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "Pub/Sub emulator (google-cloud-cli-pubsub-emulator)": emulator or "unknown",
        "bqemulator": _version("bqemulator"),
        "duckdb": _version("duckdb"),
        "functions-framework": _version("functions-framework"),
        "google-cloud-pubsub": _version("google-cloud-pubsub"),
        "google-cloud-bigquery": _version("google-cloud-bigquery"),
    }


def push_latencies(log: Path) -> list[int]:
    """latency_ms of every push request the ingest function answered (its one log line per request)."""
    out = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("{") and '"push ' in line:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("message", "").startswith("push ") and "latency_ms" in entry:
                    out.append(int(entry["latency_ms"]))
    return out


def latency_text(result: Result) -> str:
    if not result.latency_ms:
        return "no push log lines found"
    ordered = sorted(result.latency_ms)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return (
        f"{len(ordered)} requests, median {statistics.median(ordered):.0f} ms, p95 {p95} ms, "
        f"{result.in_flight:.2f} in flight on average"
    )


def limit_paragraph(result: Result) -> list[str]:
    """What limits the rate, with this run's own figures."""
    median = statistics.median(result.latency_ms) if result.latency_ms else float("nan")
    text = (
        "What limits the rate: the Pub/Sub emulator's push delivery. It keeps about 2 messages in flight per"
        " subscription (measured on these machines: a function sleeping 100 ms per message got 400 messages"
        f" in 21.5 s, never more than 2 at once; this run: {result.in_flight:.2f} requests inside the ingest"
        " function on average), so the rate is that concurrency over the function's time per request"
        f" (median {median:.0f} ms here: decoding and shaping, then one `insertAll` to bqemulator for an"
        " identify, two for a track, on 2 cores shared with the emulators and, here, with other jobs: see the"
        " load averages below). The time per request grows during the run"
        f" ({result.rate_text()}): bqemulator copies the whole table into a snapshot after every"
        " insertAll, so each write costs more as the tables grow (how much of the slowdown is that and how"
        " much the other jobs was not separated). Publishing is not the limit"
        f" ({result.calls:,} messages confirmed in {result.publish_seconds:.1f} s). Real Pub/Sub push ramps"
        " up to many outstanding messages per subscription, Cloud Functions scales out, and BigQuery's"
        " streaming does not slow with table size, so this is a floor for one local instance, not a"
        " production throughput; `infra/terraform/README.md` sizes production."
    )
    return textwrap.wrap(text, width=100, break_on_hyphens=False)


def summary_lines(result: Result) -> Iterator[str]:
    totals = result.report.get("totals", {})
    rejected: Counter[str] = Counter()
    for space in result.report.get("spaces", []):
        rejected.update(space["rejected"])
    yield f"calls published      {result.calls} ({result.malformed} malformed) in {result.publish_seconds:.1f} s"
    yield f"seconds              {result.seconds:.1f} (first publish to the last row or rejection; {result.quiet})"
    yield f"calls/s              {result.calls_per_second:.0f} ({result.rate_text()})"
    yield f"missing              {totals.get('missing', '?')}"
    yield f"duplicate rows       {totals.get('duplicate_rows', '?')}"
    yield "rejected by class    " + (", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none")
    yield f"reconcile took       {result.reconcile_seconds:.1f} s"
    yield f"ingest latency       {latency_text(result)}"
    yield "verdict              " + ("PASS: nothing missing or unexplained" if not result.problems else "FAIL")
    for problem in result.problems:
        yield f"  problem: {problem}"


def _ports(c: StackConfig) -> str:
    return f"{c.pubsub_port}, {c.bigquery_port}, {c.bigquery_grpc_port}, {c.ingest_port} and {c.sync_port}"


def write_doc(path: Path, result: Result, env: dict[str, str], when: datetime, argv: list[str]) -> None:
    flags = " ".join(argv)
    lines = [
        "# Load test: the latest result",
        "",
        "Written by `python -m infra.local.load` at the end of each run (`make load`); do not edit by hand.",
        "",
        "```",
        f"make load            # or: .venv/bin/python -m infra.local.load {flags}".rstrip(),
        "```",
        "",
        *textwrap.wrap(
            f"Run {when:%Y-%m-%d %H:%M} UTC. It starts its own stack (Google's Pub/Sub emulator, bqemulator,"
            " the ingest function under functions-framework from `build/function`) on ports"
            f" {_ports(LOAD_CONFIG)}, publishes single-call messages round-robin over four spaces (the `space`"
            " attribute), alternately identify and track calls shaped like Personas' plus"
            f" {100 * result.malformed / max(result.calls, 1):g}% malformed (half not JSON, half schema"
            " violations), lets the push subscription deliver them, waits until rows plus rejections stop"
            " growing, then runs `python -m infra.ops.reconcile --ids-file` on the ids file it wrote and checks"
            " its answer per space and error class against what it published.",
            width=100,
            break_on_hyphens=False,
        ),
        "",
        *textwrap.wrap(
            "bqemulator runs with `BQEMU_TIME_TRAVEL_RETENTION_DAYS=0`: it copies a table into a time-travel"
            " snapshot after every write and keeps the copies 7 days by default, which takes gigabytes of"
            " memory within minutes of streaming (measured here with the default: 5.8 GB after 7,000"
            " messages, about 1 MB per insertAll). With 0 days its garbage collector drops them every minute.",
            width=100,
            break_on_hyphens=False,
        ),
        "",
        "| figure | value |",
        "|---|---|",
    ]
    totals = result.report.get("totals", {})
    rejected: Counter[str] = Counter()
    for space in result.report.get("spaces", []):
        rejected.update(space["rejected"])
    lines += [
        f"| calls (single-call messages) | {result.calls:,} ({result.malformed} malformed) |",
        f"| seconds (first publish to the last row or rejection) | {result.seconds:.1f} |",
        f"| calls/s | {result.calls_per_second:.0f} ({result.rate_text()}) |",
        f"| missing | {totals.get('missing', '?')} |",
        f"| duplicate rows (the `_view`s remove them) | {totals.get('duplicate_rows', '?')} |",
        "| rejected by class | "
        + (", ".join(f"{k} {v}" for k, v in sorted(rejected.items())) or "none")
        + (" (all published as malformed) |" if not result.problems else " |"),
        f"| publishing {result.calls:,} messages took | {result.publish_seconds:.1f} s |",
        f"| reconcile took | {result.reconcile_seconds:.1f} s |",
        f"| ingest function per push request (its log) | {latency_text(result)} |",
        f"| verdict | {'pass: nothing missing or unexplained' if not result.problems else 'FAIL'} |",
        "",
        "reconcile's own output:",
        "",
        "```",
        result.table,
        "```",
        "",
    ]
    if result.problems:
        lines += ["Problems:", "", *[f"- {p}" for p in result.problems], ""]
    lines += [
        *limit_paragraph(result),
        "",
        "Machine and versions:",
        "",
        "| what | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in env.items()],
        f"| load average when the pipeline went quiet | {result.load_after} |",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


# --- main -------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, config: StackConfig = LOAD_CONFIG) -> Result:
    run_id = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    items = messages(args.calls, args.malformed_percent, run_id)
    expected = expected_by_space(items)
    result = Result(calls=len(items), malformed=sum(1 for i in items if i.expect != "row"))
    WORK.mkdir(parents=True, exist_ok=True)
    ids_path = WORK / "published.jsonl"
    shutil.rmtree(Path(config.state_dir) / "logs", ignore_errors=True)  # ours alone: logs of this run only
    with running(config):
        from infra.ops.common import Warehouse

        reader = Warehouse(config.bigquery_client(), config.project, "personas__ops")
        print(f"stack up on {config.pubsub_host} / {config.bigquery_url}; publishing {len(items)} messages")
        started = time.monotonic()
        result.publish_seconds = publish(items, config, ids_path)
        print(f"published in {result.publish_seconds:.1f} s; ids in {ids_path}; waiting for the pipeline")
        result.seconds, result.quiet, _count = wait_until_quiet(
            reader,
            len(items),
            started,
            quiet=args.quiet_seconds,
            stall=args.stall_seconds,
            timeout=args.timeout,
            samples=result.samples,
        )
        result.load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"pipeline quiet ({result.quiet}); reconciling")
        result.report, result.table, result.reconcile_seconds = reconcile(config, ids_path)
    result.latency_ms = push_latencies(Path(config.state_dir) / "logs" / "ingest.log")
    result.problems = check(result.report, expected)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000, help="messages to publish (default %(default)s)")
    parser.add_argument("--malformed-percent", type=float, default=1.0, help="default %(default)s")
    parser.add_argument("--quiet-seconds", type=float, default=10.0, help="no growth this long: done")
    parser.add_argument("--stall-seconds", type=float, default=90.0, help="no growth this long short of all: stuck")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up waiting after this many seconds")
    parser.add_argument("--doc", type=Path, default=DOC, help="where to write the result (default docs/load.md)")
    parser.add_argument("--no-doc", action="store_true", help="print the result only")
    args = parser.parse_args(argv)
    if args.calls < 1 or not 0 <= args.malformed_percent <= 50:
        parser.error("--calls must be positive and --malformed-percent within 0-50")
    # SIGTERM (a CI timeout, a `kill`) unwinds like Ctrl-C, so the stack's processes are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = environment()
    when = datetime.now(UTC)
    print(f"load test, {when:%Y-%m-%d %H:%M} UTC, {env['machine']}, load average {env['load average at start']}")
    try:
        result = run(args)
    except (SystemExit, RuntimeError, TimeoutError) as exc:
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        print(f"load: {exc}", file=sys.stderr)
        return 2 if not isinstance(exc, SystemExit) or exc.code != 143 else 143
    print()
    print(result.table)
    print()
    for line in summary_lines(result):
        print(line)
    if not args.no_doc:
        given = list(argv if argv is not None else sys.argv[1:])
        flags = [a for i, a in enumerate(given) if not a.startswith("--doc") and (i == 0 or given[i - 1] != "--doc")]
        write_doc(args.doc, result, env, when, flags)
        print(f"result written to {args.doc.relative_to(ROOT) if args.doc.is_relative_to(ROOT) else args.doc}")
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
