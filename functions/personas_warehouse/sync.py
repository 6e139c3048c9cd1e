"""The users sync: for every space dataset, bring `users` up to date with one MERGE, and record the
run in sync_history. One failing space does not stop the others.

Incremental by default: the watermark is identifies.loaded_at (when a row became visible, not when
it was published), so a backlog delivered late is still picked up; the newest successful run's
watermark minus SYNC_OVERLAP_SECONDS is where the next run starts.
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
from personas_warehouse.sql import SINCE, count_sql, last_watermark_sql, plan_merge, trait_columns
from schemas.tables import spec

USERS, IDENTIFIES, SYNC_HISTORY = "users", "identifies", "sync_history"
SUCCESS, PARTIAL, FAILURE, SKIPPED = "success", "partial", "failure", "skipped"


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
    wanted = {n: t for n, t in trait_columns(identifies).items() if config.column_enabled(USERS, n)}
    users = warehouse.ensure_table(dataset, USERS, spec(USERS), deadline)
    missing = {n: t for n, t in wanted.items() if n not in users}
    if missing:
        users = warehouse.add_columns(dataset, USERS, missing, deadline)
    clashing = sorted(n for n, t in wanted.items() if users.get(n) != t)
    columns = [n for n in wanted if n not in clashing]
    since = None if full else _since(warehouse, settings, slug, deadline)
    plan = plan_merge(warehouse.project, dataset, columns, incremental=since is not None)
    params = [bigquery.ScalarQueryParameter(SINCE, "TIMESTAMP", since)] if since is not None else []
    [stats] = warehouse.query(plan.stats_sql, params, deadline)
    jobs = [warehouse.run(statement, params, deadline) for statement in plan.statements]
    job = jobs[0]  # it inserted the new users; the others (only very wide tables have any) matched them
    affected = int(job.num_dml_affected_rows or 0)
    if job.dml_stats is not None:
        inserted = int(job.dml_stats.inserted_row_count or 0)
    else:  # the emulator reports no dml_stats: count the new users instead
        [after] = warehouse.query(count_sql(warehouse.project, dataset, USERS), [], deadline)
        inserted = max(0, int(after["n"]) - int(stats["users_before"]))
    result.users_inserted, result.users_updated = inserted, max(0, affected - inserted)
    result.identify_rows_read = int(stats["identify_rows_read"] or 0)
    result.watermark_from = values.format_timestamp(since) if since else None
    mark = stats["watermark_to"]
    result.watermark_to = values.format_timestamp(mark) if mark else result.watermark_from
    if clashing:
        result.status, result.error = PARTIAL, f"users has other types for {clashing}: those columns were not synced"


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
    rows = [{"run_id": run_id, **asdict(r)} for r in results]
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
