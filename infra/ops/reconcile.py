"""Prove every published call is accounted for: it became a row, or it was rejected (and why).

    python -m infra.ops.reconcile --ids-file published.jsonl [--json]
    python -m infra.ops.reconcile --from 2026-11-28T00:00:00Z --to 2026-11-29T00:00:00Z \
        [--dead-letter-subscription personas-calls-dead-letter] [--json]

Ids mode reads what `python -m infra.publish --ids-file` wrote, one JSON object per published message:
`{"pubsub_id": ..., "call_ids": [...], "space": ..., "published_after": ...}`. A call is accounted for
when its id (the call's messageId) has a row in `identifies` or `tracks` of a space, or when its Pub/Sub
message (whole, or this call of a batch) is in `rejected_messages`; else it is missing. A plain-text line
is one call id (it can only be found as a row). Lookups are batched: one query per 10,000 ids, never one
per id. Each query reads only the partitions from the earliest `published_after` (the publisher's clock
before it published) less CLOCK_MARGIN on, never the tables' whole history; an ids file without those
times (plain lines, older files) needs `--since T`.

Window mode counts per space the calls received in [from, to) (distinct ids in the raw tables) and the
rejections published then, reading the partitions from `from` less CLOCK_MARGIN on; what it can call
missing is what sits in the dead-letter subscription.

Both report duplicate rows (rows sharing an id, which the `_view`s remove). Exit status: 0 nothing
missing; 1 something missing; 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from infra.ops import common, queries
from infra.ops.common import Reader, Subscriber

UNKNOWN_SPACE = "?"
SHOWN_MISSING = 10
# How far a publisher's clock (the ids file's published_after) or a function's (loaded_at) may be off
# Pub/Sub's (publish time, received_at) and a row still be found: partitions are days, so an hour costs
# at most one more partition read.
CLOCK_MARGIN = timedelta(hours=1)


@dataclass(frozen=True)
class Call:
    """One published call: the Pub/Sub message it travelled in, its position there, its messageId, and
    the publisher's clock before it published that message (a lower bound of its publish time)."""

    pubsub_id: str | None
    index: int
    call_id: str | None
    space: str | None
    published_after: datetime | None = None


def lower_bound(calls: Iterable[Call]) -> datetime:
    """Where the scans of these calls' rows may start: the earliest publish, less CLOCK_MARGIN. Raises
    ValueError when a call's publish time is unknown (then the caller must give one)."""
    times = [c.published_after for c in calls]
    if any(t is None for t in times):
        raise ValueError("the ids file does not say when every message was published; give --since T")
    return min((t for t in times if t is not None), default=common.now_utc()) - CLOCK_MARGIN


@dataclass
class SpaceReport:
    space: str
    calls: int = 0
    rows: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    missing: int = 0
    duplicate_rows: int = 0
    missing_ids: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "calls": self.calls,
            "rows": self.rows,
            "rejected": dict(sorted(self.rejected.items())),
            "missing": self.missing,
            "duplicate_rows": self.duplicate_rows,
            "missing_ids": self.missing_ids,
        }


@dataclass
class Report:
    mode: str
    spaces: dict[str, SpaceReport] = field(default_factory=dict)
    window: tuple[datetime, datetime] | None = None
    dead_letter: str = "not checked"  # or "complete", or "incomplete" (more than could be counted)

    def space(self, name: str) -> SpaceReport:
        return self.spaces.setdefault(name, SpaceReport(name))

    @property
    def missing(self) -> int:
        return sum(s.missing for s in self.spaces.values())

    @property
    def exit_status(self) -> int:
        return 1 if self.missing else 0

    def as_dict(self) -> dict[str, Any]:
        rows = [self.spaces[name] for name in sorted(self.spaces)]
        totals: Counter[str] = Counter()
        for s in rows:
            totals.update(calls=s.calls, rows=s.rows, rejected=sum(s.rejected.values()), missing=s.missing)
            totals.update(duplicate_rows=s.duplicate_rows)
        out: dict[str, Any] = {"mode": self.mode}
        if self.window:
            out["from"], out["to"] = common.iso(self.window[0]), common.iso(self.window[1])
        out["dead_letter"] = self.dead_letter
        out["spaces"] = [s.as_dict() for s in rows]
        out["totals"] = {k: totals[k] for k in ("calls", "rows", "rejected", "missing", "duplicate_rows")}
        return out


# --- reading the ids file ---------------------------------------------------------------------------------


def read_ids(lines: Iterable[str]) -> list[Call]:
    """Calls from the publisher's ids file. Raises ValueError naming the line of anything else."""
    calls: list[Call] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if not text.startswith("{"):
            calls.append(Call(None, 0, text, None))
            continue
        try:
            entry = json.loads(text)
            pubsub_id, call_ids, space = entry["pubsub_id"], entry.get("call_ids", []), entry.get("space")
            if not isinstance(pubsub_id, str) or not isinstance(call_ids, list):
                raise TypeError("pubsub_id must be a string and call_ids a list")
            if space is not None and not isinstance(space, str):
                raise TypeError("space must be a string")
            published = entry.get("published_after")
            published_after = None if published is None else common.parse_time(published)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"line {number}: not an ids-file entry ({exc})") from None
        for index, call_id in enumerate(call_ids or [None]):
            calls.append(Call(pubsub_id, index, call_id if isinstance(call_id, str) else None, space, published_after))
    return calls


# --- ids mode ---------------------------------------------------------------------------------------------


def reconcile_ids(
    reader: Reader, calls: Sequence[Call], *, since: datetime | None = None, chunk: int = queries.CHUNK
) -> Report:
    """`since`: read the partitions from then on; default: `lower_bound(calls)` (ValueError if unknown)."""
    bound = since if since is not None else lower_bound(calls)
    catalog = reader.space_tables()
    known = {c.space for c in calls}
    spaces = None if None in known else known  # a call without a space attribute may be in any space
    tables = common.raw_tables(catalog, queries.RAW_TABLES, spaces)

    found: dict[str, Counter[str]] = defaultdict(Counter)  # call id -> space -> rows
    call_ids = sorted({c.call_id for c in calls if c.call_id is not None})
    if tables:
        for part in queries.chunks(call_ids, chunk):
            for row in reader.run(queries.raw_id_counts(reader.project, tables, part, bound)):
                found[row["id"]][row["space"]] += int(row["n"])

    rejections: dict[str, list[dict[str, Any]]] = defaultdict(list)
    message_ids = sorted({c.pubsub_id for c in calls if c.pubsub_id is not None})
    if message_ids and "rejected_messages" in reader.ops_tables():
        for part in queries.chunks(message_ids, chunk):
            query = queries.rejections_by_message(reader.project, reader.ops_dataset, part, bound)
            for row in reader.run(query):
                rejections[row["message_id"]].append(row)

    report = Report("ids")
    counted_duplicates: set[str] = set()
    for call in calls:
        where = found.get(call.call_id) if call.call_id is not None else None
        match = _rejection(rejections.get(call.pubsub_id or "", []), call.index)
        space = call.space or (where.most_common(1)[0][0] if where else None) or (match or {}).get("space")
        entry = report.space(space or UNKNOWN_SPACE)
        entry.calls += 1
        if where:
            entry.rows += 1
            if call.call_id not in counted_duplicates:
                counted_duplicates.add(call.call_id or "")
                entry.duplicate_rows += sum(n - 1 for n in where.values())
        elif match:
            entry.rejected[match["error_class"]] += 1
        else:
            entry.missing += 1
            if len(entry.missing_ids) < SHOWN_MISSING:
                entry.missing_ids.append({"pubsub_id": call.pubsub_id, "call_index": call.index, "id": call.call_id})
    return report


def _rejection(rows: list[dict[str, Any]], index: int) -> dict[str, Any] | None:
    """The rejection of this call: one of its own, else one of the whole message (call_index null)."""
    own = sorted((r for r in rows if r["call_index"] == index), key=lambda r: r["error_class"])
    whole = sorted((r for r in rows if r["call_index"] is None), key=lambda r: r["error_class"])
    return (own or whole or [None])[0]


# --- window mode ------------------------------------------------------------------------------------------


def reconcile_window(
    reader: Reader,
    start: datetime,
    end: datetime,
    *,
    subscriber: Subscriber | None = None,
    dead_letter_subscription: str | None = None,
) -> Report:
    report = Report("window", window=(start, end))
    since = start - CLOCK_MARGIN
    tables = common.raw_tables(reader.space_tables(), queries.RAW_TABLES)
    if tables:
        for row in reader.run(queries.raw_window(reader.project, tables, start, end, since)):
            entry = report.space(row["space"])
            entry.rows += int(row["calls"])
            entry.calls += int(row["calls"])
            entry.duplicate_rows += int(row["n_rows"]) - int(row["calls"])
    if "rejected_messages" in reader.ops_tables():
        for row in reader.run(queries.rejections_window(reader.project, reader.ops_dataset, start, end, since)):
            entry = report.space(row["space"] or UNKNOWN_SPACE)
            entry.rejected[row["error_class"]] += int(row["n"])
            entry.calls += int(row["n"])
    if subscriber is not None and dead_letter_subscription:
        messages, complete = common.peek(subscriber, dead_letter_subscription)
        report.dead_letter = "complete" if complete else "incomplete"
        for message in messages:
            if not start <= common.original_publish_time(message) < end:
                continue
            entry = report.space(common.dead_letter_space(message))
            entry.calls += 1
            entry.missing += 1
            if len(entry.missing_ids) < SHOWN_MISSING:
                entry.missing_ids.append({"pubsub_id": message.message_id, "dead_letter": True})
    return report


# --- output -----------------------------------------------------------------------------------------------


def render(report: Report) -> str:
    data = report.as_dict()
    lines = []
    if report.window:
        lines.append(f"window {data['from']} .. {data['to']} (dead letters: {report.dead_letter})")
    headers = ["space", "calls", "rows", "rejected", "missing", "duplicate rows"]
    body = [
        [s["space"], s["calls"], s["rows"], sum(s["rejected"].values()), s["missing"], s["duplicate_rows"]]
        for s in data["spaces"]
    ]
    t = data["totals"]
    body.append(["total", t["calls"], t["rows"], t["rejected"], t["missing"], t["duplicate_rows"]])
    lines.append(common.render_table(headers, body))
    for s in data["spaces"]:
        for error_class, n in s["rejected"].items():
            lines.append(f"rejected  {s['space']}: {error_class} {n}")
    for s in data["spaces"]:
        for item in s["missing_ids"]:
            lines.append(f"MISSING   {s['space']}: " + ", ".join(f"{k}={v}" for k, v in item.items()))
        if s["missing"] > len(s["missing_ids"]):
            lines.append(f"MISSING   {s['space']}: ... and {s['missing'] - len(s['missing_ids'])} more")
    lines.append("nothing missing" if not report.missing else f"{report.missing} calls missing")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra.ops.reconcile",
        description="Report per space: calls that became rows, were rejected (by class), or are missing.",
        epilog="Exit status 1 when anything is missing. Uses bqemulator when BIGQUERY_EMULATOR_HOST is set.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ids-file", metavar="PATH", help="ids file written by `infra.publish --ids-file`")
    source.add_argument("--from", dest="start", type=common.time_arg, metavar="T", help="window start (inclusive)")
    parser.add_argument("--to", dest="end", type=common.time_arg, metavar="T", help="window end (exclusive)")
    parser.add_argument(
        "--since",
        type=common.time_arg,
        metavar="T",
        help="ids mode: every message was published after T (default: the ids file's published_after times)",
    )
    parser.add_argument(
        "--dead-letter-subscription",
        metavar="SUB",
        help="window mode: count messages waiting here as missing (peeked, never acked)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    common.add_common_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if (args.start is None) != (args.end is None):
        parser.error("--from and --to go together")
    if args.start is not None and args.start >= args.end:
        parser.error("--from must be before --to")
    if args.ids_file and args.dead_letter_subscription:
        parser.error("--dead-letter-subscription is for window mode")
    if args.since is not None and not args.ids_file:
        parser.error("--since is for ids mode (a window starts at --from)")
    if args.ids_file:
        try:
            calls = read_ids(Path(args.ids_file).read_text(encoding="utf-8").splitlines())
            since = args.since if args.since is not None else lower_bound(calls)
        except (OSError, ValueError) as exc:
            print(f"reconcile: {args.ids_file}: {exc}", file=sys.stderr)
            return 2
        report = reconcile_ids(common.make_warehouse(args.project, args.ops_dataset), calls, since=since)
    else:
        reader = common.make_warehouse(args.project, args.ops_dataset)
        subscriber = common.make_subscriber() if args.dead_letter_subscription else None
        subscription = (
            common.subscription_path(args.project, args.dead_letter_subscription)
            if args.dead_letter_subscription
            else None
        )
        report = reconcile_window(
            reader, args.start, args.end, subscriber=subscriber, dead_letter_subscription=subscription
        )
    print(json.dumps(report.as_dict(), indent=2) if args.json else render(report))
    return report.exit_status


if __name__ == "__main__":
    sys.exit(main())
