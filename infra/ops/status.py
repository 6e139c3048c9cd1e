"""The pipeline's health on one screen, per space: last successful sync of each derived table and how far
`users` lags, raw rows written in the last hour and day, rejections by class and the most discarded
columns over the last 24 hours, users_state's duplicate ids (expected 0), and the dead-letter backlog.

    python -m infra.ops.status [--dead-letter-subscription SUB] [--json]

Six queries whatever the number of spaces (each one UNION ALL across the space datasets, which are
listed through the API: bqemulator has no INFORMATION_SCHEMA). The backlog is counted by pulling the
dead-letter subscription without acking (every message is handed back); without the flag it is
"unknown". On real Pub/Sub, Cloud Monitoring's num_undelivered_messages says the same without pulling.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from infra.ops import common, queries
from infra.ops.common import Reader, Subscriber

TOP_DISCARDS = 5
HISTORY = timedelta(days=30)  # how far back the last sync of a table is looked for (history by day)
UNROUTED = "?"  # rejections that happened before a space was known (bad JSON, bad envelope)


def collect(
    reader: Reader,
    *,
    subscriber: Subscriber | None = None,
    dead_letter_subscription: str | None = None,
    now: Callable[[], datetime] = common.now_utc,
    peek_limit: int = common.PEEK_LIMIT,
) -> dict[str, Any]:
    at = now()
    hour, day = at - timedelta(hours=1), at - timedelta(days=1)
    catalog = reader.space_tables()
    ops = reader.ops_tables()
    spaces: dict[str, dict[str, Any]] = {s: collect_empty(s) for s in sorted(catalog)}

    def entry(space: str | None) -> dict[str, Any]:
        name = space or UNROUTED
        return spaces.setdefault(name, collect_empty(name))

    if "sync_history" in ops:
        for row in reader.run(queries.last_syncs(reader.project, reader.ops_dataset, at - HISTORY)):
            lag = None if row["watermark_to"] is None else max(0, int((at - row["watermark_to"]).total_seconds()))
            kept = {
                "last_success": row["last_success"],
                "watermark_to": row["watermark_to"],
                "lag_seconds": lag,
                "last_run": row["last_run"],
                "last_status": row["last_status"],
            }
            e = entry(row["space"])
            e["tables"][row["table_name"]] = kept
            if row["table_name"] == "users":
                e["last_success"], e["watermark_to"] = kept["last_success"], kept["watermark_to"]
                e["last_run"], e["last_status"], e["users_lag_seconds"] = kept["last_run"], kept["last_status"], lag
    states = common.raw_tables(catalog, ("users_state",))
    if states:
        for row in reader.run(queries.duplicate_keys(reader.project, states)):
            entry(row["space"])["duplicate_user_ids"] = int(row["n_rows"]) - int(row["ids"])
    raw = common.raw_tables(catalog, queries.RAW_TABLES)
    if raw:
        for row in reader.run(queries.rows_written(reader.project, raw, hour, day)):
            e = entry(row["space"])
            e["rows_last_hour"], e["rows_last_day"] = int(row["last_hour"]), int(row["last_day"])
    if "rejected_messages" in ops:
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for row in reader.run(queries.rejections_since(reader.project, reader.ops_dataset, day)):
            counts[row["space"] or UNROUTED][row["error_class"]] += int(row["n"])
        for space, by_class in counts.items():
            entry(space)["rejections_24h"] = dict(sorted(by_class.items()))
    discards = common.raw_tables(catalog, ("discards",))
    if discards:
        ranked: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
        for row in reader.run(queries.discard_columns(reader.project, discards, day)):
            ranked[row["space"]].append((int(row["n"]), row["table_name"], row["column_name"]))
        for space, items in ranked.items():
            items.sort(key=lambda item: (-item[0], item[1], item[2]))
            entry(space)["top_discards_24h"] = [{"table": t, "column": c, "n": n} for n, t, c in items[:TOP_DISCARDS]]

    dead_letter: dict[str, Any] = {"subscription": dead_letter_subscription, "backlog": None, "by_space": {}}
    if subscriber is not None and dead_letter_subscription:
        messages, complete = common.peek(subscriber, dead_letter_subscription, peek_limit)
        dead_letter["backlog"] = len(messages) if complete else f">={len(messages)}"
        dead_letter["by_space"] = dict(sorted(Counter(common.dead_letter_space(m) for m in messages).items()))

    out_spaces = []
    for name in sorted(spaces):
        e = dict(spaces[name])
        for kept in [e, *e["tables"].values()]:
            for key in ("last_success", "watermark_to", "last_run"):
                kept[key] = common.iso(kept[key])
        out_spaces.append(e)
    return {"generated_at": common.iso(at), "project": reader.project, "spaces": out_spaces, "dead_letter": dead_letter}


def collect_empty(space: str) -> dict[str, Any]:
    return {
        "space": space,
        "last_success": None,
        "watermark_to": None,
        "users_lag_seconds": None,
        "last_run": None,
        "last_status": None,
        "rows_last_hour": 0,
        "rows_last_day": 0,
        "rejections_24h": {},
        "top_discards_24h": [],
        "duplicate_user_ids": None,  # rows of users_state less distinct ids: expected 0
        "tables": {},  # derived table -> its last run and last success, as for users above
    }


def duration(seconds: int | None) -> str:
    """A lag a person reads at a glance: 45s, 12m, 3h04m, 2d03h."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds}s"
    minutes, hours = seconds // 60, seconds // 3600
    if seconds < 3600:
        return f"{minutes}m"
    if seconds < 86400:
        return f"{hours}h{minutes % 60:02d}m"
    return f"{seconds // 86400}d{hours % 24:02d}h"


def render(data: dict[str, Any]) -> str:
    lines = [f"status of {data['project']} at {data['generated_at'][:19]}Z"]
    rows = []
    for s in data["spaces"]:
        last = (s["last_success"] or "never")[:19].replace("T", " ")
        rows.append(
            [
                s["space"],
                last,
                s["last_status"] or "-",
                duration(s["users_lag_seconds"]),
                s["rows_last_hour"],
                s["rows_last_day"],
                sum(s["rejections_24h"].values()),
                "-" if s["duplicate_user_ids"] is None else s["duplicate_user_ids"],
            ]
        )
    headers = ["space", "last ok sync (UTC)", "last run", "users lag", "rows 1h", "rows 24h", "rejected 24h", "dup ids"]
    lines.append(common.render_table(headers, rows) if rows else "no spaces yet")
    for s in data["spaces"]:
        others = {name: kept for name, kept in s["tables"].items() if name != "users"}
        if others:
            lags = ", ".join(
                f"{name} {kept['last_status']} lag {duration(kept['lag_seconds'])}" for name, kept in others.items()
            )
            lines.append(f"derived       {s['space']}: {lags}")
        if s["duplicate_user_ids"]:
            lines.append(
                f"DUPLICATES    {s['space']}: users_state holds {s['duplicate_user_ids']} extra rows (expected 0)"
            )
    for s in data["spaces"]:
        if s["rejections_24h"]:
            classes = ", ".join(f"{k} {v}" for k, v in s["rejections_24h"].items())
            lines.append(f"rejected 24h  {s['space']}: {classes}")
    for s in data["spaces"]:
        if s["top_discards_24h"]:
            top = ", ".join(f"{d['table']}.{d['column']} {d['n']}" for d in s["top_discards_24h"])
            lines.append(f"discards 24h  {s['space']}: {top}")
    dl = data["dead_letter"]
    if dl["subscription"] is None:
        lines.append("dead letters: unknown (give --dead-letter-subscription to count them)")
    else:
        spread = ", ".join(f"{k} {v}" for k, v in dl["by_space"].items())
        lines.append(
            f"dead letters: {dl['backlog']} waiting in {dl['subscription']}" + (f" ({spread})" if spread else "")
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra.ops.status",
        description="Per space: last users sync and lag, rows written, rejections, discards, dead letters.",
        epilog="Uses the emulators when BIGQUERY_EMULATOR_HOST / PUBSUB_EMULATOR_HOST are set.",
    )
    parser.add_argument("--dead-letter-subscription", metavar="SUB", help="count the messages waiting here")
    parser.add_argument("--json", action="store_true", help="the same data as JSON")
    common.add_common_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    reader = common.make_warehouse(args.project, args.ops_dataset)
    subscription = (
        common.subscription_path(args.project, args.dead_letter_subscription) if args.dead_letter_subscription else None
    )
    subscriber = common.make_subscriber() if subscription else None
    data = collect(reader, subscriber=subscriber, dead_letter_subscription=subscription)
    print(json.dumps(data, indent=2) if args.json else render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
