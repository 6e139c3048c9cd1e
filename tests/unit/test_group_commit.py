"""Group commit (group_commit.py, and Warehouse.insert through it): requests in flight share writes, each
returns only after the write carrying its rows, refusals go back to the rows' owners, a failed write
fails exactly the requests it carried, and no request's deadline can fail the others (the write runs
within the deadline of the request with the most time left; one that runs out gives up alone)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from personas_warehouse import group_commit
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.errors import GroupWriteFailed, TransientError
from personas_warehouse.group_commit import GroupCommit
from tests.fakes import FakeBigQuery

Item = tuple[str, int]  # (owner, index in the owner's request)


class Writes:
    """A write function that records every group and can hold the first write until released."""

    def __init__(
        self,
        refuse: Callable[[Item], bool] = lambda item: False,
        fail: Callable[[list[Item]], bool] = lambda items: False,
    ) -> None:
        self.groups: list[list[Item]] = []
        self.deadlines: list[group_commit.Deadline] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.release = threading.Event()
        self.release.set()
        self.started = threading.Event()
        self._refuse = refuse
        self._fail = fail
        self._lock = threading.Lock()

    def hold(self) -> None:
        self.release.clear()

    def __call__(self, key: Hashable, items: list[Item], deadline: group_commit.Deadline) -> dict[int, str]:
        with self._lock:
            self.groups.append(list(items))
            self.deadlines.append(deadline)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.started.set()
        try:
            assert self.release.wait(10), "test never released the write"
            if self._fail(items):
                raise TransientError("injected: BigQuery answered 503")
            return {i: f"refused {item}" for i, item in enumerate(items) if self._refuse(item)}
        finally:
            with self._lock:
                self.in_flight -= 1


class Forever:
    def remaining(self) -> float:
        return 60.0


GC = GroupCommit[Item, str, group_commit.Deadline]


def commit(write: Writes, *, max_items: int = 500, max_size: int = 10**9, max_wait: float = 5.0) -> GC:
    return GroupCommit(write, max_items=max_items, max_size=max_size, max_wait=max_wait)


def items_of(owner: str, count: int) -> list[Item]:
    return [(owner, i) for i in range(count)]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


def run_while_first_write_held(gc: GC, write: Writes, requests: dict[str, int]) -> dict[str, Any]:
    """Submit request 'first' alone, hold its write, submit `requests` concurrently, then release: what
    each request got back (its refusals, or the exception it raised)."""
    write.hold()
    outcomes: dict[str, Any] = {}

    def submit(owner: str, count: int) -> None:
        try:
            outcomes[owner] = gc.submit("t", items_of(owner, count), [1] * count, Forever())
        except Exception as exc:
            outcomes[owner] = exc

    with ThreadPoolExecutor(len(requests) + 1) as pool:
        pool.submit(submit, "first", 1)
        assert write.started.wait(5)
        for owner, count in requests.items():
            pool.submit(submit, owner, count)
        # every item is either waiting in the open group or in a write already started (a full group)
        wait_until(lambda: _queued(gc) + sum(map(len, write.groups)) - 1 == sum(requests.values()))
        write.release.set()
    return outcomes


def _queued(gc: GC) -> int:
    """Items waiting in the open group of table 't' (white box: only to sequence the test)."""
    table = gc._tables.get("t")
    return len(table.open.items) if table and table.open else 0


def test_a_request_alone_is_written_at_once_with_its_own_refusals() -> None:
    write = Writes(refuse=lambda item: item[1] == 1)
    gc = commit(write)
    started = time.monotonic()
    assert gc.submit("t", items_of("a", 3), [1, 1, 1], Forever()) == {1: "refused ('a', 1)"}
    assert time.monotonic() - started < 1.0  # max_wait (5 s) applies only while another write is in flight
    assert write.groups == [items_of("a", 3)]


def test_requests_arriving_during_a_write_share_the_next_one() -> None:
    write = Writes()
    gc = commit(write)
    outcomes = run_while_first_write_held(gc, write, {f"r{i}": 2 for i in range(10)})
    assert all(outcome == {} for outcome in outcomes.values())
    assert len(write.groups) == 2
    assert write.groups[0] == [("first", 0)]
    assert sorted(write.groups[1]) == sorted(item for i in range(10) for item in items_of(f"r{i}", 2))
    assert write.most_in_flight == 1


def test_groups_are_bounded_by_items_and_by_size() -> None:
    write = Writes()
    outcomes = run_while_first_write_held(commit(write, max_items=5), write, {f"r{i}": 2 for i in range(6)})
    assert all(outcome == {} for outcome in outcomes.values())
    assert all(len(group) <= 5 for group in write.groups)
    assert sum(len(group) for group in write.groups) == 13
    write = Writes()
    outcomes = run_while_first_write_held(commit(write, max_size=3), write, {f"r{i}": 1 for i in range(6)})
    assert all(len(group) <= 3 for group in write.groups)
    assert sum(len(group) for group in write.groups) == 7


def test_a_request_bigger_than_a_group_is_written_whole_in_a_group_of_its_own() -> None:
    write = Writes()
    gc = commit(write, max_items=4)
    assert gc.submit("t", items_of("big", 9), [1] * 9, Forever()) == {}
    assert write.groups == [items_of("big", 9)]  # the writer splits it into requests, not the group


def test_a_failed_write_fails_exactly_the_requests_it_carried() -> None:
    write = Writes(fail=lambda items: ("bad", 0) in items)
    gc = commit(write, max_items=4)
    outcomes = run_while_first_write_held(gc, write, {"bad": 1, "x": 1, "y": 2, "z": 3})
    failed_group = next(group for group in write.groups if ("bad", 0) in group)
    failed_owners = {owner for owner, _ in failed_group}
    assert failed_owners >= {"bad"} and failed_owners != set(outcomes)
    for owner, outcome in outcomes.items():
        if owner in failed_owners:
            assert isinstance(outcome, TransientError), owner
        else:
            assert outcome == {}, owner
    assert gc.submit("t", items_of("after", 1), [1], Forever()) == {}  # the next group is not poisoned


def test_a_bug_in_the_write_is_not_disguised_as_transient() -> None:
    def broken(key: Hashable, items: list[Item], deadline: group_commit.Deadline) -> dict[int, str]:
        raise ValueError("a bug")

    gc: GC = GroupCommit(broken, max_items=10, max_size=100, max_wait=0.1)
    with pytest.raises(ValueError, match="a bug"):  # the leader raises the write's own exception
        gc.submit("t", items_of("a", 1), [1], Forever())
    write = Writes(fail=lambda items: False)
    write.hold()
    gc2: GC = GroupCommit(write, max_items=10, max_size=100, max_wait=5)
    outcomes: dict[str, Any] = {}

    def submit(owner: str) -> None:
        try:
            outcomes[owner] = gc2.submit("t", items_of(owner, 1), [1], Forever())
        except Exception as exc:
            outcomes[owner] = exc

    write._fail = lambda items: (_ for _ in ()).throw(ValueError("a bug"))  # type: ignore[assignment]
    with ThreadPoolExecutor(3) as pool:
        pool.submit(submit, "first")
        assert write.started.wait(5)
        pool.submit(submit, "leader")
        pool.submit(submit, "follower")
        wait_until(lambda: _queued(gc2) == 2)
        write.release.set()
    assert isinstance(outcomes["leader"], ValueError) or isinstance(outcomes["follower"], ValueError)
    follower = outcomes["follower"] if isinstance(outcomes["leader"], ValueError) else outcomes["leader"]
    assert isinstance(follower, GroupWriteFailed) and not isinstance(follower, TransientError)
    assert isinstance(follower.__cause__, ValueError)


def test_a_leader_stops_waiting_for_a_slow_write_after_max_wait() -> None:
    write = Writes()
    gc = commit(write, max_wait=0.05)
    write.hold()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(gc.submit, "t", items_of("first", 1), [1], Forever())
        assert write.started.wait(5)
        second = pool.submit(gc.submit, "t", items_of("second", 1), [1], Forever())
        wait_until(lambda: write.most_in_flight == 2)  # written while the first write still hangs
        write.release.set()
        assert first.result() == {} and second.result() == {}


class Left:
    """A deadline that never moves."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def remaining(self) -> float:
        return self.seconds


class Clocked:
    """A deadline on the real clock."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()


def test_a_group_is_written_within_the_deadline_of_the_request_with_the_most_time_left() -> None:
    write = Writes()
    gc = commit(write)
    write.hold()
    deadlines = [Left(3), Left(40), Left(25)]
    with ThreadPoolExecutor(4) as pool:
        pool.submit(gc.submit, "t", items_of("first", 1), [1], Forever())
        assert write.started.wait(5)
        futures = [pool.submit(gc.submit, "t", items_of(f"r{i}", 1), [1], d) for i, d in enumerate(deadlines)]
        wait_until(lambda: _queued(gc) == 3)
        write.release.set()
        assert [f.result() for f in futures] == [{}, {}, {}]
    assert write.deadlines[1] is deadlines[1]  # not the 3 s of the group's leader (r0)


@pytest.mark.parametrize("late_leads", [True, False])
def test_a_request_that_runs_out_of_time_gives_up_alone_and_cannot_fail_the_others(late_leads: bool) -> None:
    """A request with 1.5 s left joins a group (as its leader, or after a leader with time): while the write
    in flight holds the group back, its deadline passes and it gives up alone; the group is then written
    within the others' time and each of them gets its answer. Its rows were in the group (they may land;
    the insert ids and views deduplicate the redelivery)."""
    write = Writes()
    gc = commit(write)
    write.hold()
    late = Clocked(1.5)
    others = {f"r{i}": Clocked(60) for i in range(3)}
    order = {"late": late, **others} if late_leads else {"r0": others["r0"], "late": late, "r1": others["r1"]}
    with ThreadPoolExecutor(5) as pool:
        pool.submit(gc.submit, "t", items_of("first", 1), [1], Forever())
        assert write.started.wait(5)
        futures = {}
        for owner, deadline in order.items():
            futures[owner] = pool.submit(gc.submit, "t", items_of(owner, 1), [1], deadline)
            wait_until(lambda: _queued(gc) == len(futures))  # in this order
        with pytest.raises(TransientError, match="did not answer within its deadline"):
            futures["late"].result(timeout=10)
        write.release.set()  # it gave up while the writes were held
        assert {owner: f.result(timeout=10) for owner, f in futures.items() if owner != "late"} == {
            owner: {} for owner in order if owner != "late"
        }
    [_, group] = write.groups
    assert sorted(group) == sorted(items_of(owner, 1)[0] for owner in order)
    assert write.deadlines[1] in others.values()


def test_a_follower_whose_write_never_answers_gives_up_at_its_deadline() -> None:
    class Gone:
        """Enough time to join; none left by the time it waits."""

        def __init__(self) -> None:
            self.asked = 0

        def remaining(self) -> float:
            self.asked += 1
            return 5.0 if self.asked == 1 else 0.0

    write = Writes()
    gc = commit(write)
    write.hold()
    with ThreadPoolExecutor(3) as pool:
        pool.submit(gc.submit, "t", items_of("first", 1), [1], Forever())
        assert write.started.wait(5)
        leader = pool.submit(gc.submit, "t", items_of("leader", 1), [1], Forever())
        wait_until(lambda: _queued(gc) == 1)
        follower = pool.submit(gc.submit, "t", items_of("late", 1), [1], Gone())
        with pytest.raises(TransientError, match="did not answer within its deadline"):
            follower.result(timeout=5)
        write.release.set()
        assert leader.result() == {}


def test_tables_do_not_wait_for_each_other() -> None:
    write = Writes()
    gc = commit(write)
    write.hold()
    with ThreadPoolExecutor(2) as pool:
        pool.submit(gc.submit, "t", items_of("first", 1), [1], Forever())
        assert write.started.wait(5)
        other = pool.submit(gc.submit, "u", items_of("other", 1), [1], Forever())
        wait_until(lambda: write.most_in_flight == 2)
        write.release.set()
        assert other.result() == {}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=12),
    st.sets(st.tuples(st.integers(0, 11), st.integers(0, 5))),
    st.integers(min_value=1, max_value=8),
)
def test_every_request_gets_back_exactly_the_refusals_of_its_own_rows(
    sizes: list[int], refused: set[tuple[int, int]], max_items: int
) -> None:
    write = Writes(refuse=lambda item: (int(item[0][1:]), item[1]) in refused)
    gc = commit(write, max_items=max_items)
    outcomes = run_while_first_write_held(gc, write, {f"r{i}": n for i, n in enumerate(sizes)})
    for i, n in enumerate(sizes):
        assert outcomes[f"r{i}"] == {j: f"refused ('r{i}', {j})" for j in range(n) if (i, j) in refused}
    written = sorted(item for group in write.groups for item in group)
    assert written == sorted([("first", 0)] + [item for i, n in enumerate(sizes) for item in items_of(f"r{i}", n)])


# -- Warehouse.insert through the group commit, over the fake BigQuery client ---------------------


def warehouse_with_table(fake: FakeBigQuery) -> Warehouse:
    from schemas.tables import spec

    # A leader waits up to 5 s for the write in flight, so a loaded machine's slow threads still meet in its group.
    warehouse = Warehouse(fake, write_group_max_wait=5.0)  # type: ignore[arg-type]
    warehouse.ensure_table("personas_default", "identifies", spec("identifies"), Deadline(30))
    return warehouse


def test_concurrent_inserts_share_insertall_requests_and_each_gets_its_own_refusal() -> None:
    fake = FakeBigQuery()
    warehouse = warehouse_with_table(fake)
    entered = threading.Event()
    release = threading.Event()

    def slow_first_then_refuse(ref: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not entered.is_set():
            entered.set()
            assert release.wait(10)
        if not any(r["user_id"] == "u7" for r in rows):
            return []
        # BigQuery's answer when one row is invalid: that row refused, its neighbours stopped (resent).
        return [
            {
                "index": i,
                "errors": [{"reason": "invalid", "message": "bad"} if r["user_id"] == "u7" else {"reason": "stopped"}],
            }
            for i, r in enumerate(rows)
        ]

    fake.on_insert = slow_first_then_refuse
    with ThreadPoolExecutor(20) as pool:
        first = pool.submit(
            warehouse.insert, "personas_default", "identifies", [{"id": "m-1", "user_id": "u-1"}], ["m-1"], Deadline(30)
        )
        assert entered.wait(5)
        futures = [
            pool.submit(
                warehouse.insert,
                "personas_default",
                "identifies",
                [{"id": f"m{i}", "user_id": f"u{i}"}],
                [f"m{i}"],
                Deadline(30),
            )
            for i in range(16)
        ]
        wait_until(lambda: len(warehouse._groups[0]._tables[("personas_default", "identifies")].open.items) == 16)
        release.set()
        results = [f.result() for f in futures]
    assert first.result() == []
    # 17 requests: the first alone, the other 16 in one insertAll, its 15 stopped rows resent once.
    assert fake.insert_calls == 3
    assert [i for i, refusals in enumerate(results) if refusals] == [7]
    assert [(r.index, r.errors[0]["message"]) for r in results[7]] == [(0, "bad")]
    stored = {row["id"] for row in fake.rows["personas-test.personas_default.identifies"]}
    assert stored == {"m-1"} | {f"m{i}" for i in range(16) if i != 7}


def test_a_leader_waits_for_the_rows_of_requests_still_at_work_then_writes_them_together() -> None:
    write = Writes()
    gc = commit(write, max_wait=5.0)
    at_work = threading.Event()
    submit_now = threading.Event()

    def slow_request() -> dict[int, str]:
        with gc.serving():
            at_work.set()
            assert submit_now.wait(5)  # decoding and shaping, say
            return gc.submit("t", items_of("slow", 1), [1], Forever())

    def quick_request() -> dict[int, str]:
        with gc.serving():
            return gc.submit("t", items_of("quick", 1), [1], Forever())

    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(slow_request)
        assert at_work.wait(5)
        quick = pool.submit(quick_request)
        wait_until(lambda: _queued(gc) == 1)
        time.sleep(0.1)
        assert write.groups == []  # no write while a request in flight still works on its rows
        submit_now.set()
        assert slow.result() == {} and quick.result() == {}
    assert [sorted(group) for group in write.groups] == [[("quick", 0), ("slow", 0)]]


def test_a_request_at_work_delays_a_write_by_at_most_max_wait() -> None:
    write = Writes()
    gc = commit(write, max_wait=0.1)
    release = threading.Event()

    def request_with_no_rows_for_this_table() -> None:
        with gc.serving():
            assert release.wait(5)

    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(request_with_no_rows_for_this_table)
        wait_until(lambda: gc._serving == 1)
        started = time.monotonic()
        with gc.serving():
            assert gc.submit("t", items_of("a", 1), [1], Forever()) == {}
        assert 0.08 <= time.monotonic() - started < 2.0
        release.set()
        other.result()


def test_a_request_almost_out_of_time_is_refused_before_it_joins() -> None:
    write = Writes()
    gc = commit(write)
    with pytest.raises(TransientError, match="too little of the deadline"):
        gc.submit("t", items_of("late", 1), [1], Left(group_commit.MIN_SECONDS_TO_JOIN / 2))
    assert write.groups == []
    assert gc.submit("t", items_of("on_time", 1), [1], Forever()) == {}
