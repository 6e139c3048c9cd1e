"""The scheduled sync: for every space dataset, bring every derived table (derived/: `users` today) up
to date, and record each in sync_history. One failing table or space does not stop the others.

Each table is kept on the frame in derived/frame.py: incremental by default (the source rows loaded
since the table's last successful run, minus SYNC_OVERLAP_SECONDS), a full rebuild on a space's first
run, after a layout change, or with --full.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from personas_warehouse import naming, values
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.derived import DERIVED
from personas_warehouse.derived.frame import (
    FAILURE,
    PARTIAL,
    SKIPPED,
    SUCCESS,
    Context,
    TableResult,
    last_successes,
    record,
    run_table,
)
from personas_warehouse.forget import finish_pending_forgets
from personas_warehouse.logs import log
from personas_warehouse.settings import Settings

_WORST = (FAILURE, PARTIAL, SUCCESS, SKIPPED)  # a space's status is its tables' worst


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
    until = now()  # before any schema is read: see derived/frame.py, "Window"
    # Forget requests held back by BigQuery's streaming buffer are finished first, so that no derived table
    # reads a forgotten user's rows this run (never raises: a failure leaves the request pending).
    forgets = finish_pending_forgets(warehouse, settings, deadline)
    chosen = sorted(spaces) if spaces else warehouse.space_slugs(deadline)
    layouts = {d.name: d.layout for d in DERIVED}
    previous = {} if full else last_successes(warehouse, settings, chosen, layouts, until, deadline)
    results: list[TableResult] = []
    for slug in chosen:
        for derived in DERIVED:
            result = TableResult(slug, derived.name, derived.layout, started_at=values.format_timestamp(now()))
            try:
                context = Context(
                    warehouse,
                    settings,
                    slug,
                    settings.space(slug),
                    naming.space_dataset(slug),
                    deadline,
                    previous.get((slug, derived.name)),
                )
                run_table(derived, context, until, result)
            except Exception as exc:  # one failing table must not stop the others; the history says why
                result.status, result.error = FAILURE, f"{type(exc).__name__}: {exc}"[:2000]
            result.finished_at = values.format_timestamp(now())
            results.append(result)
            log(
                "ERROR" if result.status == FAILURE else "INFO",
                f"{derived.name} sync {result.status}",
                run_id=run_id,
                space=slug,
                table=derived.name,
                outcome=result.status,
                mode=result.mode,
                rows_inserted=result.rows_inserted,
                rows_updated=result.rows_updated,
                rows_deleted=result.rows_deleted,
                statements=result.statements,
                error=result.error,
            )
    record(warehouse, settings, run_id, results, deadline)
    return {"run_id": run_id, "forget": forgets, "spaces": [_space(slug, results) for slug in chosen]}


def _space(slug: str, results: list[TableResult]) -> dict[str, Any]:
    tables = [r for r in results if r.space == slug]
    status = min((r.status for r in tables), key=_WORST.index, default=SKIPPED)
    errors = [f"{r.table_name}: {r.error}" for r in tables if r.error and r.status != SKIPPED]
    return {
        "space": slug,
        "status": status,
        "error": "; ".join(errors) or None,
        "tables": {
            r.table_name: {k: v for k, v in asdict(r).items() if k not in ("space", "table_name")} for r in tables
        },
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m personas_warehouse.sync [--full] [--space S ...]`: the same sync, without HTTP."""
    import json

    from personas_warehouse.bigquery import make_client
    from personas_warehouse.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m personas_warehouse.sync", description=__doc__)
    parser.add_argument("--full", action="store_true", help="rebuild every derived table from the whole history")
    parser.add_argument("--space", action="append", help="sync only this space (repeatable)")
    args = parser.parse_args(argv)
    settings = load_settings()
    summary = run_sync(Warehouse(make_client(settings)), settings, full=args.full, spaces=args.space)
    print(json.dumps(summary, indent=2))
    return 1 if any(s["status"] == FAILURE for s in summary["spaces"]) else 0


if __name__ == "__main__":
    sys.exit(main())
