"""The ingest function as the local stack runs it, against a bare function, side by side in one run
(sections 1, 2, 3 and 5 of docs/performance.md; `make bench` runs it).

One stack of its own (`StackConfig.spare(28000, "bench")`: Pub/Sub emulator, bqemulator through
infra/local/bqemulator_server.py, the staged function under functions-framework with THREADS=80 as in
production) plus the bare function (tests/bench/bare_function: parse, decode, parse, 204) under
functions-framework the same way on port 28090 (ports plus PERSONAS_TEST_PORT_OFFSET).

1. Under concurrency: Pub/Sub push bodies of single-call messages POSTed over keep-alive HTTP
   connections by `concurrency` threads, to ours and to the bare function by the same generator, at
   1, 8 and 32 in flight, alternating which goes first; calls/s = messages / wall time. Afterwards
   every call ours acked (204) is looked up in BigQuery by its id, with infra.ops.reconcile's query:
   one missing fails the benchmark.
2. Through the Pub/Sub emulator's push: N messages published to a topic whose push subscription
   targets ours, and to another targeting the bare function; the time from the first publish until
   the last one landed (ours: rows counted in BigQuery, polled every 0.1 s; bare: its ack counter,
   polled every 0.01 s).
3. Write requests: bqemulator_server counts insertAll POSTs and AppendRows requests; the deltas
   around ours' runs of section 1, per 1,000 messages.
5. Cold start: a fresh python process that imports the staged function with the stack's env,
   builds functions-framework's app (create_app) and answers one push request through Flask's test
   client (a real first call: it reads the table and writes the row to bqemulator); against a
   process importing functions_framework and google.cloud.bigquery and doing the same with the bare
   function. Time from spawn to the answer, from the parent's clock.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from infra.local.stack import ROOT, STAGE, VENV_BIN, Stack, StackConfig, _port_open, running
from tests.bench.bench_ingest import personas_identify

THREADS = "80"  # production's gen2 concurrency (infra/terraform)
CONFIG = StackConfig.spare(28_000, "bench", function_env={"THREADS": THREADS})
BARE_PORT = CONFIG.ingest_port + 10  # base+90: left free by the stack
BARE_DIR = Path(__file__).resolve().parent / "bare_function"
BARE_TOPIC, BARE_SUBSCRIPTION = "bench-bare", "bench-bare-push"
# Section 2 polls: the bare function's counter is one cheap GET; ours is a BigQuery query (a few REST
# calls to bqemulator, which shares the CPUs with ours), so it is polled less often.
OURS_POLL, BARE_POLL = 0.1, 0.01


# --- messages ---------------------------------------------------------------------------------------------


def call(call_id: str) -> bytes:
    doc = personas_identify(0) | {"messageId": call_id, "userId": f"u-{call_id}"}
    return json.dumps(doc, separators=(",", ":")).encode()


def push_body(call_id: str, pubsub_id: str, space: str | None = None) -> bytes:
    """What Pub/Sub's push POSTs (tests/fixtures/push/emulator_identify.json), one call in `data`; with
    `space`, the `space` attribute routes it there."""
    published = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    message = {
        "data": base64.b64encode(call(call_id)).decode(),
        "messageId": pubsub_id,
        "message_id": pubsub_id,
        "publishTime": published,
        "publish_time": published,
    }
    if space is not None:
        message["attributes"] = {"space": space}
    return json.dumps({"message": message, "subscription": "projects/personas-local/subscriptions/bench"}).encode()


class Ids:
    """Unique call ids for the whole run (a call id is the row's `id`)."""

    def __init__(self) -> None:
        self.tag = time.strftime("%H%M%S")
        self.counter = itertools.count()
        # Before any of the run's calls was published: BigQuery lookups read the partitions from then on.
        self.since = datetime.now(UTC) - timedelta(minutes=5)

    def take(self, n: int, kind: str) -> list[str]:
        return [f"bench-{self.tag}-{kind}-{next(self.counter)}" for _ in range(n)]


# --- the load generator -----------------------------------------------------------------------------------


@dataclass
class Drive:
    seconds: float
    statuses: list[int]
    call_ids: list[str]
    latencies: list[float] = field(default_factory=list)  # seconds from sending each request to its answer

    @property
    def median_latency(self) -> float:
        return statistics.median(self.latencies)

    @property
    def rate(self) -> float:
        return len(self.statuses) / self.seconds

    @property
    def acked(self) -> list[str]:
        return [c for c, s in zip(self.call_ids, self.statuses, strict=True) if s == 204]

    @property
    def failed(self) -> int:
        return sum(1 for s in self.statuses if s != 204)


def drive(port: int, path: str, call_ids: list[str], concurrency: int, space: str | None = None) -> Drive:
    """POST one push body per call id with `concurrency` threads, each on its own keep-alive connection;
    wall time from all threads' start to the last answer. A connection error counts as status -1."""
    bodies = [push_body(c, f"p-{c}", space) for c in call_ids]
    statuses = [0] * len(bodies)
    latencies = [0.0] * len(bodies)
    counter = itertools.count()
    ready = threading.Barrier(concurrency + 1)
    headers = {"Content-Type": "application/json"}

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        ready.wait()
        while (i := next(counter)) < len(bodies):
            try:
                sent = time.perf_counter()
                conn.request("POST", path, body=bodies[i], headers=headers)
                response = conn.getresponse()
                response.read()
                statuses[i] = response.status
                latencies[i] = time.perf_counter() - sent
            except (OSError, http.client.HTTPException):
                statuses[i] = -1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return Drive(time.perf_counter() - start, statuses, call_ids, latencies)


# --- the servers' counters --------------------------------------------------------------------------------


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def write_requests(c: StackConfig) -> int:
    """insertAll POSTs plus AppendRows requests bqemulator has received (infra/local/bqemulator_server.py)."""
    counts = get_json(f"{c.bigquery_url}/_personas/counters")
    return int(counts["insertAll"]) + int(counts["appendRows"])


def bare_acked() -> int:
    return int(get_json(f"http://127.0.0.1:{BARE_PORT}/"))


def start_bare(stack: Stack) -> None:
    """The bare function under functions-framework as the stack runs ours; stopped with the stack."""
    env = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(BARE_DIR), "THREADS": THREADS}
    argv = [str(VENV_BIN / "functions-framework"), "--target", "bare", "--signature-type", "http"]
    argv += ["--source", str(BARE_DIR / "main.py"), "--host", "127.0.0.1", "--port", str(BARE_PORT)]
    if _port_open(BARE_PORT):
        raise SystemExit(f"port {BARE_PORT} is already in use")
    stack._spawn("bare", argv, env=env, cwd=BARE_DIR)
    end = time.monotonic() + 60
    while not _port_open(BARE_PORT):
        if time.monotonic() > end:
            raise TimeoutError(f"the bare function did not start; see {stack.state_dir}/logs/bare.log")
        time.sleep(0.2)


# --- BigQuery: what landed --------------------------------------------------------------------------------


def reader(c: StackConfig) -> Any:
    from infra.ops.common import Warehouse
    from personas_warehouse.settings import Settings

    return Warehouse(c.bigquery_client(), c.project, Settings().ops_dataset)


def missing_calls(c: StackConfig, call_ids: list[str], since: datetime) -> tuple[int, list[dict[str, Any]]]:
    """Calls without a row, by infra.ops.reconcile's own lookup (rows by id, rejections by message), in the
    partitions from `since` on."""
    from infra.ops.reconcile import Call, reconcile_ids

    report = reconcile_ids(reader(c), [Call(f"p-{i}", 0, i, None) for i in call_ids], since=since)
    shown = [m for s in report.spaces.values() for m in s.missing_ids]
    return report.missing, shown


def landed(c: StackConfig, call_ids: list[str], since: datetime) -> int:
    from infra.ops import common, queries

    r = reader(c)
    tables = common.raw_tables(r.space_tables(), queries.RAW_TABLES)
    if not tables:
        return 0
    return len({row["id"] for row in r.run(queries.raw_id_counts(r.project, tables, call_ids, since))})


# --- sections 1 and 3 -------------------------------------------------------------------------------------


@dataclass
class Level:
    concurrency: int
    ours: list[float] = field(default_factory=list)  # calls/s per run
    bare: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # ours / bare, per run
    writes_per_1000: list[float] = field(default_factory=list)
    # CPU seconds per message of each side's processes (user + system, whole process groups), per run
    ours_function_cpu: list[float] = field(default_factory=list)
    ours_bigquery_cpu: list[float] = field(default_factory=list)
    bare_function_cpu: list[float] = field(default_factory=list)
    # The bare function holding each request for ours' median latency of the same run (?hold_ms): its CPU per
    # message is what the framework costs a handler that answers as late as ours, before any work of ours.
    ours_latency: list[float] = field(default_factory=list)  # seconds, median per run
    held_bare_cpu: list[float] = field(default_factory=list)
    failed_ours: int = 0
    failed_bare: int = 0


@dataclass
class HttpFigures:
    messages: int  # per level, per run, per function
    runs: int
    levels: list[Level]
    acked_checked: int = 0
    missing: int = 0


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (the stack starts each
    server in a group of its own: functions-framework's arbiter and worker, bqemulator)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields[2] is the process group (stat field 5)
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def measure_http(
    c: StackConfig, ids: Ids, messages: int, runs: int, levels: tuple[int, ...], pids: dict[str, int]
) -> HttpFigures:
    ours_path = c.push_endpoint.removeprefix(c.ingest_url)
    found = [Level(n) for n in levels]
    acked: list[str] = []
    warm = drive(c.ingest_port, ours_path, ids.take(20, "warm"), 1)  # creates the dataset, table, columns
    if warm.failed:
        raise RuntimeError(f"ours failed {warm.failed} of 20 warm-up calls; see {c.state_dir}/logs/ingest.log")
    drive(BARE_PORT, "/", ids.take(20, "warm"), 1)
    for run in range(runs):
        for level in found:
            n = level.concurrency
            rates = {}
            for who in ("ours", "bare") if run % 2 == 0 else ("bare", "ours"):
                if who == "ours":
                    # A space (so tables) of its own per level and run: bqemulator's insertAll slows as a
                    # table grows (7 to 11 ms per call at 10,000 rows), which would tilt later levels.
                    space = f"b{ids.tag}r{run}c{n}"
                    warm = drive(c.ingest_port, ours_path, ids.take(1, "warm"), 1, space)  # creates the tables
                    acked += warm.acked
                    before = write_requests(c)
                    cpu = group_cpu_seconds(pids["ingest"]), group_cpu_seconds(pids["bqemulator"])
                    result = drive(c.ingest_port, ours_path, ids.take(messages, f"c{n}"), n, space)
                    level.ours_function_cpu.append((group_cpu_seconds(pids["ingest"]) - cpu[0]) / messages)
                    level.ours_latency.append(result.median_latency)
                    level.ours_bigquery_cpu.append((group_cpu_seconds(pids["bqemulator"]) - cpu[1]) / messages)
                    level.writes_per_1000.append((write_requests(c) - before) * 1000 / messages)
                    level.failed_ours += result.failed
                    acked += result.acked
                else:
                    bare_cpu = group_cpu_seconds(pids["bare"])
                    result = drive(BARE_PORT, "/", ids.take(messages, "bare"), n)
                    level.bare_function_cpu.append((group_cpu_seconds(pids["bare"]) - bare_cpu) / messages)
                    level.failed_bare += result.failed
                rates[who] = result.rate
            hold_ms = round(level.ours_latency[-1] * 1000, 1)
            held_cpu = group_cpu_seconds(pids["bare"])
            held = drive(BARE_PORT, f"/?hold_ms={hold_ms}", ids.take(messages, "held"), n)
            level.held_bare_cpu.append((group_cpu_seconds(pids["bare"]) - held_cpu) / messages)
            level.failed_bare += held.failed
            level.ours.append(rates["ours"])
            level.bare.append(rates["bare"])
            level.ratios.append(rates["ours"] / rates["bare"])
            print(
                f"  run {run + 1}, {n:>2} in flight: ours {rates['ours']:7.1f} calls/s, bare {rates['bare']:7.1f}, "
                f"{level.writes_per_1000[-1]:.0f} writes per 1,000; CPU per message: ours "
                f"{level.ours_function_cpu[-1] * 1e6:.0f} us, bare {level.bare_function_cpu[-1] * 1e6:.0f} us, "
                f"bare held {hold_ms:g} ms {level.held_bare_cpu[-1] * 1e6:.0f} us",
                file=sys.stderr,
            )
    figures = HttpFigures(messages, runs, found, acked_checked=len(acked))
    figures.missing, shown = missing_calls(c, acked, ids.since)
    if figures.missing:
        raise AssertionError(f"{figures.missing} of {len(acked)} acked calls are not in BigQuery, e.g. {shown}")
    return figures


# --- section 2 --------------------------------------------------------------------------------------------


@dataclass
class PushFigures:
    messages: int
    ours_seconds: list[float] = field(default_factory=list)
    bare_seconds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)


def bare_push_subscription(c: StackConfig) -> tuple[Any, str, str]:
    publisher, subscriber = c.publisher(), c.subscriber()
    bare_topic = publisher.topic_path(c.project, BARE_TOPIC)
    publisher.create_topic(name=bare_topic)
    subscriber.create_subscription(
        request={
            "name": subscriber.subscription_path(c.project, BARE_SUBSCRIPTION),
            "topic": bare_topic,
            "push_config": {"push_endpoint": f"http://127.0.0.1:{BARE_PORT}/"},
            "ack_deadline_seconds": 60,
        }
    )
    return publisher, publisher.topic_path(c.project, c.topic), bare_topic


def wait_for(done: Any, what: str, poll: float, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            raise TimeoutError(f"{what} not done after {timeout:.0f} s")
        time.sleep(poll)


def all_landed(c: StackConfig, call_ids: list[str], since: datetime) -> bool:
    return landed(c, call_ids, since) >= len(call_ids)


def bare_acked_since(before: int, messages: int) -> bool:
    return bare_acked() - before >= messages


def measure_push(c: StackConfig, ids: Ids, messages: int, runs: int) -> PushFigures:
    publisher, ours_topic, bare_topic = bare_push_subscription(c)
    figures = PushFigures(messages)
    for run in range(runs):
        seconds = {}
        for who in ("ours", "bare") if run % 2 == 0 else ("bare", "ours"):
            call_ids = ids.take(messages, f"push-{who}")
            bare_before = bare_acked()
            start = time.perf_counter()
            futures = [publisher.publish(ours_topic if who == "ours" else bare_topic, call(i)) for i in call_ids]
            for future in futures:
                future.result(timeout=60)
            if who == "ours":
                wait_for(functools.partial(all_landed, c, call_ids, ids.since), "ours through push", poll=OURS_POLL)
            else:
                wait_for(
                    functools.partial(bare_acked_since, bare_before, messages), "bare through push", poll=BARE_POLL
                )
            seconds[who] = time.perf_counter() - start
        figures.ours_seconds.append(seconds["ours"])
        figures.bare_seconds.append(seconds["bare"])
        figures.ratios.append(seconds["ours"] / seconds["bare"])
        print(f"  push run {run + 1}: ours {seconds['ours']:.2f} s, bare {seconds['bare']:.2f} s", file=sys.stderr)
    return figures


# --- section 5 --------------------------------------------------------------------------------------------

FIRST_CALL = """
import json, sys, time
if sys.argv[1] == "bare":
    import functions_framework, google.cloud.bigquery  # the bare baseline: framework and client imported
from functions_framework import create_app
app = create_app(target=sys.argv[2], source=sys.argv[3], signature_type="http")
imported = time.time()
response = app.test_client().post("/", data=sys.stdin.buffer.read(), content_type="application/json")
answered = time.time()
validation = sorted(m for m in ("marshmallow", "yaml") if m in sys.modules)
status = response.status_code
print(json.dumps({"imported": imported, "answered": answered, "status": status, "validation": validation}))
"""


@dataclass
class ColdFigures:
    ours_import: list[float] = field(default_factory=list)
    bare_import: list[float] = field(default_factory=list)
    ours_first: list[float] = field(default_factory=list)
    bare_first: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # first call, ours / bare, per run
    ours_client_import: list[float] = field(default_factory=list)
    bare_client_import: list[float] = field(default_factory=list)
    ours_validation_import: list[float] = field(default_factory=list)  # marshmallow and PyYAML, imported alone
    ours_validation_loaded: list[str] = field(default_factory=list)  # of them, those ours' first answers imported


DEPLOY_VENVS = ROOT / ".cache" / "bench-venvs"


def deployed_python(who: str) -> str:
    """The interpreter of a venv holding exactly what a deployment of `who` installs: ours,
    functions/requirements.txt (which includes google-cloud-bigquery-storage, whose mere presence makes
    google.cloud.bigquery import more); bare, only functions-framework and google-cloud-bigquery at the
    same pins. The dev venv holds pyarrow and numpy for bqemulator, which google.cloud.bigquery then
    imports too: a cold start measured there is not a deployment's. Built once, cached by content."""
    lines = (ROOT / "functions" / "requirements.txt").read_text().splitlines()
    pins = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if who == "bare":
        pins = [pin for pin in pins if pin.split("==")[0] in ("functions-framework", "google-cloud-bigquery")]
    key = hashlib.sha256("\n".join([who, *pins, (ROOT / "requirements-lock.txt").read_text()]).encode()).hexdigest()
    venv = DEPLOY_VENVS / f"{who}-{key[:12]}"
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        install = [str(python), "-m", "pip", "install", "--quiet", *pins, "-c", str(ROOT / "requirements-lock.txt")]
        subprocess.run(install, check=True)
        (venv / ".installed").touch()
    return str(python)


def cold_start(c: StackConfig, who: str, call_id: str) -> tuple[float, float, list[str]]:
    """(seconds from spawn to the app built, to the first answer, and which of marshmallow and PyYAML the
    process had imported by then) of a fresh process, in a venv built like the deployment's (deployed_python)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PUBSUB_EMULATOR_HOST")}
    if who == "ours":  # what the stack gives the function
        env |= c.function_environment()
        argv, cwd = [who, "ingest", str(STAGE / "main.py")], STAGE
    else:
        env |= {"PYTHONPATH": str(BARE_DIR), "THREADS": THREADS}
        argv, cwd = [who, "bare", str(BARE_DIR / "main.py")], BARE_DIR
    python = deployed_python(who)
    started = time.time()
    done = subprocess.run(
        [python, "-c", FIRST_CALL, *argv],
        input=push_body(call_id, f"p-{call_id}"),
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cold start of {who} failed: {done.stderr.decode()[-2000:]}")
    answer = json.loads(done.stdout.decode().strip().splitlines()[-1])
    if answer["status"] != 204:
        raise RuntimeError(
            f"cold start of {who}: first call answered {answer['status']}: {done.stderr.decode()[-2000:]}"
        )
    return answer["imported"] - started, answer["answered"] - started, list(answer["validation"])


TIMED_IMPORT = """
import importlib, sys, time
t = time.perf_counter()
for module in sys.argv[1:]:
    importlib.import_module(module)
print(time.perf_counter() - t)
"""


def import_seconds(who: str, *modules: str) -> float:
    """Seconds to import `modules` in a fresh process of `who`'s deployment venv: where a cold start's
    import time goes (google.cloud.bigquery imports more when google-cloud-bigquery-storage is installed
    beside it: the Storage Read client)."""
    argv = [deployed_python(who), "-c", TIMED_IMPORT, *modules]
    done = subprocess.run(argv, capture_output=True, check=True, timeout=120)
    return float(done.stdout.decode().strip())


def measure_cold(c: StackConfig, ids: Ids, runs: int) -> ColdFigures:
    figures = ColdFigures()
    for who in ("ours", "bare"):  # not measured: builds the venv, writes the staged code's .pyc files
        cold_start(c, who, ids.take(1, f"cold-{who}")[0])
    for run in range(runs):
        for who in ("ours", "bare"):
            getattr(figures, f"{who}_client_import").append(import_seconds(who, "google.cloud.bigquery"))
        figures.ours_validation_import.append(import_seconds("ours", "marshmallow", "yaml"))
        first = {}
        for who in ("ours", "bare") if run % 2 == 0 else ("bare", "ours"):
            imported, answered, validation = cold_start(c, who, ids.take(1, f"cold-{who}")[0])
            if who == "ours":
                figures.ours_validation_loaded += sorted(set(validation) - set(figures.ours_validation_loaded))
            getattr(figures, f"{who}_import").append(imported)
            getattr(figures, f"{who}_first").append(answered)
            first[who] = answered
        figures.ratios.append(first["ours"] / first["bare"])
    return figures


# --- all of it --------------------------------------------------------------------------------------------


@dataclass
class StackFigures:
    http: HttpFigures
    push: PushFigures
    cold: ColdFigures


def measure_stack(*, messages: int = 500, push_messages: int = 100, runs: int = 3) -> StackFigures:
    c = CONFIG
    if not (STAGE / "main.py").exists():
        raise SystemExit(f"{STAGE} is missing: run `make stage` first")
    ids = Ids()
    with running(c) as stack:
        start_bare(stack)
        print(f"under concurrency over HTTP ({messages} messages per level and run) ...", file=sys.stderr)
        http = measure_http(c, ids, messages, runs, (1, 8, 32), stack.pids)
        print(f"through the Pub/Sub emulator's push ({push_messages} messages per run) ...", file=sys.stderr)
        push = measure_push(c, ids, push_messages, runs)
        print("cold start ...", file=sys.stderr)
        cold = measure_cold(c, ids, runs)
    return StackFigures(http, push, cold)


def median(values: list[float]) -> float:
    return statistics.median(values)


if __name__ == "__main__":
    result = measure_stack(messages=100, push_messages=30)
    print(json.dumps({"root": str(ROOT), **json.loads(json.dumps(result, default=lambda o: o.__dict__))}, indent=2))
