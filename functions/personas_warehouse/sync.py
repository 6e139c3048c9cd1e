"""The users sync: for every space dataset, bring `users_state` (and so the `users` view) up to date,
and record the run in sync_history. One failing space does not stop the others.

Incremental by default: the identify rows loaded since the newest successful run's watermark (minus
SYNC_OVERLAP_SECONDS) are folded in; flagged users and columns new to users are rebuilt from history
(see sql.py for why that is exact). The watermark is identifies.loaded_at (when a row was written, not
when it was published), so a backlog delivered late is still picked up. The first run of a space, and
--full, rebuild every user.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import bigquery

from personas_warehouse import naming, values
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.logs import log
from personas_warehouse.settings import Settings
from personas_warehouse.sql import (
    BUCKET,
    IDENTIFIES,
    REBUILD,
    REBUILD_USERS,
    ROW,
    ROW_ASOF,
    SINCE,
    TOUCHED,
    USERS,
    USERS_STATE,
    Synced,
    flagged_sql,
    fold_sql,
    last_watermark_sql,
    rebuild_sql,
    split,
    synced,
    trait_columns,
    users_view_query,
    window_sql,
)
from schemas.tables import spec

SYNC_HISTORY = "sync_history"
SUCCESS, PARTIAL, FAILURE, SKIPPED = "success", "partial", "failure", "skipped"
# Users to rebuild passed to a MERGE as a query parameter, so that it reads only their history;
# beyond this many, it rebuilds every user instead.
MAX_LISTED_USERS = 10_000


@dataclass
class SpaceResult:
    space: str
    status: str = SUCCESS
    mode: str = "incremental"
    users_inserted: int = 0
    users_updated: int = 0
    identify_rows_read: int = 0
    watermark_from: str | None = None
    watermark_to: str | None = None
    error: str | None = None
    started_at: str = ""
    finished_at: str = ""
    users_rebuilt: int = 0  # users recomputed from their whole history (logged; not a history column)


def run_sync(
    warehouse: Warehouse,
    settings: Settings,
    *,
    full: bool = False,
    spaces: Sequence[str] | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    deadline_seconds: float = 1500.0,
) -> dict[str, Any]:
    run_id = str(uuid.uuid4())
    deadline = Deadline(deadline_seconds)
    chosen = sorted(spaces) if spaces else warehouse.space_slugs(deadline)
    results = []
    for slug in chosen:
        started = now()
        result = SpaceResult(slug, mode="full" if full else "incremental", started_at=values.format_timestamp(started))
        try:
            _sync_space(warehouse, settings, slug, result, full=full, deadline=deadline)
        except Exception as exc:  # one failing space must not stop the others; the history says why
            result.status, result.error = FAILURE, f"{type(exc).__name__}: {exc}"[:2000]
        result.finished_at = values.format_timestamp(now())
        results.append(result)
        log(
            "ERROR" if result.status == FAILURE else "INFO",
            f"users sync {result.status}",
            run_id=run_id,
            space=slug,
            outcome=result.status,
            users_inserted=result.users_inserted,
            users_updated=result.users_updated,
            users_rebuilt=result.users_rebuilt,
            error=result.error,
        )
    _record(warehouse, settings, run_id, results, deadline)
    return {"run_id": run_id, "spaces": [asdict(r) for r in results]}


def _sync_space(
    warehouse: Warehouse, settings: Settings, slug: str, result: SpaceResult, *, full: bool, deadline: Deadline
) -> None:
    config = settings.space(slug)
    dataset = naming.space_dataset(slug)
    if not config.table_enabled(USERS):
        result.status, result.error = SKIPPED, "users is disabled by selective sync"
        return
    identifies = warehouse.existing_schema(dataset, IDENTIFIES, deadline)
    if identifies is None:
        result.status, result.error = SKIPPED, "no identifies table yet"
        return
    view = warehouse.describe(dataset, USERS, deadline)
    if view is not None and view.kind != "VIEW":
        raise RuntimeError(
            f"{dataset}.{USERS} is a {view.kind.lower()}, not a view: an older layout? Drop or rename it; the sync "
            f"keeps {USERS_STATE} and makes {USERS} a view of it"
        )
    wanted = {n: t for n, t in trait_columns(identifies).items() if config.column_enabled(USERS, n)}
    state = warehouse.ensure_table(dataset, USERS_STATE, spec(USERS_STATE), deadline)
    missing = {n: t for n, t in wanted.items() if n not in state}
    base = {c.name: c.type for c in spec(USERS_STATE).columns if c.name not in state}  # an older layout's
    if missing or base:
        hidden = {naming.asof_column(n): values.STRING for n in missing}
        state = warehouse.add_columns(dataset, USERS_STATE, {**base, **missing, **hidden}, deadline)
    clashing = sorted(n for n, t in wanted.items() if state.get(n) != t)
    columns = [ROW, *synced([n for n in wanted if n not in clashing])]
    hidden_now = [n for n in state if n in (ROW_ASOF, REBUILD, BUCKET) or n.startswith(naming.ASOF_PREFIX)]
    users_query = users_view_query(warehouse.project, dataset, hidden_now)
    # A column the users view does not hide yet is new to users: filled from history, then the view
    # is made again. Kept in the view, this survives a run that fails in between.
    shown = view.view_query or "" if view is not None else ""
    new = [c for c in columns if c is not ROW and c.asof not in shown]
    since = None if full else _since(warehouse, settings, slug, deadline)
    run = _Statements(warehouse, dataset, deadline)
    if since is None:  # the first run, or --full: every user from the whole history
        result.mode = "full"
        [window] = run.query(window_sql(*run.where, since=False))
        run.all(columns, lambda cols, last: rebuild_sql(*run.where, cols, listed=False, clear_flag=last))
    else:
        after = [bigquery.ScalarQueryParameter(SINCE, "TIMESTAMP", since)]
        [window] = run.query(window_sql(*run.where, since=True), after)
        touched = list(window["touched"] or [])
        partitions = [bigquery.ArrayQueryParameter(TOUCHED, "INT64", touched)]
        if touched:
            run.all(columns, lambda cols, last: fold_sql(*run.where, cols), [*after, *partitions])
        if new:  # columns new to users: from the whole history, for every user
            run.all(new, lambda cols, last: rebuild_sql(*run.where, cols, listed=False, clear_flag=False))
        [flagged] = run.query(flagged_sql(*run.where), partitions) if touched else [{"ids": None}]
        rebuild = list(flagged["ids"] or [])
        if rebuild:
            listed = len(rebuild) <= MAX_LISTED_USERS
            ids = [bigquery.ArrayQueryParameter(REBUILD_USERS, "STRING", rebuild)] if listed else []
            run.all(columns, lambda cols, last: rebuild_sql(*run.where, cols, listed=listed, clear_flag=last), ids)
            result.users_rebuilt = len(rebuild)
    if view is None or any(h not in shown for h in hidden_now):
        warehouse.put_view(dataset, USERS, users_query, deadline)
    result.users_inserted, result.users_updated = run.inserted, run.updated
    result.identify_rows_read = int(window["rows_read"] or 0)
    result.watermark_from = values.format_timestamp(since) if since else None
    mark = window["watermark_to"]
    result.watermark_to = values.format_timestamp(mark) if mark else result.watermark_from
    if clashing:
        result.status, result.error = PARTIAL, f"users has other types for {clashing}: those columns were not synced"


class _Statements:
    """Runs one space's queries and MERGEs; counts users from the MERGEs' own statistics."""

    def __init__(self, warehouse: Warehouse, dataset: str, deadline: Deadline) -> None:
        self.warehouse, self.deadline = warehouse, deadline
        self.where = (warehouse.project, dataset)
        self.inserted = self.updated = 0
        self._counted_updates = False

    def query(self, text: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self.warehouse.query(text, list(params), self.deadline)

    def all(
        self, columns: list[Synced], build: Callable[[Sequence[Synced], bool], str], params: Sequence[Any] = ()
    ) -> None:
        """Every statement of one MERGE split by columns (see sql.split). The first one inserts the new
        users; the others (only very wide tables have them) match the same users again."""
        for index, text in enumerate(split(build, columns)):
            stats = self.warehouse.run(text, list(params), self.deadline).dml_stats
            self.inserted += int(stats.inserted_row_count or 0) if stats else 0
            if index == 0 and not self._counted_updates:
                self.updated, self._counted_updates = int(stats.updated_row_count or 0) if stats else 0, True


def _since(warehouse: Warehouse, settings: Settings, slug: str, deadline: Deadline) -> datetime | None:
    """The newest successful watermark minus the overlap; None (a full rebuild) when there is none."""
    if warehouse.existing_schema(settings.ops_dataset, SYNC_HISTORY, deadline) is None:
        return None
    [row] = warehouse.query(
        last_watermark_sql(warehouse.project, settings.ops_dataset),
        [bigquery.ScalarQueryParameter("space", "STRING", slug)],
        deadline,
    )
    mark = row["mark"]
    return mark - timedelta(seconds=settings.sync_overlap_seconds) if mark else None


def _record(
    warehouse: Warehouse, settings: Settings, run_id: str, results: list[SpaceResult], deadline: Deadline
) -> None:
    if not results:
        return
    warehouse.ensure_table(settings.ops_dataset, SYNC_HISTORY, spec(SYNC_HISTORY), deadline)
    columns = spec(SYNC_HISTORY).column_names
    rows = [{k: v for k, v in {"run_id": run_id, **asdict(r)}.items() if k in columns} for r in results]
    ids = [f"{run_id}:{r.space}" for r in results]
    refused = warehouse.insert(settings.ops_dataset, SYNC_HISTORY, rows, ids, deadline)
    if refused:
        raise RuntimeError(f"BigQuery refused sync_history rows: {refused}")


def main(argv: list[str] | None = None) -> int:
    """`python -m personas_warehouse.sync [--full] [--space S ...]`: the same sync, without HTTP."""
    import json

    from personas_warehouse.bigquery import make_client
    from personas_warehouse.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m personas_warehouse.sync", description=__doc__)
    parser.add_argument("--full", action="store_true", help="rebuild users from all of identifies")
    parser.add_argument("--space", action="append", help="sync only this space (repeatable)")
    args = parser.parse_args(argv)
    settings = load_settings()
    summary = run_sync(Warehouse(make_client(settings)), settings, full=args.full, spaces=args.space)
    print(json.dumps(summary, indent=2))
    return 1 if any(s["status"] == FAILURE for s in summary["spaces"]) else 0


if __name__ == "__main__":
    sys.exit(main())
