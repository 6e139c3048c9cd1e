"""Group commit: the requests in flight in one instance share their writes.

Each push request carries one call, and a write per request per table is what made single-call
messages slow and dear. Here the rows that requests hand in for the same table join one open group;
the first request of a group (its leader) gathers it, and one request of the group writes it on its
own thread while the others wait for that write. No background thread: Cloud Functions gen2 may give
an instance no CPU between requests, so the writing is always done by a request that is still waiting
for its answer.

A group closes when it is full (rows or bytes) or when its leader stops waiting, after at most
`max_wait` seconds. The leader waits while another write to the same table is in flight (the rows
arriving meanwhile join its group), and while some request in flight in the instance is still at work
(decoding, shaping: announced by `serving()`), since its rows are about to come. So one request alone
is written at once, and under load a write carries the rows of every request in flight rather than
of whichever arrived first (PostgreSQL's commit_delay with commit_siblings, without the fixed delay).

No request's deadline can fail the others. The group is written by the request that has the most time
left, within its own deadline, so a request that joined late (after schema-change retries, say) never
shortens the write of the others. A request whose deadline passes before the write answers gives up
alone (TransientError: Pub/Sub redelivers it); its rows may still land, which is harmless since every
row carries an insert id derived from its message (insertAll drops the copy; the `<table>_view` views
and the users sync keep one row per id). A request with under MIN_SECONDS_TO_JOIN left does not join
at all: it could only give up, after adding rows that would then be written twice.

Every other request returns only after the write carrying its rows answered: with the refusals of its
own rows (indices are its own), or by raising when that write failed, so exactly the requests whose
rows it carried are redelivered. This module knows nothing about BigQuery; the adapter gives it `write`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from personas_warehouse.errors import GroupWriteFailed, TransientError

Item = TypeVar("Item")
Refusal = TypeVar("Refusal")


class Deadline(Protocol):
    def remaining(self) -> float: ...


D = TypeVar("D", bound=Deadline)

# A request with less time than this left is refused before it joins: it would only give up waiting, after
# adding rows that would be written anyway (and again when Pub/Sub redelivers it).
MIN_SECONDS_TO_JOIN = 1.0


@dataclass(eq=False)
class _Member(Generic[D]):
    """One request's part of a group."""

    deadline: D
    offset: int
    count: int
    turn: threading.Event = field(default_factory=threading.Event)  # set: the group is answered, or is its to write
    gone: bool = False  # gave up waiting at its deadline, so it cannot be the one to write


@dataclass(eq=False)
class _Group(Generic[Item, Refusal, D]):
    items: list[Item] = field(default_factory=list)
    size: int = 0
    members: list[_Member[D]] = field(default_factory=list)
    closed: bool = False
    writer: _Member[D] | None = None
    answered: bool = False
    refusals: dict[int, Refusal] = field(default_factory=dict)
    error: BaseException | None = None


@dataclass
class _Table(Generic[Item, Refusal, D]):
    open: _Group[Item, Refusal, D] | None = None
    writes_in_flight: int = 0


class GroupCommit(Generic[Item, Refusal, D]):
    """Shared writes per key (a table). `write(key, items, deadline)` writes the items of one group within
    `deadline` and returns {index in items: refusal} for the items refused for themselves; it raises when
    the write failed. One instance per process: it is the meeting point of the request threads."""

    def __init__(
        self,
        write: Callable[[Hashable, list[Item], D], dict[int, Refusal]],
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
        self._tables: dict[Hashable, _Table[Item, Refusal, D]] = {}
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

    def submit(self, key: Hashable, items: Sequence[Item], sizes: Sequence[int], deadline: D) -> dict[int, Refusal]:
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
            member = _Member(deadline, len(group.items), len(items))
            group.items.extend(items)
            group.size += sum(sizes)
            group.members.append(member)
            if self._full(group):
                self._close(table, group)
        try:
            if leader:
                self._gather(table, group)
            self._take_part(key, table, group, member)
        finally:
            with self._lock:
                self._submitting -= 1
        if group.error is not None:
            if isinstance(group.error, TransientError):
                raise TransientError(f"the shared write failed: {group.error}") from group.error
            raise GroupWriteFailed(f"the shared write failed: {group.error!r}") from group.error
        end = member.offset + member.count
        return {i - member.offset: r for i, r in group.refusals.items() if member.offset <= i < end}

    def _fits(self, group: _Group[Item, Refusal, D], count: int, size: int) -> bool:
        return not group.closed and len(group.items) + count <= self._max_items and group.size + size <= self._max_size

    def _full(self, group: _Group[Item, Refusal, D]) -> bool:
        return len(group.items) >= self._max_items or group.size >= self._max_size

    def _close(self, table: _Table[Item, Refusal, D], group: _Group[Item, Refusal, D]) -> None:
        """No request joins `group` any more (called with the lock held)."""
        group.closed = True
        if table.open is group:
            table.open = None
        self._changed.notify_all()

    def _gather(self, table: _Table[Item, Refusal, D], group: _Group[Item, Refusal, D]) -> None:
        """The leader's part: wait (at most max_wait, and never past the time of the member with the least
        left) while another write to this table is in flight or a request is still at work on its rows;
        close the group; hand its write to the member with the most time left."""
        with self._lock:
            end = self._clock() + self._max_wait
            while not group.closed and (table.writes_in_flight or self._serving > self._submitting):
                left = min(end - self._clock(), *(m.deadline.remaining() for m in group.members if not m.gone))
                if left <= 0:
                    break
                self._changed.wait(left)
            self._close(table, group)
            table.writes_in_flight += 1
            writer = max((m for m in group.members if not m.gone), key=lambda m: m.deadline.remaining())
            group.writer = writer
            writer.turn.set()

    def _take_part(
        self, key: Hashable, table: _Table[Item, Refusal, D], group: _Group[Item, Refusal, D], member: _Member[D]
    ) -> None:
        """Wait for the group's answer within this request's own deadline, or write the group when it is
        this request's turn; a request whose deadline passes first gives up alone."""
        member.turn.wait(max(0.0, member.deadline.remaining()))
        with self._lock:
            if group.answered:
                return
            if group.writer is not member:
                member.gone = True  # its deadline passed first; the group is written without it
                raise TransientError(
                    "the shared write carrying this request's rows did not answer within its deadline; "
                    "Pub/Sub will redeliver it (its rows may land twice: insert ids and the views deduplicate)"
                )
        try:
            group.refusals = self._write(key, group.items, member.deadline)
        except BaseException as exc:
            group.error = exc
            raise  # the writer raises the write's own exception; the others get theirs in submit()
        finally:
            with self._lock:
                table.writes_in_flight -= 1
                group.answered = True
                for other in group.members:
                    other.turn.set()
                self._changed.notify_all()
