"""Group commit: the requests in flight in one instance share their writes.

Each push request carries one call, and a write per request per table is what made single-call
messages slow and dear. Here the rows that requests hand in for the same table join one open group;
the first request of a group (its leader) writes the whole group on its own thread, and the others
wait for that write. No background thread: Cloud Functions gen2 may give an instance no CPU between
requests, so the writing is always done by a request that is still waiting for its answer.

A group closes when it is full (rows or bytes) or when its leader stops waiting, after at most
`max_wait` seconds. The leader waits while another write to the same table is in flight (the rows
arriving meanwhile join its group), and while some request in flight in the instance is still at work
(decoding, shaping: announced by `serving()`), since its rows are about to come. So one request alone
is written at once, and under load a write carries the rows of every request in flight rather than
of whichever arrived first (PostgreSQL's commit_delay with commit_siblings, without the fixed delay).

Every request returns only after the write carrying its rows answered: with the refusals of its own
rows (indices are its own), or by raising when that write failed, so exactly the requests whose rows
it carried are redelivered. This module knows nothing about BigQuery; the adapter gives it `write`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from personas_warehouse.errors import TransientError

Item = TypeVar("Item")
Refusal = TypeVar("Refusal")

# A follower waits for its leader's write a little past its own deadline: the write is bounded by the
# tightest deadline of its group, so the grace only covers the time the leader needs to hand back.
_FOLLOWER_GRACE_SECONDS = 2.0
# A group is written within the tightest deadline of its requests, so a request with less time than this
# left would make the write fail for all of them: it is refused before it joins (it fails alone).
MIN_SECONDS_TO_JOIN = 1.0


class Deadline(Protocol):
    def remaining(self) -> float: ...


class GroupWriteFailed(Exception):
    """The write carrying this request's rows failed with an error that is not transient (a bug or a
    refused request): raised in every request of the group, chained to the leader's exception."""


@dataclass
class _Group(Generic[Item, Refusal]):
    items: list[Item] = field(default_factory=list)
    size: int = 0
    deadlines: list[Deadline] = field(default_factory=list)
    closed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    refusals: dict[int, Refusal] = field(default_factory=dict)
    error: BaseException | None = None


@dataclass
class _Table(Generic[Item, Refusal]):
    open: _Group[Item, Refusal] | None = None
    writes_in_flight: int = 0


class GroupCommit(Generic[Item, Refusal]):
    """Shared writes per key (a table). `write(key, items, deadline)` writes the items of one group and
    returns {index in items: refusal} for the items refused for themselves; it raises when the write
    failed. One instance per process: it is the meeting point of the request threads."""

    def __init__(
        self,
        write: Callable[[Hashable, list[Item], Deadline], dict[int, Refusal]],
        *,
        max_items: int,
        max_size: int,
        max_wait: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._max_items = max_items
        self._max_size = max_size
        self._max_wait = max_wait
        self._clock = clock
        self._lock = threading.Lock()
        # Leaders re-check when a group closes, a write finishes, or a request submits or finishes.
        self._changed = threading.Condition(self._lock)
        self._tables: dict[Hashable, _Table[Item, Refusal]] = {}
        self._serving = 0  # requests in flight that said so (serving())
        self._submitting = 0  # of them, those inside submit(): waiting for a write

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Around the handling of one request: while it works on its rows, leaders wait for them."""
        with self._lock:
            self._serving += 1
        try:
            yield
        finally:
            with self._lock:
                self._serving -= 1
                self._changed.notify_all()

    def submit(
        self, key: Hashable, items: Sequence[Item], sizes: Sequence[int], deadline: Deadline
    ) -> dict[int, Refusal]:
        """Write `items` (with their byte `sizes`) in a group; {index in items: refusal} once written."""
        if not items:
            return {}
        if deadline.remaining() < MIN_SECONDS_TO_JOIN:
            raise TransientError("too little of the deadline left to join a shared write; Pub/Sub will redeliver")
        with self._lock:
            self._submitting += 1
            self._changed.notify_all()  # a leader may be waiting for this request's rows
            table = self._tables.setdefault(key, _Table())
            group = table.open
            if group is None or not self._fits(group, len(items), sum(sizes)):
                if group is not None:  # its leader writes it now; these items start the next group
                    self._close(table, group)
                group = table.open = _Group()
                leader = True
            else:
                leader = False
            offset = len(group.items)
            group.items.extend(items)
            group.size += sum(sizes)
            group.deadlines.append(deadline)
            if self._full(group):
                self._close(table, group)
        try:
            if leader:
                self._lead(key, table, group)
            elif not group.done.wait(deadline.remaining() + _FOLLOWER_GRACE_SECONDS):
                raise TransientError("the shared write carrying this request's rows did not answer in time")
        finally:
            with self._lock:
                self._submitting -= 1
        if group.error is not None:
            if isinstance(group.error, TransientError):
                raise TransientError(f"the shared write failed: {group.error}") from group.error
            raise GroupWriteFailed(f"the shared write failed: {group.error!r}") from group.error
        return {i - offset: r for i, r in group.refusals.items() if offset <= i < offset + len(items)}

    def _fits(self, group: _Group[Item, Refusal], count: int, size: int) -> bool:
        return not group.closed and len(group.items) + count <= self._max_items and group.size + size <= self._max_size

    def _full(self, group: _Group[Item, Refusal]) -> bool:
        return len(group.items) >= self._max_items or group.size >= self._max_size

    def _close(self, table: _Table[Item, Refusal], group: _Group[Item, Refusal]) -> None:
        """No request joins `group` any more (called with the lock held)."""
        group.closed = True
        if table.open is group:
            table.open = None
        self._changed.notify_all()

    def _lead(self, key: Hashable, table: _Table[Item, Refusal], group: _Group[Item, Refusal]) -> None:
        """Wait (at most max_wait) while another write to this table is in flight or a request is still
        at work on its rows, close the group, write it, and hand every waiting request its answer,
        whatever happens."""
        try:
            with self._lock:
                end = self._clock() + min(self._max_wait, self._tightest(group).remaining())
                while not group.closed and (table.writes_in_flight or self._serving > self._submitting):
                    left = end - self._clock()
                    if left <= 0:
                        break
                    self._changed.wait(left)
                self._close(table, group)
                table.writes_in_flight += 1
                tightest = self._tightest(group)
            try:
                group.refusals = self._write(key, group.items, tightest)
            finally:
                with self._lock:
                    table.writes_in_flight -= 1
                    self._changed.notify_all()
        except BaseException as exc:
            group.error = exc
            raise
        finally:
            group.done.set()

    @staticmethod
    def _tightest(group: _Group[Item, Refusal]) -> Deadline:
        """The group is written within the deadline of the request that has the least time left."""
        return min(group.deadlines, key=lambda d: d.remaining())
