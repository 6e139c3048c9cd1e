"""`make demo` (`python -m infra.local.demo`): start the local stack, publish the seed's Personas calls to the
Pub/Sub emulator, let the push subscription deliver them to the ingest function, run the users sync, print
the tables in the seed's shape, and stop the stack."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from google.cloud import bigquery

from infra.local.stack import Stack, StackConfig, running
from infra.publish import publish_file

SAMPLES = Path(__file__).with_name("sample_calls.jsonl")
MALFORMED = b'{"type": "identify", "userId": "u123", "traits": {'
SPACE = "personas_default"


def rows(client: bigquery.Client, sql: str) -> list[dict[str, Any]]:
    try:
        return [dict(r) for r in client.query(sql).result()]
    except Exception:  # table not created yet
        return []


def wait_for(client: bigquery.Client, project: str, expected: dict[str, int], timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < end:
        counts = {t: len(rows(client, f"SELECT id FROM `{project}.{t}`")) for t in expected if "rejected" not in t}
        counts.update(
            {t: len(rows(client, f"SELECT message_id FROM `{project}.{t}`")) for t in expected if "rejected" in t}
        )
        if all(counts[t] >= n for t, n in expected.items()):
            return
        time.sleep(0.5)
    raise TimeoutError(f"rows did not arrive in {timeout:.0f}s: have {counts}, want {expected}")


def show(title: str, table: list[dict[str, Any]], columns: list[str]) -> None:
    print(f"\n{title}")
    cells = [[_fmt(r.get(c)) for c in columns] for r in table]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def run_demo(stack: Stack) -> int:
    config = stack.config
    project = config.project
    os.environ["PUBSUB_EMULATOR_HOST"] = config.pubsub_host  # infra.publish's client finds the emulator by it
    summary = publish_file(SAMPLES, project=project, topic=config.topic)
    print(f"published {summary.messages} sample calls from {SAMPLES.name}, plus one malformed message")
    config.publisher().publish(f"projects/{project}/topics/{config.topic}", MALFORMED).result()
    client = config.bigquery_client()
    wait_for(
        client,
        project,
        {
            f"{SPACE}.identifies": 6,
            f"{SPACE}.audience_entered": 1,
            f"{SPACE}.audience_exited": 1,
            f"{SPACE}.trait_computed": 1,
            "personas__ops.rejected_messages": 1,
        },
    )
    request = urllib.request.Request(
        config.sync_url, data=b"{}", method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        sync_summary = json.loads(response.read())
    print(f"users sync: {json.dumps(sync_summary['spaces'])}")

    q = f"`{project}.{SPACE}"
    ident = rows(client, f"SELECT * FROM {q}.identifies` ORDER BY timestamp, id")
    show(
        f"{SPACE}.identifies",
        ident,
        [
            "user_id",
            "anonymous_id",
            "first_time_shopper",
            "total_revenue_180_days",
            "robert_drop_table_users",
            "partitiontime",
            "timestamp",
        ],
    )
    for event in ("audience_entered", "audience_exited", "trait_computed"):
        key = "trait_key" if event == "trait_computed" else "audience_key"
        value = "total_revenue_180_days" if event == "trait_computed" else "first_time_shopper"
        show(
            f"{SPACE}.{event}",
            rows(client, f"SELECT * FROM {q}.{event}` ORDER BY id"),
            ["user_id", key, value, "event_text"],
        )
    show(
        f"{SPACE}.users",
        rows(client, f"SELECT * FROM {q}.users` ORDER BY id"),
        ["id", "first_time_shopper", "total_revenue_180_days", "received_at"],
    )
    show(
        "personas__ops.rejected_messages",
        rows(client, f"SELECT * FROM `{project}.personas__ops.rejected_messages` ORDER BY received_at"),
        ["message_id", "error_class", "errors"],
    )
    users = {r["id"]: r for r in rows(client, f"SELECT * FROM {q}.users`")}
    ok = (
        users.get("u123", {}).get("first_time_shopper") is True
        and users.get("u123", {}).get("total_revenue_180_days") == 450.0
        and users.get("u456", {}).get("first_time_shopper") is False
        and "anon-789" not in users
        and all(u is not None for u in users)
    )
    print("\ndemo OK" if ok else "\ndemo FAILED: users table is not as the seed describes")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.demo", description=__doc__)
    parser.parse_args(argv)
    try:
        config = StackConfig.from_env()
    except ValueError as error:  # a malformed port in the environment
        parser.error(str(error))
    # The demo runs one sync itself and prints its summary: a scheduled sync would make that output vary.
    with running(replace(config, sync_every_seconds=0)) as stack:
        return run_demo(stack)


if __name__ == "__main__":
    sys.exit(main())
