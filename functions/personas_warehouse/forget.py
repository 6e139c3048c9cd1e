"""Forget users: delete every row of their ids from every table this project writes, keep their later calls
out, and audit it. docs/forget.md is the operator's guide; this module is the how. Its SQL is in
forget_sql.py; `python -m infra.ops.forget` is the command, and the users sync calls
`finish_pending_forgets` to finish what a request had to leave.

- Which tables: a space's tables are listed (event tables are many and dynamic) and mapped to their kind in
  tables.json, whose `forget` says which columns hold a user id or an anonymous id; the operations
  dataset's kinds likewise. A kind declared `none:` holds no ids.
- Order: tables whose rows are found `via` other tables' rows (discards through the raw rows' ids,
  replays through the rejected messages' ids) go first; a source table is not deleted from while a via
  table still holds rows of the ids (they would become unfindable).
- BigQuery's streaming buffer: rows written by insertAll in about the last 30 minutes cannot be changed
  by DML, and a DELETE that would touch one fails whole ("UPDATE or DELETE statement over table ...
  would affect rows in the streaming buffer, which is not supported":
  https://cloud.google.com/bigquery/docs/data-manipulation-language#limitations,
  https://cloud.google.com/knowledge/kb/cannot-update-or-delete-over-bigquery-streaming-tables-000004334).
  Google's way around it is to leave out recent rows by a time filter; so a refused DELETE is run again
  on the rows streamed more than 30 minutes ago (the DML page's rule), then 90 (the knowledge base's),
  and what is left is reported as pending, with why. Rows written by the Storage Write API
  (BIGQUERY_WRITER=storage_write) or by DML can be deleted at once, and the first DELETE succeeds.
- Kept out: each id is recorded in forget_suppressions as HMAC-SHA256(FORGET_HASH_KEY, kind, id), never
  in clear; ingest keeps a per-instance copy, read with tabledata.list at most FORGET_REFRESH_SECONDS
  old, and drops matching calls before shaping (counted in the request's log line, stored nowhere).
- Pending: a call that an instance began with a copy from before the suppression can still land up to
  FORGET_REFRESH_SECONDS plus the ingest deadline after it. So a request keeps its ids (in clear, in
  forget_pending) until that window has passed and no row is left; then they are deleted. A re-run of
  the command and every users sync run (`finish_pending_forgets`) go over pending requests.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from google.api_core import exceptions as gexc

from personas_warehouse import forget_sql, naming
from personas_warehouse.bigquery import Deadline, PerWarehouse, Warehouse, query_parameters
from personas_warehouse.derived.frame import chunks
from personas_warehouse.errors import TransientError
from personas_warehouse.forget_sql import Ids, Statement, Target
from personas_warehouse.logs import log
from personas_warehouse.messages import Decoded
from personas_warehouse.settings import Settings
from schemas.calls import MAX_ID_LENGTH, loads_strict
from schemas.tables import spec, table_specs

SUPPRESSIONS, PENDING, AUDIT = "forget_suppressions", "forget_pending", "forget_requests"
USER_ID, ANONYMOUS_ID = "user_id", "anonymous_id"
# BigQuery's streaming buffer: first the DML page's 30 minutes, then the knowledge base's 90 (module doc).
BUFFER_CUTOFFS = (timedelta(minutes=30), timedelta(minutes=90))
_BUFFER_ERROR = "streaming buffer"  # in BigQuery's refusal (and the strict fake's copy of it)
BUFFER_WHY = (
    "in BigQuery's streaming buffer (written by insertAll in the last 30-90 minutes, which DML cannot "
    "change yet); the next users sync, or a re-run, deletes them"
)
# Calls in flight when the suppression was written can land for up to the refresh plus the ingest deadline;
# plus this for clocks and the time the suppression's own write takes to be seen.
SETTLE_MARGIN = timedelta(seconds=60)
COMMAND_DEADLINE_SECONDS = 3600.0  # the command's BigQuery retries stop within this
_KEY_ID_MESSAGE = b"personas-warehouse forget key id"


class ForgetError(Exception):
    """A request that cannot start (no key, an empty id, a space that does not exist): nothing was changed."""


# -- keyed hashes -------------------------------------------------------------------------------------


def subject_hash(key: bytes, kind: str, value: str) -> str:
    """HMAC-SHA256 of the id's kind and value: the same string as a user id and as an anonymous id are two
    subjects. Keyed, so that a guessable id (an email) cannot be found from the hash without the key."""
    keyed = _keyed(key).copy()  # copying the keyed state: 2 us a hash, where keying anew costs 10 (OpenSSL 3)
    keyed.update(f"{kind}\x00{value}".encode())
    return keyed.hexdigest()


@lru_cache(maxsize=4)
def _keyed(key: bytes) -> hmac.HMAC:
    return hmac.new(key, digestmod=hashlib.sha256)


def key_id(key: bytes) -> str:
    """A fingerprint of the key, stored beside each hash: ingest refuses a table of another key's hashes."""
    return hmac.new(key, _KEY_ID_MESSAGE, hashlib.sha256).hexdigest()[:16]


def _key(settings: Settings) -> bytes:
    if not settings.forget_hash_key:
        raise ForgetError("FORGET_HASH_KEY is not set: it must be the key the functions have (docs/forget.md)")
    return settings.forget_hash_key.encode()


def hashes(key: bytes, ids: Ids) -> list[tuple[str, str]]:
    """(kind, hash) of every id of a request."""
    return [(USER_ID, subject_hash(key, USER_ID, v)) for v in ids.user_ids] + [
        (ANONYMOUS_ID, subject_hash(key, ANONYMOUS_ID, v)) for v in ids.anonymous_ids
    ]


def checked_ids(user_ids: Iterable[str], anonymous_ids: Iterable[str]) -> Ids:
    """The ids as ingest stores them (trimmed), each once; ForgetError for an empty or too long one."""
    out: list[tuple[str, ...]] = []
    for kind, given in ((USER_ID, user_ids), (ANONYMOUS_ID, anonymous_ids)):
        kept: dict[str, None] = {}
        for value in given:
            text = value.strip()
            if not text:
                raise ForgetError(f"an empty {kind} was given: refusing to guess what was meant")
            if len(text) > MAX_ID_LENGTH:
                raise ForgetError(f"a {kind} is longer than {MAX_ID_LENGTH} characters: no call can carry it")
            kept[text] = None
        out.append(tuple(kept))
    if not out[0] and not out[1]:
        raise ForgetError("no id to forget")
    return Ids(out[0], out[1])


# -- results ------------------------------------------------------------------------------------------


@dataclass
class TableResult:
    dataset: str
    table: str
    found: int = 0
    deleted: int = 0
    left: int = 0
    why: str | None = None  # why rows were left

    def as_dict(self) -> dict[str, Any]:
        return {"found": self.found, "deleted": self.deleted, "left": self.left, "why": self.why}


@dataclass
class Report:
    request_id: str
    dry_run: bool
    spaces: list[str]
    tables: list[TableResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settle_after: datetime | None = None
    done: bool = False  # nothing left and nothing in flight can land any more: the ids are released

    @property
    def found(self) -> int:
        return sum(t.found for t in self.tables)

    @property
    def deleted(self) -> int:
        return sum(t.deleted for t in self.tables)

    @property
    def left(self) -> int:
        return sum(t.left for t in self.tables)

    @property
    def status(self) -> str:
        return "dry_run" if self.dry_run else "done" if self.done else "pending"

    def detail(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for t in self.tables:
            out.setdefault(t.dataset, {})[t.table] = t.as_dict()
        return out


# -- one pass over the tables -------------------------------------------------------------------------


def _dml(warehouse: Warehouse, statement: Statement, deadline: Deadline) -> int:
    job = warehouse.run(statement.sql, query_parameters(statement.params), deadline)
    return int(job.num_dml_affected_rows or 0)


def _count(
    warehouse: Warehouse, targets: Sequence[Target], sources: Sequence[Target], ids: Ids, deadline: Deadline
) -> dict[str, int]:
    """Rows of the ids per table: every table of a dataset in as few queries as BigQuery's query length
    allows (one, but for spaces with thousands of event tables)."""
    project = warehouse.project
    parts = [(t, chunk) for t in targets for chunk in forget_sql.chunks(project, t, sources)]
    groups: list[list[tuple[Target, Sequence[Target]]]] = [[]]
    used = 0
    for part in parts:
        cost = len(forget_sql.count(project, [part], ids).sql) + 12
        if groups[-1] and used + cost > forget_sql.MAX_QUERY_CHARS:
            groups.append([])
            used = 0
        groups[-1].append(part)
        used += cost
    totals: dict[str, int] = {}
    for group in groups:
        statement = forget_sql.count(project, group, ids)
        for row in warehouse.query(statement.sql, query_parameters(statement.params), deadline):
            totals[str(row["table_name"])] = totals.get(str(row["table_name"]), 0) + int(row["n"] or 0)
    return totals


def _buffered(exc: Exception) -> bool:
    return isinstance(exc, gexc.BadRequest) and _BUFFER_ERROR in str(exc).lower()


def _delete(
    warehouse: Warehouse, target: Target, sources: Sequence[Target], ids: Ids, now: datetime, deadline: Deadline
) -> tuple[int, str | None]:
    """Rows deleted, and why some were left (a DELETE per chunk of via sources, see forget_sql.chunks; and,
    in a table split into integer ranges, per chunk of at most PARTITION_BUDGET partitions)."""
    deleted, why = 0, None
    total = spec(target.kind).buckets if target.kind in table_specs() else None
    partitions = [keys.buckets for keys in chunks(range(total), total)] if total else [None]
    for chunk in forget_sql.chunks(warehouse.project, target, sources):
        for part in partitions:
            n, reason = _delete_chunk(warehouse, target, chunk, ids, now, deadline, part)
            deleted, why = deleted + n, why or reason
    return deleted, why


def _delete_chunk(
    warehouse: Warehouse,
    target: Target,
    sources: Sequence[Target],
    ids: Ids,
    now: datetime,
    deadline: Deadline,
    partitions: Sequence[int] | None = None,
) -> tuple[int, str | None]:
    """The whole DELETE, else (BigQuery's streaming buffer) the rows streamed before each cutoff in turn."""
    project = warehouse.project
    try:
        return _dml(warehouse, forget_sql.delete(project, target, sources, ids, partitions=partitions), deadline), None
    except gexc.GoogleAPICallError as exc:
        if not _buffered(exc):
            return 0, f"BigQuery refused the DELETE: {exc.message}"[:500]
    if target.forget.streamed_at is None:
        return 0, BUFFER_WHY
    for cutoff in BUFFER_CUTOFFS:
        older = forget_sql.delete(project, target, sources, ids, before=now - cutoff, partitions=partitions)
        try:
            return _dml(warehouse, older, deadline), BUFFER_WHY
        except gexc.GoogleAPICallError as exc:
            if not _buffered(exc):
                return 0, f"BigQuery refused the DELETE: {exc.message}"[:500]
    return 0, BUFFER_WHY


def _targets(warehouse: Warehouse, dataset: str, space: bool, deadline: Deadline, notes: list[str]) -> list[Target]:
    """The tables of a dataset that can hold ids, each with its kind's `forget`. In a space dataset a table
    that is no kind of tables.json is an event table (`track_event`), checked to have its columns."""
    specs = table_specs()
    out = []
    for name, table_type in warehouse.list_tables(dataset, deadline):
        if table_type != "TABLE":  # views (users, <table>_view) hold no rows of their own
            continue
        known = name in specs and specs[name].dataset == ("space" if space else "ops")
        if not known and not space:
            continue  # not this project's table
        kind = name if known else "track_event"
        forget = specs[kind].forget
        if forget is None:
            raise ValueError(f"tables.json: {kind} does not say how to forget a user in it")
        if forget.none is not None:
            continue
        if not known:
            schema = warehouse.existing_schema(dataset, name, deadline) or {}
            needed = [*forget.user_id, *forget.anonymous_id, *([forget.streamed_at] if forget.streamed_at else [])]
            missing = [c for c in needed if c not in schema]
            if missing:
                lacking = ", ".join(missing)
                notes.append(f"{dataset}.{name}: no {lacking} column, not an event table of this project: left alone")
                continue
        out.append(Target(dataset, name, kind, forget))
    return out


def _dataset_pass(
    warehouse: Warehouse, targets: list[Target], ids: Ids, now: datetime, deadline: Deadline, dry_run: bool
) -> list[TableResult]:
    """Count, delete (via tables first), count again: the rows of the ids in one dataset's tables."""
    if not targets:
        return []
    results = {t.table: TableResult(t.dataset, t.table) for t in targets}
    for name, n in _count(warehouse, targets, targets, ids, deadline).items():
        results[name].found = n
    if dry_run:
        for r in results.values():
            r.left = r.found
        return list(results.values())
    blocked: dict[str, str] = {}  # kind -> the via table that still holds rows found through it
    for target in sorted(targets, key=lambda t: t.forget.via is None):
        result = results[target.table]
        if not result.found:
            continue
        if target.kind in blocked:
            result.why = f"kept until {blocked[target.kind]} is empty: its rows are found through these"
            continue
        result.deleted, result.why = _delete(warehouse, target, targets, ids, now, deadline)
        via = target.forget.via
        if via is not None and _count(warehouse, [target], targets, ids, deadline).get(target.table):
            blocked.update(dict.fromkeys(via.kinds, target.table))
    for name, n in _count(warehouse, targets, targets, ids, deadline).items():
        results[name].left = n
    for r in results.values():
        if r.left and r.why is None:
            r.why = (
                "written while this ran (calls in flight before the suppression took hold); the next pass deletes them"
            )
    return list(results.values())


def forget_pass(
    warehouse: Warehouse,
    settings: Settings,
    ids: Ids,
    spaces: Sequence[str],
    *,
    now: datetime,
    deadline: Deadline,
    dry_run: bool = False,
) -> tuple[list[TableResult], list[str]]:
    """Every table of these spaces and of the operations dataset: the rows of the ids found, deleted, left."""
    notes: list[str] = []
    results: list[TableResult] = []
    for slug in spaces:
        dataset = naming.space_dataset(slug)
        results += _dataset_pass(
            warehouse, _targets(warehouse, dataset, True, deadline, notes), ids, now, deadline, dry_run
        )
    ops = _targets(warehouse, settings.ops_dataset, False, deadline, notes)
    results += _dataset_pass(warehouse, ops, ids, now, deadline, dry_run)
    return results, notes


# -- requests -----------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _spaces_json(spaces: Sequence[str] | None) -> str | None:
    return json.dumps(sorted(spaces)) if spaces else None


def _audit(
    warehouse: Warehouse,
    settings: Settings,
    key: bytes,
    ids: Ids,
    report: Report,
    action: str,
    at: datetime,
    spaces: Sequence[str] | None,
    deadline: Deadline,
) -> None:
    warehouse.ensure_table(settings.ops_dataset, AUDIT, spec(AUDIT), deadline)
    row = {
        "request_id": report.request_id,
        "run_at": at,
        "action": action,
        "subject_hashes": json.dumps([h for _, h in hashes(key, ids)]),
        "spaces": _spaces_json(spaces),
        "rows_found": report.found,
        "rows_deleted": report.deleted,
        "rows_left": report.left,
        "status": "unsuppressed" if action == "unsuppress" else report.status,
        "detail": json.dumps({"tables": report.detail(), "notes": report.notes}, sort_keys=True),
    }
    _dml(warehouse, forget_sql.insert_audit(warehouse.project, settings.ops_dataset, row), deadline)


def settle_after(settings: Settings, at: datetime) -> datetime:
    """When no call that was in flight at `at` can land any more (module doc, Pending)."""
    window = settings.forget_refresh_seconds + settings.ingest_deadline_seconds
    return at + timedelta(seconds=window) + SETTLE_MARGIN


def forget(
    warehouse: Warehouse,
    settings: Settings,
    ids: Ids,
    spaces: Sequence[str] | None = None,
    *,
    dry_run: bool = False,
    now: Callable[[], datetime] = _now,
    deadline: Deadline | None = None,
) -> Report:
    """One request: suppress the ids (so nothing new lands), record them as pending, delete their rows in
    the spaces asked for (all by default) and in the operations dataset, audit. A dry run only counts.
    Raises ForgetError before changing anything when the request cannot be carried out."""
    deadline = deadline or Deadline(COMMAND_DEADLINE_SECONDS)
    key = b"" if dry_run else _key(settings)
    existing = warehouse.space_slugs(deadline)
    unknown = sorted(set(spaces or ()) - set(existing))
    if unknown:
        raise ForgetError(f"no such space: {', '.join(unknown)} (spaces: {', '.join(existing) or 'none yet'})")
    chosen = sorted(set(spaces)) if spaces else existing
    report = Report(str(uuid.uuid4()), dry_run, chosen)
    started = now()
    if not dry_run:
        report.settle_after = settle_after(settings, started)
        _record(warehouse, settings, key, ids, spaces, report, started, deadline)
    report.tables, report.notes = forget_pass(
        warehouse, settings, ids, chosen, now=now(), deadline=deadline, dry_run=dry_run
    )
    if not dry_run:
        _close_if_settled(warehouse, settings, report, now(), deadline)
        _audit(warehouse, settings, key, ids, report, "forget", now(), spaces, deadline)
    return report


def _record(
    warehouse: Warehouse,
    settings: Settings,
    key: bytes,
    ids: Ids,
    spaces: Sequence[str] | None,
    report: Report,
    at: datetime,
    deadline: Deadline,
) -> None:
    """Suppress first (nothing new lands after the window), then keep the ids until the request is done."""
    ops, project = settings.ops_dataset, warehouse.project
    for table in (SUPPRESSIONS, PENDING):
        warehouse.ensure_table(ops, table, spec(table), deadline)
    scope = _spaces_json(spaces)
    by_kind: dict[str, list[str]] = {}
    for kind, digest in hashes(key, ids):
        by_kind.setdefault(kind, []).append(digest)
    fields = {"spaces": scope, "key_id": key_id(key), "request_id": report.request_id, "at": at}
    for kind, digests in by_kind.items():
        _dml(warehouse, forget_sql.insert_suppressions(project, ops, kind, digests, fields), deadline)
    pending = {"request_id": report.request_id, "spaces": scope, "at": at, "settle_after": report.settle_after}
    for kind, given in ((USER_ID, ids.user_ids), (ANONYMOUS_ID, ids.anonymous_ids)):
        if given:
            _dml(warehouse, forget_sql.insert_pending(project, ops, kind, given, pending), deadline)


def _close_if_settled(
    warehouse: Warehouse, settings: Settings, report: Report, at: datetime, deadline: Deadline
) -> None:
    """Release the ids (delete them from forget_pending) once nothing is left and nothing can land."""
    if report.left or report.settle_after is None or at < report.settle_after:
        return
    _dml(warehouse, forget_sql.delete_pending(warehouse.project, settings.ops_dataset, [report.request_id]), deadline)
    report.done = True


_PENDING_COLUMNS = (
    ("request_id", "STRING"),
    ("subject_kind", "STRING"),
    ("subject_id", "STRING"),
    ("spaces", "STRING"),
    ("requested_at", "TIMESTAMP"),
    ("settle_after", "TIMESTAMP"),
)


def finish_pending_forgets(
    warehouse: Warehouse, settings: Settings, deadline: Deadline, *, now: Callable[[], datetime] = _now
) -> dict[str, Any]:
    """Go over every pending forget request once more: delete what BigQuery's streaming buffer held back,
    and what landed while suppressions were being picked up; release the ids of requests that are done.
    Called by every users sync run. Never raises (the sync must go on): a failure is logged and counted,
    and the request stays pending for the next run. Reads forget_pending with tabledata.list, so a sync
    with nothing pending runs no query for it."""
    summary: dict[str, Any] = {"pending": 0, "finished": 0, "rows_deleted": 0, "rows_left": 0, "failed": 0}
    try:
        rows = warehouse.read_rows(settings.ops_dataset, PENDING, _PENDING_COLUMNS, deadline) or []
    except Exception as exc:  # the sync must go on; the next run tries again
        log("ERROR", f"forget: pending requests unreadable: {exc!r}"[:2000], outcome="failure")
        summary["failed"] += 1
        return summary
    if not rows:
        return summary
    requests: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        requests.setdefault(str(row["request_id"]), []).append(row)
    summary["pending"] = len(requests)
    try:
        key = _key(settings)
        existing = warehouse.space_slugs(deadline)
    except Exception as exc:
        log("ERROR", f"forget: pending requests not finished: {exc!r}"[:2000], outcome="failure")
        summary["failed"] = len(requests)
        return summary
    for request_id, items in sorted(requests.items()):
        try:
            report = _finish(warehouse, settings, key, request_id, items, existing, now, deadline)
        except Exception as exc:  # one request must not stop the others
            log("ERROR", f"forget: request {request_id} not finished: {exc!r}"[:2000], request_id=request_id)
            summary["failed"] += 1
            continue
        summary["finished"] += report.done
        summary["rows_deleted"] += report.deleted
        summary["rows_left"] += report.left
    log(
        "WARNING" if summary["failed"] else "INFO",
        "forget requests finished" if summary["finished"] == summary["pending"] else "forget requests pending",
        **summary,
    )
    return summary


def _finish(
    warehouse: Warehouse,
    settings: Settings,
    key: bytes,
    request_id: str,
    items: list[dict[str, Any]],
    existing: Sequence[str],
    now: Callable[[], datetime],
    deadline: Deadline,
) -> Report:
    ids = Ids(
        tuple(sorted({str(r["subject_id"]) for r in items if r["subject_kind"] == USER_ID})),
        tuple(sorted({str(r["subject_id"]) for r in items if r["subject_kind"] == ANONYMOUS_ID})),
    )
    scope = json.loads(items[0]["spaces"]) if items[0]["spaces"] else None
    spaces = [s for s in scope if s in existing] if scope else list(existing)
    report = Report(request_id, False, spaces, settle_after=max(r["settle_after"] for r in items))
    report.tables, report.notes = forget_pass(warehouse, settings, ids, spaces, now=now(), deadline=deadline)
    _close_if_settled(warehouse, settings, report, now(), deadline)
    if report.done or report.deleted:
        _audit(warehouse, settings, key, ids, report, "finish", now(), scope, deadline)
    return report


def unsuppress(
    warehouse: Warehouse,
    settings: Settings,
    ids: Ids,
    *,
    now: Callable[[], datetime] = _now,
    deadline: Deadline | None = None,
) -> int:
    """Let these ids in again: delete their suppressions (ingest sees it within FORGET_REFRESH_SECONDS) and
    drop them from pending requests (their new rows must not be deleted). Returns the suppressions removed."""
    deadline = deadline or Deadline(COMMAND_DEADLINE_SECONDS)
    key = _key(settings)
    ops, project = settings.ops_dataset, warehouse.project
    tables = {name for name, _ in warehouse.list_tables(ops, deadline)}
    removed = 0
    if SUPPRESSIONS in tables:
        removed = _dml(
            warehouse, forget_sql.delete_suppressions(project, ops, [h for _, h in hashes(key, ids)]), deadline
        )
    if PENDING in tables:
        _dml(warehouse, forget_sql.cancel_pending(project, ops, ids), deadline)
    report = Report(str(uuid.uuid4()), False, [])
    _audit(warehouse, settings, key, ids, report, "unsuppress", now(), None, deadline)
    return removed


# -- ingest: dropping the calls of forgotten ids ------------------------------------------------------


@dataclass(frozen=True)
class Suppressed:
    """An instance's copy of forget_suppressions: hash -> the spaces it applies to (None: every space)."""

    by_hash: Mapping[str, frozenset[str] | None] = field(default_factory=dict)
    key: bytes = b""

    def hit(self, kind: str, value: Any, space: str | None) -> bool:
        """Whether a call whose `kind` id is `value` (as sent: a string or an integer) is suppressed in
        `space` (None: not routed yet, suppressed if it is anywhere)."""
        if not self.by_hash or isinstance(value, bool) or not isinstance(value, (str, int)):
            return False
        text = str(value).strip()
        if not text:
            return False
        spaces = self.by_hash.get(subject_hash(self.key, kind, text), ())
        if spaces == ():
            return False
        return spaces is None or space is None or space in spaces

    def of_call(self, call: Mapping[str, Any], space: str | None) -> bool:
        return self.hit(USER_ID, call.get("userId"), space) or self.hit(ANONYMOUS_ID, call.get("anonymousId"), space)


_SUPPRESSION_COLUMNS = (("subject_hash", "STRING"), ("spaces", "STRING"), ("key_id", "STRING"))


class SuppressionCache:
    """forget_suppressions as one instance sees it: read again when older than FORGET_REFRESH_SECONDS (by
    tabledata.list: no query job). A read that fails raises, so no call is ever written with a copy older
    than that: the bound the pending window relies on."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._read_at: float | None = None
        self._current = Suppressed()

    def current(self, warehouse: Warehouse, settings: Settings, deadline: Deadline) -> Suppressed:
        if self._fresh(settings):
            return self._current
        with self._lock:  # one request reads; the others of the instance wait for its copy
            if not self._fresh(settings):
                started = self._clock()  # the copy is as old as the read's start
                self._current = _read_suppressions(warehouse, settings, deadline)
                self._read_at = started
            return self._current

    def _fresh(self, settings: Settings) -> bool:
        return self._read_at is not None and self._clock() - self._read_at < settings.forget_refresh_seconds


def _read_suppressions(warehouse: Warehouse, settings: Settings, deadline: Deadline) -> Suppressed:
    rows = warehouse.read_rows(settings.ops_dataset, SUPPRESSIONS, _SUPPRESSION_COLUMNS, deadline) or []
    if not rows:
        return Suppressed()
    if not settings.forget_hash_key:
        raise TransientError(
            f"{len(rows)} ids are forgotten ({settings.ops_dataset}.{SUPPRESSIONS}) but FORGET_HASH_KEY is not "
            "set: no call can be written until it is (docs/forget.md)"
        )
    key = settings.forget_hash_key.encode()
    mine = key_id(key)
    others = {str(r["key_id"]) for r in rows} - {mine}
    if others:
        raise TransientError(
            f"{SUPPRESSIONS} holds hashes made with another FORGET_HASH_KEY (key ids {sorted(others)}, this "
            f"instance's {mine}): no call can be written until the keys agree (docs/forget.md)"
        )
    by_hash: dict[str, frozenset[str] | None] = {}
    for row in rows:
        digest = str(row["subject_hash"])
        spaces = frozenset(json.loads(row["spaces"])) if row["spaces"] else None
        before = by_hash.get(digest, frozenset())
        by_hash[digest] = None if spaces is None or before is None else before | spaces
    return Suppressed(by_hash, key)


# The instance's cache of forgotten ids (one per Warehouse).
suppression_cache: PerWarehouse[SuppressionCache] = PerWarehouse(lambda _: SuppressionCache())


def drop_suppressed(
    decoded: Decoded, warehouse: Warehouse, settings: Settings, deadline: Deadline
) -> tuple[Decoded, int]:
    """`decoded` without the calls of forgotten ids, and how many were dropped. A rejected call of a
    forgotten id is dropped too (its data would be stored in rejected_messages); a message refused whole
    is dropped when its data is one call of a forgotten id. Costs nothing while no id is forgotten."""
    current = suppression_cache(warehouse).current(warehouse, settings, deadline)
    if not current.by_hash:
        return decoded, 0
    calls = [
        routed
        for routed in decoded.calls
        if not (
            current.hit(USER_ID, routed.call.user_id, routed.space)
            or current.hit(ANONYMOUS_ID, routed.call.anonymous_id, routed.space)
        )
    ]
    dropped = len(decoded.calls) - len(calls)
    rejections = decoded.rejections
    if rejections:
        raws = _raw_calls(decoded.data)
        kept = []
        for rejection in rejections:
            index = rejection.call_index
            raw = raws[index] if index is not None and 0 <= index < len(raws) else None
            if index is None and len(raws) == 1:  # a message refused whole that is one call
                raw = raws[0]
            if isinstance(raw, dict) and current.of_call(raw, rejection.space):
                dropped += 1
                continue
            kept.append(rejection)
        rejections = kept
    if not dropped:
        return decoded, 0
    return replace(decoded, calls=calls, rejections=rejections), dropped


def _raw_calls(data: bytes) -> list[Any]:
    """The call objects of a message as sent (one, or a batch's); [] when it is not JSON."""
    try:
        document = loads_strict(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return []
    if isinstance(document, dict) and isinstance(document.get("batch"), list):
        return list(document["batch"])
    return [document]
