"""The project's own fault tests (issue 9 §4), on the local stack: `make faults`, not part of `make test`.

Each test starts its own stack on its own ports (slot N: 28050-28089 + 100N, plus PERSONAS_TEST_PORT_OFFSET:
below Linux's ephemeral range 32768-60999, where a client socket may hold a port a server then cannot bind;
scheduler off), injects one fault while calls flow, and ends with the operator's proof: `python -m
infra.ops.reconcile --ids-file` reports nothing missing, and `users` equals a full rebuild (a
`{"full": true}` sync changes nothing in it). BigQuery "down" is a proxy between the functions and
bqemulator (infra/local/faults.py): bqemulator keeps its data in memory, so it cannot be killed.
Processes are killed by process group (SIGKILL) and started again with the command they were started
with (`Stack.respawn`).
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.cloud import bigquery, pubsub_v1

from infra import publish
from infra.local.faults import FaultProxy
from infra.local.stack import ROOT, Stack, StackConfig, _group_alive, _port_open, _reap, running

pytestmark = pytest.mark.faults
P = "personas-local"
SPACE = "faults"
BASE_TIME = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def _say(text: str) -> None:
    """Results worth reading in the run's output (`make faults` runs pytest with -s)."""
    print(f"\n[faults] {text}", flush=True)


# --- one stack per test -------------------------------------------------------------------------------------


@dataclass
class Harness:
    stack: Stack
    bq: bigquery.Client
    publisher: pubsub_v1.PublisherClient
    ids_file: Path
    proxy: FaultProxy | None = None
    space: str = SPACE
    sync_statuses: list[int] = field(default_factory=list)
    # Before anything is published: the ids file's published_after, from which reconcile reads the tables.
    created: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def topic(self) -> str:
        return self.publisher.topic_path(self.stack.config.project, self.stack.config.topic)

    @property
    def logs(self) -> Path:
        return self.stack.state_dir / "logs"

    def table(self, name: str) -> str:
        return f"`{P}.personas_{self.space}.{name}`"


@contextmanager
def fault_stack(slot: int, tmp_path: Path, *, proxy: bool = False, **function_env: str) -> Iterator[Harness]:
    """A stack of its own, slot N on the hundred 28000+100N (StackConfig.spare); with `proxy`, both functions
    reach bqemulator only through a FaultProxy on base+70 (started first, so they never see it missing)."""
    # The overlap must exceed the ingest deadline (README, configuration): a row is stamped loaded_at before
    # its insert, which can land up to the deadline later. With 0, syncs every second during these streams
    # leave `users` short of rows a full rebuild sees (measured: 1-2 users of 30 differ).
    env = {"INGEST_DEADLINE_SECONDS": "4", "SYNC_OVERLAP_SECONDS": "40", **function_env}
    config = StackConfig.spare(
        28_000 + 100 * slot,
        "faults",
        topic="personas-calls-faults",
        subscription="personas-calls-faults-ingest",
        state_dir=str(tmp_path / "stack"),
        function_env=env,
    )
    fault_proxy = FaultProxy(config.bigquery_port + 20, config.bigquery_port) if proxy else None
    if fault_proxy is not None:
        config = replace(config, function_env={**env, "BIGQUERY_EMULATOR_HOST": fault_proxy.url})
        fault_proxy.start()
    try:
        with running(config) as stack:
            bq = config.bigquery_client()  # direct, never the proxy
            publisher = config.publisher(
                batch_settings=publish.BATCH_SETTINGS, publisher_options=publish.PUBLISHER_OPTIONS
            )
            try:
                yield Harness(stack, bq, publisher, tmp_path / "published.jsonl", fault_proxy)
            except BaseException:
                for log in sorted((stack.state_dir / "logs").glob("*.log")):
                    tail = log.read_text(errors="replace").splitlines()[-15:]
                    print(f"\n== {log.name} (last lines)\n" + "\n".join(tail))
                raise
            finally:
                publisher.stop()
    finally:
        if fault_proxy is not None:
            fault_proxy.stop()


# --- calls, publishing, pushing -------------------------------------------------------------------------------


def make_calls(tag: str, n: int, *, users: int, seed: int, tracks: bool = True) -> list[dict[str, Any]]:
    """Identify calls (and every fifth a track) for `users` users, timestamps out of order within two
    minutes, so that some of a user's calls share a timestamp (the sync's tie path)."""
    rng = random.Random(seed)
    calls: list[dict[str, Any]] = []
    for i in range(n):
        user = f"u{rng.randrange(users)}"
        timestamp = (BASE_TIME + timedelta(seconds=rng.randrange(120))).isoformat().replace("+00:00", "Z")
        message_id = f"{tag}-{i}"
        if tracks and i % 5 == 4:
            audience = f"aud_{rng.randrange(4)}"
            calls.append(
                {
                    "type": "track",
                    "userId": user,
                    "messageId": message_id,
                    "timestamp": timestamp,
                    "event": "Audience Entered",
                    "properties": {"audience_key": audience, audience: True},
                }
            )
            continue
        traits: dict[str, Any] = {"plan": rng.choice(["free", "pro", "team"]), "score": rng.randrange(1000)}
        traits[f"aud_{rng.randrange(4)}"] = rng.random() < 0.5
        calls.append(
            {"type": "identify", "userId": user, "messageId": message_id, "timestamp": timestamp, "traits": traits}
        )
    return calls


def publish_paced(h: Harness, calls: list[dict[str, Any]], per_second: float) -> float:
    """Publish one call per message at a steady rate, append each confirmed message to the ids file (as
    `infra.publish --ids-file` does); the seconds it took."""
    started = time.monotonic()
    futures = []
    for i, call in enumerate(calls):
        delay = started + i / per_second - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        futures.append((h.publisher.publish(h.topic, json.dumps(call).encode(), space=h.space), [call["messageId"]]))
    _record_ids(h, futures)
    return time.monotonic() - started


def publish_batches(h: Harness, calls: list[dict[str, Any]], size: int) -> None:
    """`{"batch": [...]}` envelopes of `size` calls: many rows fast."""
    futures = []
    for start in range(0, len(calls), size):
        part = calls[start : start + size]
        data = json.dumps({"batch": part}).encode()
        futures.append((h.publisher.publish(h.topic, data, space=h.space), [c["messageId"] for c in part]))
    _record_ids(h, futures)


def _record_ids(h: Harness, futures: list[tuple[Any, list[str]]]) -> None:
    with h.ids_file.open("a", encoding="utf-8") as out:
        for future, call_ids in futures:
            out.write(publish.ids_line(str(future.result(timeout=60)), call_ids, h.space, h.created))


def push_body(message_id: str, call: dict[str, Any], space: str) -> bytes:
    """What Pub/Sub push POSTs to the ingest function (see tests/fixtures/push)."""
    return json.dumps(
        {
            "message": {
                "data": base64.b64encode(json.dumps(call).encode()).decode(),
                "messageId": message_id,
                "publishTime": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "attributes": {"space": space},
            },
            "subscription": f"projects/{P}/subscriptions/faults-direct",
        }
    ).encode()


def post(url: str, body: bytes, timeout: float = 120) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# --- checks ------------------------------------------------------------------------------------------------


def query(h: Harness, sql: str) -> list[dict[str, Any]]:
    return [dict(r) for r in h.bq.query(sql).result()]


def landed_ids(h: Harness) -> int:
    """Distinct call ids in the raw tables (0 while they do not exist)."""
    sql = f"SELECT COUNT(DISTINCT id) AS n FROM (SELECT id FROM {h.table('identifies')}"
    try:
        tracks = {t.table_id for t in h.bq.list_tables(f"{P}.personas_{h.space}")}
        if "tracks" in tracks:
            sql += f" UNION ALL SELECT id FROM {h.table('tracks')}"
        return int(query(h, sql + ")")[0]["n"])
    except Exception:  # the dataset or table is not there yet
        return 0


def wait_landed(h: Harness, expected: int, timeout: float) -> float:
    """Poll until `expected` distinct calls are rows (the push path retries on its own schedule); the
    seconds it took. Returns at the timeout too: reconcile then says what is missing."""
    started = time.monotonic()
    while time.monotonic() - started < timeout and landed_ids(h) < expected:
        time.sleep(1)
    return time.monotonic() - started


def reconcile(h: Harness) -> dict[str, Any]:
    """`python -m infra.ops.reconcile --ids-file F --json`, as an operator runs it; asserts exit 0."""
    env = {**os.environ, **h.stack.config.exports()}
    done = subprocess.run(
        [sys.executable, "-m", "infra.ops.reconcile", "--ids-file", str(h.ids_file), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    report: dict[str, Any] = json.loads(done.stdout) if done.stdout.strip() else {}
    _say(f"reconcile exit {done.returncode}: {report.get('totals')}")
    for space in report.get("spaces", []):
        for missing in space["missing_ids"]:  # what the ingest function logged about it, if anything
            needle = f'"pubsub_message_id":"{missing["pubsub_id"]}"'
            log = (h.logs / "ingest.log").read_text(errors="replace").splitlines()
            _say(f"missing {missing}: " + " | ".join(line[:300] for line in log if needle in line))
    assert done.returncode == 0, f"reconcile reports missing calls: {done.stdout[-3000:]} {done.stderr[-2000:]}"
    assert report["totals"]["missing"] == 0
    return report


def sync(h: Harness, *, full: bool = False, timeout: float = 300) -> tuple[int, dict[str, Any]]:
    status, body = post(h.stack.config.sync_url, json.dumps({"full": full, "spaces": [h.space]}).encode(), timeout)
    return status, json.loads(body) if body.strip().startswith(b"{") else {}


def users(h: Harness) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in query(h, f"SELECT * FROM {h.table('users')}")}


def assert_every_call_landed_once(h: Harness, calls: int, users: int) -> None:
    """How an operator checks a fault is over: reconcile finds a row for every call, a sync succeeds, and
    `users` equals a full rebuild."""
    report = reconcile(h)
    assert report["totals"]["calls"] == calls and report["totals"]["rows"] == calls
    status, summary = sync(h)
    assert status == 200, summary
    assert_users_equal_full_rebuild(h, users)


def assert_users_equal_full_rebuild(h: Harness, expected_users: int) -> None:
    """`users` as the incremental runs left it must be what a full rebuild makes of the same history."""
    before = users(h)
    status, summary = sync(h, full=True)
    assert status == 200, summary
    after = users(h)
    differ = sorted(u for u in before.keys() | after.keys() if before.get(u) != after.get(u))
    _say(f"users: {len(before)} rows, {len(differ)} differ from a full rebuild")
    assert not differ, (
        f"{len(differ)} users differ from a full rebuild, e.g. {[(before.get(u), after.get(u)) for u in differ[:3]]}"
    )
    assert len(after) == expected_users


def count_in_log(h: Harness, name: str, needle: str) -> int:
    path = h.logs / f"{name}.log"
    return path.read_text(errors="replace").count(needle) if path.exists() else 0


@contextmanager
def syncing_every(h: Harness, seconds: float) -> Iterator[list[int]]:
    """Incremental syncs back to back (one every `seconds` at most) while the body runs, as the scheduler
    would: the HTTP statuses they answered (0: no answer)."""
    statuses: list[int] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            try:
                statuses.append(sync(h, timeout=120)[0])
            except OSError:
                statuses.append(0)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(timeout=180)


def kill_group(stack: Stack, name: str) -> None:
    """SIGKILL a process of the stack and everything in its group; return once the group is gone."""
    pid = stack.pids[name]
    os.killpg(pid, signal.SIGKILL)
    end = time.monotonic() + 10
    while _group_alive(pid) and time.monotonic() < end:
        _reap(pid)  # the leader is our child: a zombie until reaped, and its group with it
        time.sleep(0.05)
    assert not _group_alive(pid), f"{name} survived SIGKILL"


def respawn(stack: Stack, name: str, port: int) -> float:
    started = time.monotonic()
    stack.respawn(name)
    while not _port_open(port):
        assert time.monotonic() - started < 30, f"{name} did not come back; see {stack.state_dir}/logs/{name}.log"
        time.sleep(0.1)
    return time.monotonic() - started


def identify_ids_and_users(calls: list[dict[str, Any]]) -> tuple[int, int]:
    ids = {c["messageId"] for c in calls}
    return len(ids), len({c["userId"] for c in calls if c["type"] == "identify"})


# --- the faults ------------------------------------------------------------------------------------------------


def test_bigquery_unavailable_for_20_seconds_mid_stream(tmp_path: Path) -> None:
    """300 single-call messages over ~30 s; BigQuery unreachable from the 6th to the 26th second. The
    function answers 500 within INGEST_DEADLINE_SECONDS, Pub/Sub redelivers, nothing is lost."""
    with fault_stack(0, tmp_path, proxy=True) as h:
        assert h.proxy is not None
        calls = make_calls("bq", 300, users=30, seed=1)
        n_ids, n_users = identify_ids_and_users(calls)

        acked: list[int] = []

        def outage() -> None:
            time.sleep(6)
            with h.proxy.outage():  # type: ignore[union-attr]
                time.sleep(1)  # requests already past BigQuery may still be acked
                acked.append(count_in_log(h, "ingest", '"push acked"'))
                time.sleep(19)
                acked.append(count_in_log(h, "ingest", '"push acked"'))

        fault = threading.Thread(target=outage)
        with syncing_every(h, 1) as statuses:
            fault.start()
            published_in = publish_paced(h, calls, per_second=10)
            fault.join()
        landed_before = landed_ids(h)
        drained = wait_landed(h, n_ids, timeout=150)
        retries = count_in_log(h, "ingest", '"outcome":"retry"')
        _say(
            f"bq outage: published {len(calls)} in {published_in:.0f}s, {landed_before} landed when it ended, "
            f"all {n_ids} {drained:.0f}s later; ingest answered 500 {retries} times; proxy {h.proxy.stats}; "
            f"syncs during the stream answered {statuses}"
        )
        assert h.proxy.stats.refused + h.proxy.stats.cut > 0 and retries > 0, "the outage did not bite"
        assert acked[0] == acked[1], f"{acked[1] - acked[0]} messages were written while BigQuery was unreachable"
        assert_every_call_landed_once(h, len(calls), n_users)


def test_ingest_killed_mid_stream_and_started_again(tmp_path: Path) -> None:
    """300 single-call messages at 15/s; the ingest function's process group SIGKILLed after 7 s (requests
    in flight die with it), down for 3 s, then started again with the same command."""
    with fault_stack(1, tmp_path) as h:
        calls = make_calls("kill", 300, users=30, seed=2)
        n_ids, n_users = identify_ids_and_users(calls)
        timings: dict[str, float] = {}

        def kill() -> None:
            time.sleep(7)
            timings["landed_at_kill"] = landed_ids(h)
            kill_group(h.stack, "ingest")
            time.sleep(3)
            timings["restart_s"] = respawn(h.stack, "ingest", h.stack.config.ingest_port)

        fault = threading.Thread(target=kill)
        with syncing_every(h, 1) as statuses:
            fault.start()
            published_in = publish_paced(h, calls, per_second=15)
            fault.join()
        drained = wait_landed(h, n_ids, timeout=150)
        _say(
            f"ingest killed: published {len(calls)} in {published_in:.0f}s, {timings.get('landed_at_kill')} landed "
            f"at the kill, back in {timings.get('restart_s', 0):.1f}s, all {n_ids} landed {drained:.0f}s after "
            f"publishing; syncs answered {statuses}"
        )
        assert "restart_s" in timings, "the ingest function was not killed and started again"
        assert_every_call_landed_once(h, len(calls), n_users)


def test_every_message_published_twice(tmp_path: Path) -> None:
    """Each call sent in two Pub/Sub messages (the source resent it): two message ids, one messageId.
    Reconcile accounts for both and counts the duplicate rows; users counts each call once."""
    with fault_stack(2, tmp_path) as h:
        calls = make_calls("twice", 200, users=25, seed=3)
        n_ids, n_users = identify_ids_and_users(calls)
        again = calls[:]
        random.Random(4).shuffle(again)
        with syncing_every(h, 1) as statuses:
            publish_paced(h, calls + again, per_second=40)
            drained = wait_landed(h, n_ids, timeout=120)

            def raw_rows() -> int:
                union = f"SELECT id FROM {h.table('identifies')} UNION ALL SELECT id FROM {h.table('tracks')}"
                return int(query(h, f"SELECT COUNT(*) AS n FROM ({union})")[0]["n"])

            # Every copy is a row of its own (two Pub/Sub messages, two insert ids): wait for the second copies.
            end = time.monotonic() + 120
            while raw_rows() < 2 * len(calls) and time.monotonic() < end:
                time.sleep(1)
        raw = raw_rows()
        _say(f"published twice: {len(calls)} calls in {2 * len(calls)} messages, {raw} raw rows; syncs {statuses}")
        report = reconcile(h)
        totals = report["totals"]
        assert totals["calls"] == 2 * len(calls) and totals["rows"] == 2 * len(calls)
        assert totals["duplicate_rows"] == raw - n_ids >= len(calls), totals
        assert drained < 120
        status, summary = sync(h)
        assert status == 200, summary
        assert_users_equal_full_rebuild(h, n_users)


def test_schema_changes_racing_with_concurrent_writes(tmp_path: Path) -> None:
    """160 messages pushed over HTTP from 8 threads, each bringing two trait columns no other message has
    (and one all share): concurrent schema updates of one table. A 500 is retried as Pub/Sub would.
    Every value must be in its own column."""
    with fault_stack(3, tmp_path) as h:
        n = 160
        calls = [
            {
                "type": "identify",
                "userId": f"u{i % 20}",
                "messageId": f"race-{i}",
                "timestamp": (BASE_TIME + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
                "traits": {f"c{i}_n": i, f"c{i}_s": f"v{i}", "shared": i},
            }
            for i in range(n)
        ]
        url = h.stack.config.ingest_url + f"/projects/{P}/topics/{h.stack.config.topic}"
        retried: list[int] = []

        def deliver(i: int) -> int:
            body = push_body(f"race-msg-{i}", calls[i], h.space)
            for attempt in range(30):
                status, _ = post(url, body)
                if status == 204:
                    return attempt
                retried.append(status)
                time.sleep(0.5)
            raise AssertionError(f"message {i} never acked")

        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            attempts = list(pool.map(deliver, range(n)))
        elapsed = time.monotonic() - started
        h.ids_file.write_text(
            "".join(
                publish.ids_line(f"race-msg-{i}", [c["messageId"]], h.space, h.created) for i, c in enumerate(calls)
            )
        )
        _say(
            f"schema race: {n} messages, {2 * n} new columns in {elapsed:.0f}s, {len(retried)} retried answers "
            f"{sorted(set(retried))}, at most {max(attempts) + 1} attempts for one message"
        )
        report = reconcile(h)
        assert report["totals"]["rows"] == n

        rows = query(h, f"SELECT * FROM {h.table('identifies_view')}")
        assert len(rows) == n
        lost = []
        for row in rows:
            i = int(row["id"].removeprefix("race-"))
            got = {
                k: v for k, v in row.items() if k.startswith("c") and k[1:].split("_")[0].isdigit() and v is not None
            }
            if got != {f"c{i}_n": i, f"c{i}_s": f"v{i}"} or row["shared"] != i:
                lost.append((row["id"], got, row["shared"]))
        assert not lost, f"{len(lost)} rows lost or misplaced values, e.g. {lost[:3]}"
        discards = (
            query(h, f"SELECT COUNT(*) AS n FROM {h.table('discards')}")
            if "discards" in {t.table_id for t in h.bq.list_tables(f"{P}.personas_{h.space}")}
            else [{"n": 0}]
        )
        assert discards[0]["n"] == 0

        status, summary = sync(h)
        assert status == 200, summary
        assert_users_equal_full_rebuild(h, 20)
        state = users(h)
        assert all(state[f"u{i % 20}"][f"c{i}_n"] == i for i in range(n))


@pytest.mark.parametrize(
    ("merge", "full"), [(1, False), (2, True)], ids=["killed-in-a-fold", "killed-in-a-full-rebuilds-second-statement"]
)
def test_sync_killed_mid_run_and_started_again(tmp_path: Path, merge: int, full: bool) -> None:
    """Thousands of users synced once; then new calls for all of them, half tied with the stored value's
    timestamp (their order then comes from the messageIds' fingerprints). The sync's process group is
    SIGKILLed right after the `merge`-th MERGE of an incremental run, or of a full rebuild (three statements,
    one per chunk of partitions: the kill leaves some chunks rebuilt and the others as they were), reached
    BigQuery; started again, and run again (incremental): `users` must equal a full rebuild."""
    with fault_stack(4, tmp_path, proxy=True) as h:
        assert h.proxy is not None
        n_users = 3000

        def wave(tag: str, later: Callable[[int], bool]) -> list[dict[str, Any]]:
            rng = random.Random(tag)
            out = []
            for u in range(n_users):
                ts = BASE_TIME + timedelta(minutes=u % 50 + (60 if later(u) else 0))
                traits: dict[str, Any] = {"plan": rng.choice(["free", "pro", "team"]), "score": rng.randrange(10**6)}
                traits[f"aud_{u % 7}"] = rng.random() < 0.5
                out.append(
                    {
                        "type": "identify",
                        "userId": f"user-{u}",
                        "messageId": f"{tag}-{u}",
                        "timestamp": ts.isoformat().replace("+00:00", "Z"),
                        "traits": traits,
                    }
                )
            return out

        publish_batches(h, wave("w1", lambda u: False), 500)
        wait_landed(h, n_users, timeout=120)
        started = time.monotonic()
        status, summary = sync(h)
        first_sync = time.monotonic() - started
        assert status == 200, summary

        second = wave("w2", lambda u: u % 2 == 1)  # even users: a new call with the stored call's timestamp
        publish_batches(h, second, 500)
        wait_landed(h, 2 * n_users, timeout=120)

        merged = h.proxy.watch(b"MERGE", merge)
        answer: dict[str, Any] = {}

        def run() -> None:
            try:
                answer["status"] = sync(h, full=full)[0]
            except OSError as error:
                answer["error"] = repr(error)

        started = time.monotonic()
        runner = threading.Thread(target=run)
        runner.start()
        assert merged.wait(120), "the sync never sent its MERGE"
        time.sleep(0.3)  # the statement is running in BigQuery, the function waits for it
        killed_after = time.monotonic() - started
        kill_group(h.stack, "sync")
        runner.join(timeout=60)
        assert "status" not in answer, f"the sync finished before it was killed: {answer}"
        restart = respawn(h.stack, "sync", h.stack.config.sync_port)
        recorded = f"SELECT COUNT(*) AS n FROM `{P}.personas__ops.sync_history` WHERE space = '{h.space}'"
        history = query(h, recorded + " AND table_name = 'users'")[0]["n"]
        assert history == 1, "the killed run must not have recorded itself"

        started = time.monotonic()
        status, summary = sync(h)
        again = time.monotonic() - started
        assert status == 200, summary
        result = summary["spaces"][0]["tables"]["users"]
        _say(
            f"sync killed after MERGE #{merge} of a {'full' if full else 'incremental'} run: first sync "
            f"{first_sync:.1f}s, killed {killed_after:.1f}s into "
            f"the second, back in {restart:.1f}s, the run after it {again:.1f}s: {result['status']}, "
            f"{result['rows_updated']} updated, {result['statements']} statements, "
            f"{result['source_rows_read']} rows read"
        )
        reconcile(h)
        assert_users_equal_full_rebuild(h, n_users)
