"""Forget users everywhere this project keeps data, prove it, and keep them forgotten (docs/forget.md).

    python -m infra.ops.forget --user-id ID [--user-id ID ...] [--anonymous-id ID ...]
        [--ids-file FILE] [--anonymous-ids-file FILE] [--space SLUG ...] [--dry-run] [--unsuppress] [--json]

Deletes the ids' rows from every table of each space (all spaces by default) and from the operations
dataset, records each id as a keyed hash so that ingest drops its later calls, and audits the request; a
table per dataset shows the rows found, deleted and left. Rows BigQuery's streaming buffer holds back are
left pending: the users sync (every run) or a re-run of this command deletes them. `--unsuppress` lets
the ids in again. The work is done by `personas_warehouse.forget`, which the sync function runs too.

Needs FORGET_HASH_KEY, the same key the functions have (a dry run does not). Exit status: 0 nothing of the
ids is left (also when none was found); 1 rows are left (pending: run again later, or let the sync finish
them); 2 bad usage or a request that cannot start (nothing was changed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from infra.ops import common
from personas_warehouse import forget
from personas_warehouse.bigquery import Warehouse, make_client
from personas_warehouse.forget import ForgetError, Report
from personas_warehouse.settings import ConfigError, Settings, load_settings


def read_ids(path: str) -> list[str]:
    """One id per line; empty lines are skipped, a line of only spaces is an error (which id was meant?)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ForgetError(f"cannot read ids file {path}: {exc}") from exc
    ids = []
    for number, line in enumerate(text.splitlines(), 1):
        if line == "":
            continue
        if not line.strip():
            raise ForgetError(f"{path}:{number}: a line of only spaces; an id cannot be empty")
        ids.append(line)
    return ids


def render(report: Report) -> str:
    """A table per dataset (space datasets, then the operations dataset), then what it comes to."""
    out = []
    by_dataset: dict[str, list[forget.TableResult]] = {}
    for table in report.tables:
        by_dataset.setdefault(table.dataset, []).append(table)
    for dataset, tables in by_dataset.items():
        rows = [(t.table, t.found, "-" if report.dry_run else t.deleted, t.left) for t in tables]
        out.append(f"{dataset}\n" + common.render_table(["table", "found", "deleted", "left"], rows))
        out.extend(f"  {t.table}: {t.left} left: {t.why}" for t in tables if t.left and t.why)
    out.extend(f"note: {note}" for note in report.notes)
    if report.dry_run:
        out.append(f"dry run: {report.found} rows of these ids found; nothing changed")
    elif not report.found:
        out.append("no row of these ids was found anywhere; they are suppressed from now on")
    else:
        out.append(f"found {report.found} rows, deleted {report.deleted}, left {report.left}")
    if not report.dry_run and not report.done and report.settle_after is not None:
        out.append(
            f"request {report.request_id} stays pending until at least {common.iso(report.settle_after)}: calls "
            "already in flight may land until then; the users sync (every run) deletes what is left and closes it"
        )
    return "\n".join(out)


def as_dict(report: Report) -> dict[str, object]:
    return {
        "request_id": report.request_id,
        "status": report.status,
        "spaces": report.spaces,
        "rows_found": report.found,
        "rows_deleted": report.deleted,
        "rows_left": report.left,
        "settle_after": common.iso(report.settle_after),
        "tables": report.detail(),
        "notes": report.notes,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra.ops.forget",
        description="Delete every row of these ids, keep their later calls out, and audit it (docs/forget.md).",
        epilog="Uses bqemulator when BIGQUERY_EMULATOR_HOST is set. Needs FORGET_HASH_KEY (the functions' key).",
    )
    parser.add_argument("--user-id", action="append", default=[], metavar="ID", help="a userId (repeatable)")
    parser.add_argument("--anonymous-id", action="append", default=[], metavar="ID", help="an anonymousId (repeatable)")
    parser.add_argument("--ids-file", action="append", default=[], metavar="FILE", help="user ids, one per line")
    parser.add_argument(
        "--anonymous-ids-file", action="append", default=[], metavar="FILE", help="anonymous ids, one per line"
    )
    parser.add_argument("--space", action="append", metavar="SLUG", help="only this space (repeatable; default: all)")
    parser.add_argument("--dry-run", action="store_true", help="count the rows; change nothing")
    parser.add_argument("--unsuppress", action="store_true", help="let these ids in again (deletes nothing)")
    parser.add_argument("--json", action="store_true", help="machine-readable report")
    common.add_common_flags(parser)
    return parser


def settings_for(project: str, ops_dataset: str) -> Settings:
    """The functions' settings from this shell's environment (FORGET_HASH_KEY, FORGET_REFRESH_SECONDS,
    INGEST_DEADLINE_SECONDS, BIGQUERY_EMULATOR_HOST, ...), for this project and operations dataset."""
    return replace(load_settings(os.environ), project=project, ops_dataset=ops_dataset)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_for(args.project, args.ops_dataset)
        user_ids = [*args.user_id, *(i for f in args.ids_file for i in read_ids(f))]
        anonymous_ids = [*args.anonymous_id, *(i for f in args.anonymous_ids_file for i in read_ids(f))]
        ids = forget.checked_ids(user_ids, anonymous_ids)
        warehouse = Warehouse(make_client(settings))
        if args.unsuppress:
            if args.space or args.dry_run:
                raise ForgetError("--unsuppress lifts the ids everywhere; it takes no --space and no --dry-run")
            removed = forget.unsuppress(warehouse, settings, ids)
            print(json.dumps({"unsuppressed": removed}) if args.json else f"suppressions lifted: {removed}")
            return 0
        report = forget.forget(warehouse, settings, ids, args.space, dry_run=args.dry_run)
    except (ForgetError, ConfigError) as exc:
        print(f"forget: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(as_dict(report), indent=2) if args.json else render(report))
    return 1 if report.left and not report.dry_run else 0


if __name__ == "__main__":
    sys.exit(main())
