"""The contract both writers keep, and what they may ask of the table catalog.

A writer's `write` gets the rows of one group (one table; one request's rows or many requests' rows,
group_commit.py) and returns only once every row is written, refused for itself, or deferred:
- written: durable in BigQuery (insertAll answered without an error for it; an AppendRows response
  without an error on the default stream, whose rows are committed when answered);
- refused: BigQuery's verdict on the row itself (its errors), or the row alone is over a request's size;
- deferred: BigQuery does not show this writer a column the row carries yet (a column just added: both
  APIs lag, seconds to minutes). The writer does not wait for it inside the shared write, which would
  hold back every request of the group; the request that owns the row retries it, by the next writer or
  after a backoff, within its own deadline (bigquery.Warehouse.insert).
Anything else transient is retried with backoff inside the deadline, then raises TransientError (Pub/Sub
redelivers the requests the write carried). A request BigQuery calls malformed is raised as is: a bug,
not the rows' fault, and retrying it would only delay the redelivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from personas_warehouse.deadline import Deadline

Schema = dict[str, str]  # column -> standard SQL type, as the table has it
Problems = list[dict[str, Any]]  # BigQuery's errors for one row: {"reason", "location", "message"}


@dataclass(frozen=True)
class RowRefusal:
    index: int
    errors: Problems


@dataclass(frozen=True)
class Deferred:
    """Not written, not refused: BigQuery does not show the writer these columns of the row yet."""

    columns: tuple[str, ...]


Verdict = Problems | Deferred  # for each row not simply written


@dataclass(frozen=True)
class Entry:
    """One row on its way, prepared by the writer in the request's own thread (so the request that writes a
    shared group does not pay for the others'): the row, its insert id, the schema it was fitted to, the
    writer's own form of it (insertAll: the row as JSON sends it; the Write API: its protobuf encoding) and
    the bytes it adds to that writer's request (groups are sized by it)."""

    row: dict[str, Any]
    insert_id: str
    fitted_to: Schema
    wire: Any
    size: int


class Tables(Protocol):
    """What a writer may ask of the table catalog (bigquery.Warehouse)."""

    def existing_schema(self, dataset: str, table: str, deadline: Deadline) -> Schema | None:
        """The table's schema read fresh; None when there is no such table."""
        ...

    def restore(self, dataset: str, table: str, deadline: Deadline) -> Schema:
        """The table's schema read fresh, the table created again (as it was ensured) when it is gone."""
        ...

    def add_columns(self, dataset: str, table: str, columns: dict[str, str], deadline: Deadline) -> Schema: ...

    def forget(self, dataset: str, table: str) -> None:
        """Drop the cached schema: the next request reads the table afresh."""
        ...


class Writer(Protocol):
    """One way rows reach BigQuery."""

    name: str  # BIGQUERY_WRITER's value for it
    max_group_rows: int  # a shared group closes at this many rows...
    max_group_bytes: int  # ...or this many bytes (Entry.size)

    def prepare(self, dataset: str, table: str, row: dict[str, Any], insert_id: str, fitted_to: Schema) -> Entry:
        """The row made ready for this writer (in the request's own thread)."""
        ...

    def oversized(self, item: Entry) -> Problems | None:
        """Why the row alone is too big for any request of this writer (checked before it joins a group)."""
        ...

    def write(
        self, dataset: str, table: str, entries: Sequence[Entry], deadline: Deadline, tables: Tables
    ) -> dict[int, Verdict]:
        """Write `entries`; {index: verdict} for each row refused or deferred, once the others are written."""
        ...
