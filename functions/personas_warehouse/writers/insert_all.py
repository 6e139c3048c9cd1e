"""The insertAll writer (BIGQUERY_WRITER=insert_all; and the Storage Write writer's next writer for rows
whose columns the Write API does not see yet): rows streamed by tabledata.insertAll with insert ids
derived from their message, so BigQuery drops a redelivery's copy (best effort, about a minute).

insertAll answers row by row: a row refused for itself (`invalid`) stops its neighbours (`stopped`,
written by nothing), which go again at once; `backendError`, `internalError` and `timeout` go again after
a backoff. "no such field" is a column BigQuery's streaming does not see yet, right after it was added
(eventually consistent, seconds to minutes), or a table that lost a column under us: the table is read
again and a missing column added back with the type the row was fitted to, and the row is deferred to
its request (contract.py), never held inside the shared write.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery

from personas_warehouse import values
from personas_warehouse.deadline import FIRST_DELAY, Deadline, pause
from personas_warehouse.errors import TransientError
from personas_warehouse.writers.contract import Deferred, Entry, Problems, Schema, Tables, Verdict

# insertAll's rules (https://cloud.google.com/bigquery/quotas#streaming_inserts), all in one place.
# BigQuery's hard limits: a bigger request is refused whole with HTTP 400 ("Request payload size exceeds
# the limit: 10485760 bytes." / "too many rows present in the request, limit: 50000 ...").
INSERT_ALL_MAX_REQUEST_BYTES = 10 * 1024 * 1024
INSERT_ALL_MAX_ROWS = 50_000
# What we send: BigQuery's recommended 500 rows, and a byte budget safely under the hard limit, measured on
# the request body exactly as google-cloud-bigquery serializes it (json.dumps of {"rows": [{"json": row,
# "insertId": id}, ...]}). A row whose JSON alone is over the budget is refused as row_refused, never sent.
INSERT_ROWS_PER_REQUEST = 500
INSERT_BYTES_PER_REQUEST = 9_000_000
_EMPTY_REQUEST_BYTES = len(json.dumps({"rows": []}))
_ROW_SEPARATOR_BYTES = len(", ")
ROW_BYTES_BUDGET = INSERT_BYTES_PER_REQUEST - _EMPTY_REQUEST_BYTES
_RETRYABLE_ROW_REASONS = frozenset({"stopped", "backendError", "internalError", "timeout"})
_NO_SUCH_FIELD = "no such field"  # BigQuery has not yet seen a column just added (or the table is new)


def _no_such_field(problem: dict[str, Any]) -> bool:
    return _NO_SUCH_FIELD in str(problem.get("message", "")).lower()


def _unseen_column(problem: dict[str, Any]) -> str:
    """The column of a "no such field: x." problem (its location, else the message's name)."""
    location = str(problem.get("location") or "")
    if location:
        return location.lower()
    message = str(problem.get("message", ""))
    return message.lower().split(_NO_SUCH_FIELD, 1)[-1].strip(" :.") or "?"


def json_bytes(wire: dict[str, Any], insert_id: str) -> int:
    """Bytes one row adds to an insertAll body, serialized as google-cloud-bigquery does (json.dumps)."""
    return len(json.dumps({"json": wire, "insertId": insert_id}).encode("utf-8"))


def _too_big(size: int) -> dict[str, Any]:
    message = f"Row is {size} bytes as JSON; one insertAll request carries at most {ROW_BYTES_BUDGET} bytes of rows."
    return {"reason": "invalid", "location": "", "message": message}


def _requests(indices: Sequence[int], sizes: Sequence[int]) -> Iterator[list[int]]:
    """Consecutive runs of `indices`, each within INSERT_ROWS_PER_REQUEST and INSERT_BYTES_PER_REQUEST."""
    run: list[int] = []
    used = _EMPTY_REQUEST_BYTES
    for i in indices:
        grown = used + sizes[i] + (_ROW_SEPARATOR_BYTES if run else 0)
        if run and (len(run) == INSERT_ROWS_PER_REQUEST or grown > INSERT_BYTES_PER_REQUEST):
            yield run
            run, grown = [], _EMPTY_REQUEST_BYTES + sizes[i]
        run.append(i)
        used = grown
    if run:
        yield run


class InsertAllWriter:
    """tabledata.insertAll through google-cloud-bigquery, every call bounded by the caller's deadline."""

    name = "insert_all"
    max_group_rows = INSERT_ROWS_PER_REQUEST
    max_group_bytes = ROW_BYTES_BUDGET

    def __init__(self, client: bigquery.Client, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self._sleep = sleep

    def prepare(self, dataset: str, table: str, row: dict[str, Any], insert_id: str, fitted_to: Schema) -> Entry:
        wire = values.wire_row(row)
        return Entry(row, insert_id, fitted_to, wire, json_bytes(wire, insert_id))

    def oversized(self, item: Entry) -> Problems | None:
        return [_too_big(item.size)] if item.size > ROW_BYTES_BUDGET else None

    def write(
        self, dataset: str, table: str, entries: Sequence[Entry], deadline: Deadline, tables: Tables
    ) -> dict[int, Verdict]:
        """In requests within insertAll's limits, each until its rows are written, refused or deferred."""
        fitted_to: Schema = {}
        for schema in {id(e.fitted_to): e.fitted_to for e in entries}.values():
            fitted_to.update(schema)
        verdicts: dict[int, Verdict] = {}
        for request in _requests(range(len(entries)), [e.size for e in entries]):
            verdicts.update(self._send(dataset, table, entries, request, fitted_to, deadline, tables))
        return verdicts

    def _send(
        self,
        dataset: str,
        table: str,
        entries: Sequence[Entry],
        request: list[int],
        fitted_to: Schema,
        deadline: Deadline,
        tables: Tables,
    ) -> dict[int, Verdict]:
        ref = f"{self.client.project}.{dataset}.{table}"
        verdicts: dict[int, Verdict] = {}
        pending, delay = request, FIRST_DELAY
        checked = False  # whether a refusal made us compare the table with the schema the rows were fitted to
        while pending:
            fields = {name for i in pending for name in entries[i].wire}
            try:
                errors = self.client.insert_rows_json(
                    ref,
                    [entries[i].wire for i in pending],
                    row_ids=[entries[i].insert_id for i in pending],
                    retry=deadline.retry(),
                    timeout=deadline.budget(20),
                )
            except gexc.NotFound:
                _reensure(tables, dataset, table, fitted_to, fields, deadline)
                delay = pause(self._sleep, delay, deadline)
                continue
            retry_next: list[int] = []
            only_stopped = True  # rows held back by a refused neighbour can be resent at once
            unseen: dict[int, tuple[str, ...]] = {}
            refused_now = False
            for answer in errors:
                index = pending[answer["index"]]
                problems = answer.get("errors", [])
                if any(_no_such_field(p) for p in problems):
                    unseen[index] = tuple(sorted({_unseen_column(p) for p in problems if _no_such_field(p)}))
                elif all(p.get("reason", "") in _RETRYABLE_ROW_REASONS for p in problems):
                    retry_next.append(index)
                    only_stopped = only_stopped and all(p.get("reason") == "stopped" for p in problems)
                else:
                    verdicts[index] = problems
                    refused_now = True
            if unseen or (refused_now and not checked):
                # A refusal is only the row's fault if the table still has the types the rows were fitted
                # to; a table re-created with other types raises TransientError (re-fit on redelivery).
                checked = checked or refused_now
                _reensure(tables, dataset, table, fitted_to, fields, deadline)
            verdicts.update({index: Deferred(columns) for index, columns in unseen.items()})
            if retry_next and not only_stopped:
                delay = pause(self._sleep, delay, deadline)
            pending = retry_next
        return verdicts


def _reensure(
    tables: Tables, dataset: str, table: str, fitted_to: Schema, fields: set[str], deadline: Deadline
) -> None:
    """Read the table afresh (creating it again if it is gone) and add back the columns the rows carry
    that it lacks, with the types the rows were fitted to. A column whose type changed cannot be fixed
    here: the message is redelivered and its rows fitted again."""
    ref = f"{dataset}.{table}"
    try:
        fresh = tables.restore(dataset, table, deadline)
        changed = sorted(f for f in fields if f in fresh and f in fitted_to and fresh[f] != fitted_to[f])
        unknown = sorted(f for f in fields if f not in fresh and f not in fitted_to)
        if changed or unknown:
            tables.forget(dataset, table)
            raise TransientError(f"{ref} changed under this instance ({changed or unknown}); redeliver to re-fit")
        lacking = {f: fitted_to[f] for f in sorted(fields) if f not in fresh}
        if lacking:
            tables.add_columns(dataset, table, lacking, deadline)
    except gexc.NotFound:  # created, but not visible yet: the caller backs off and tries again
        tables.forget(dataset, table)
