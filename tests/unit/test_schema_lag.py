"""A new column while calls stream in: BigQuery's APIs see it only after a while (the Write API "in order
of minutes", insertAll sooner), and until then refuse what carries it. Over fakes that lag as BigQuery
does (tests.write_fakes.FakeWriteClient: a refused append, whole, with BigQuery's error text and code;
tests.fakes.StrictFakeBigQuery: "no such field"), calls stream through ingest() while a new audience
trait appears, and:
- calls without the new column never fail, never wait and never go another way, whatever the writer;
- calls with it land once: by insertAll while the Write API does not see the column, by the Write API
  once it does (learnt from `updated_schema` or a probe); without a second writer they wait in their own
  request, within its deadline, and land once the column is visible, or are redelivered (TransientError);
- the Write API is asked with the new column at most once per PROBE_SECONDS, and only with rows that
  carry it;
- the same holds with real threads sharing writes through group commit."""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

import personas_warehouse.ingest as ingest_module
import personas_warehouse.writers.storage_write as storage_write
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.errors import TransientError
from personas_warehouse.ingest import ingest
from personas_warehouse.messages import PubSubMessage
from personas_warehouse.settings import Settings
from personas_warehouse.writers.contract import Writer
from personas_warehouse.writers.insert_all import InsertAllWriter
from personas_warehouse.writers.storage_write import PROBE_SECONDS, StorageWriteWriter
from tests.fakes import FakeClock, StrictFakeBigQuery
from tests.write_fakes import FakeWriteClient

IDENTIFIES = "personas-test.personas_default.identifies"
PUBLISHED = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SETTINGS = Settings(ingest_deadline_seconds=50, bigquery_writer="storage_write")
WRITE_API_LAG = 150.0  # "in order of minutes"
INSERT_ALL_LAG = 5.0


def message(call: dict[str, Any]) -> PubSubMessage:
    data = base64.b64encode(json.dumps(call).encode()).decode()
    return PubSubMessage(f"pubsub-{call['messageId']}", data, PUBLISHED, {}, "sub")


def identify(message_id: str, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "userId": f"u-{message_id}", "messageId": message_id, "traits": traits}


class Stack:
    """A Warehouse as app.py builds it, over lagging fakes that share one clock."""

    def __init__(
        self,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        *,
        insert_all_too: bool = True,
        write_lag: float = WRITE_API_LAG,
        insert_all_lag: float = INSERT_ALL_LAG,
    ) -> None:
        self.bq = StrictFakeBigQuery(clock=clock)  # type: ignore[arg-type]
        self.bq.insert_all_lag_seconds = insert_all_lag
        self.write = FakeWriteClient(self.bq, lag_seconds=write_lag)
        self.writer = StorageWriteWriter(self.write, self.bq.project, sleep=sleep, clock=clock)  # type: ignore[arg-type]
        writers: list[Writer] = [self.writer]
        if insert_all_too:
            writers.append(InsertAllWriter(self.bq, sleep=sleep))  # type: ignore[arg-type]
        self.warehouse = Warehouse(self.bq, writers=writers, sleep=sleep)  # type: ignore[arg-type]

    def by_write_api(self) -> dict[str, dict[str, Any]]:
        return _by_id(self.write.rows.get(IDENTIFIES, []))

    def by_insert_all(self) -> dict[str, dict[str, Any]]:
        return _by_id(self.bq.rows.get(IDENTIFIES, []))

    def added_at(self) -> float:
        return self.bq.added_at[(IDENTIFIES, "new_audience")]


def _by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        assert row["id"] not in found, f"{row['id']} written twice"
        found[row["id"]] = row
    return found


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """ingest()'s deadlines on a clock that only the writers' backoffs and the test move."""
    fake = FakeClock()
    monkeypatch.setattr(ingest_module, "Deadline", lambda seconds: Deadline(seconds, clock=fake))
    return fake


def stream(
    stack: Stack, clock: FakeClock, seconds: float, trait_from: float
) -> tuple[dict[str, float], dict[str, float]]:
    """A call without the new trait every 2 s, and `trait_from` seconds in, one with it too: {id: when} of
    each kind. A call without it must not move the clock (no backoff) or fail. Before, a first call creates
    the table and the columns of the calls without the trait, and long enough ago for any API to see them."""
    ingest(message(identify("warm", score=0)), stack.warehouse, SETTINGS)
    clock.advance(max(stack.write.lag_seconds, stack.bq.insert_all_lag_seconds))
    plain: dict[str, float] = {}
    traited: dict[str, float] = {}
    step = 0
    seconds += clock.now
    trait_from += clock.now
    while clock.now < seconds:
        before = clock.now
        ingest(message(identify(f"p{step}", score=step)), stack.warehouse, SETTINGS)
        assert clock.now == before, f"p{step} waited"
        plain[f"p{step}"] = before
        if clock.now >= trait_from:
            traited[f"t{step}"] = clock.now
            ingest(message(identify(f"t{step}", new_audience=True)), stack.warehouse, SETTINGS)
        clock.advance(2)
        step += 1
    return plain, traited


def test_a_new_trait_never_fails_the_calls_without_it_and_its_calls_go_by_insert_all_until_the_write_api_sees_it(
    clock: FakeClock,
) -> None:
    stack = Stack(clock, clock.advance)
    plain, traited = stream(stack, clock, seconds=400, trait_from=20)
    api, insert_all = stack.by_write_api(), stack.by_insert_all()
    # Calls without the trait: every one by the Write API, none by insertAll, none refused (stream() saw
    # none fail or wait).
    assert set(plain) <= set(api) and not set(plain) & set(insert_all)
    api.pop("warm", None), insert_all.pop("warm", None)  # the first call, its `score` column new then
    refusals = [refusal for refusal in stack.write.refusals if refusal[2] != ("warm",)]
    refused_ids = {row_id for _, _, ids, _ in refusals for row_id in ids}
    assert not refused_ids & set(plain)
    # Calls with it: each landed once, with its value; by insertAll while the Write API did not see the
    # column, by the Write API soon after it did.
    assert set(traited) == (set(api) | set(insert_all)) - set(plain)
    assert not set(api) & set(insert_all)
    assert all(row["new_audience"] is True for row in [*api.values(), *insert_all.values()] if row["id"] in traited)
    visible = stack.added_at() + WRITE_API_LAG
    assert all(row_id in insert_all for row_id, at in traited.items() if at < visible)
    assert all(row_id in api for row_id, at in traited.items() if at >= visible + PROBE_SECONDS)
    # The Write API was asked with the new column only in appends of rows that carry it, at most once per
    # PROBE_SECONDS, and never again once it saw the column.
    assert {(table, extra) for table, extra, _, _ in refusals} == {(IDENTIFIES, ("new_audience",))}
    assert refused_ids <= set(traited)
    times = [at for *_, at in refusals]
    assert all(b - a >= PROBE_SECONDS for a, b in itertools.pairwise(times))
    assert len(times) <= WRITE_API_LAG / PROBE_SECONDS + 1
    assert max(times) < visible
    # It learnt the column from an `updated_schema` on a connection that outlived the lag.
    assert any("new_audience" in columns for _, columns in stack.write.updated_schemas)


def test_without_a_second_writer_calls_with_the_new_column_wait_in_their_own_request(clock: FakeClock) -> None:
    """The lag is shorter than a request's deadline: each call with the trait backs off in its own request
    until the Write API sees the column; the calls without it never wait."""
    stack = Stack(clock, clock.advance, insert_all_too=False, write_lag=20)
    plain, traited = stream(stack, clock, seconds=120, trait_from=10)
    api = stack.by_write_api()
    assert set(api) == {"warm"} | set(plain) | set(traited)
    assert all(api[row_id]["new_audience"] is True for row_id in traited)
    assert stack.by_insert_all() == {}


def test_a_lag_longer_than_the_deadline_fails_only_the_calls_with_the_new_column(clock: FakeClock) -> None:
    stack = Stack(clock, clock.advance, insert_all_too=False, write_lag=10_000)
    ingest(message(identify("p0")), stack.warehouse, SETTINGS)  # the table's own columns: no lag
    with pytest.raises(TransientError, match="new_audience"):
        ingest(message(identify("t0", new_audience=True)), stack.warehouse, SETTINGS)
    assert clock.now <= SETTINGS.ingest_deadline_seconds
    ingest(message(identify("p1")), stack.warehouse, SETTINGS)
    assert set(stack.by_write_api()) == {"p0", "p1"}


def test_insert_all_alone_defers_the_rows_with_the_new_column_without_holding_back_the_others(
    clock: FakeClock,
) -> None:
    """BIGQUERY_WRITER=insert_all: rows that insertAll answers "no such field" leave the shared write and
    are retried by their own request; the rows written beside them go at once."""
    bq = StrictFakeBigQuery(clock=clock)
    bq.insert_all_lag_seconds = 30
    warehouse = Warehouse(bq, writers=[InsertAllWriter(bq, sleep=clock.advance)], sleep=clock.advance)  # type: ignore[arg-type]
    ingest(message(identify("p0")), warehouse, SETTINGS)
    batch = {"batch": [identify("p1"), identify("t1", new_audience=True), identify("p2")]}
    data = base64.b64encode(json.dumps(batch).encode()).decode()
    outcome = ingest(PubSubMessage("pubsub-b", data, PUBLISHED, {}, "sub"), warehouse, SETTINGS)
    assert outcome.rows == {"personas_default.identifies": 3}
    rows = bq.rows[IDENTIFIES]
    assert [r["id"] for r in rows] == ["p0", "p1", "p2", "t1"]  # p1 and p2 did not wait for t1
    assert 30 <= clock.now < 50


def test_calls_sharing_writes_through_group_commit_while_a_new_trait_appears(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real threads, real time: 12 requests in flight, a call without the trait every few milliseconds and,
    after a while, calls with it, while the Write API does not see the new column for 0.6 s (insertAll for
    0.1 s). Every call is answered without an error, the calls without the trait all by the Write API, and
    every call lands once."""
    monkeypatch.setattr(storage_write, "PROBE_SECONDS", 0.1)
    stack = Stack(time.monotonic, time.sleep, write_lag=0.6, insert_all_lag=0.1)
    settings = Settings(ingest_deadline_seconds=30, bigquery_writer="storage_write")
    ingest(message(identify("warm", score=0)), stack.warehouse, settings)  # the table exists before the load,
    time.sleep(0.7)  # and every API sees its `score` column
    start = time.monotonic()
    calls = []
    for n in range(240):
        calls.append((n * 0.008, identify(f"p{n}", score=n)))
        if n >= 60:
            calls.append((n * 0.008, identify(f"t{n}", new_audience=True)))
    failures: list[BaseException] = []
    lock = threading.Lock()

    def send(at: float, call: dict[str, Any]) -> None:
        time.sleep(max(0.0, start + at - time.monotonic()))
        try:
            with stack.warehouse.serving():
                ingest(message(call), stack.warehouse, settings)
        except BaseException as exc:  # collected, asserted below
            with lock:
                failures.append(exc)

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda item: send(*item), calls))
    assert failures == []
    api, insert_all = stack.by_write_api(), stack.by_insert_all()
    plain = {c["messageId"] for _, c in calls if c["messageId"].startswith("p")}
    traited = {c["messageId"] for _, c in calls if c["messageId"].startswith("t")}
    assert plain <= set(api) and not plain & set(insert_all)
    assert (set(api) | set(insert_all)) - {"warm"} == plain | traited and not set(api) & set(insert_all)
    assert insert_all, "no call went by insertAll: the lag was not exercised"
    assert stack.writer.appends < len(calls)  # writes were shared
