"""docs/audience_memberships.md answers its questions with SQL that runs on the local stack: the calls the
page describes go through the real ingest core into the stack's bqemulator, the sync runs, and every SQL
block of the page runs there; a block followed by a table must answer exactly that table."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.cloud import bigquery

from infra.local.stack import Stack
from personas_warehouse.bigquery import Warehouse
from personas_warehouse.ingest import ingest
from personas_warehouse.messages import PubSubMessage
from personas_warehouse.settings import Settings
from personas_warehouse.sync import run_sync
from tests.integration.conftest import WIDE_OPEN, query

pytestmark = pytest.mark.integration
PAGE = Path(__file__).resolve().parents[2] / "docs" / "audience_memberships.md"
BLOCK = re.compile(r"```sql\n(?P<sql>.*?)```\n(?:\n(?P<table>\|.*?\n)(?:\n|\Z))?", re.S)


def at(day: int, hour: int) -> str:
    return f"2026-11-{day:02d}T{hour:02d}:00:00Z"


def personas(audience: str) -> dict[str, Any]:
    return {"personas": {"computation_class": "audience", "computation_key": audience}}


def identify(n: int, user: str, day: int, hour: int, audience: str, value: bool) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": f"m{n}",
        "userId": user,
        "timestamp": at(day, hour),
        "context": personas(audience),
        "traits": {audience: value},
    }


def track(n: int, who: dict[str, str], day: int, hour: int, audience: str, enters: bool) -> dict[str, Any]:
    return who | {
        "type": "track",
        "event": "Audience Entered" if enters else "Audience Exited",
        "messageId": f"m{n}",
        "timestamp": at(day, hour),
        "context": personas(audience),
        "properties": {"audience_key": audience, audience: enters},
    }


# The calls the page lists, in the order of their message ids.
CALLS = [
    identify(1, "u1", 1, 9, "vip", True),
    identify(2, "u1", 3, 9, "vip", False),
    identify(3, "u2", 1, 12, "vip", True),
    track(4, {"userId": "u2"}, 1, 12, "vip", True),
    identify(5, "u3", 2, 8, "vip", True),
    identify(6, "u3", 2, 20, "vip", False),
    identify(7, "u3", 4, 8, "vip", True),
    track(8, {"userId": "u1"}, 2, 10, "churn_risk", True),
    track(9, {"userId": "u2"}, 2, 11, "churn_risk", True),
    track(10, {"userId": "u2"}, 3, 15, "churn_risk", False),
    track(11, {"anonymousId": "a9"}, 1, 7, "churn_risk", True),
    track(12, {"userId": "u4"}, 2, 9, "vip", False),
]


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.strip().splitlines() if not re.match(r"^\|[-| ]+\|$", line)]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]


def test_the_pages_sql_answers_as_shown(stack: Stack, bq: bigquery.Client) -> None:
    project, space = stack.config.project, "docs_memberships"
    config = Settings(
        space_policy=WIDE_OPEN,
        bigquery_emulator_host=stack.config.bigquery_url,
        project=project,
        sync_overlap_seconds=0,
    )
    warehouse = Warehouse(bq)
    for i, call in enumerate(CALLS):
        data = base64.b64encode(json.dumps(call).encode()).decode()
        ingest(PubSubMessage(f"{space}-{i}", data, datetime.now(UTC), {"space": space}), warehouse, config)
    [result] = run_sync(warehouse, config, spaces=[space])["spaces"]
    assert result["tables"]["audience_memberships"]["status"] == "success", result

    blocks = list(BLOCK.finditer(PAGE.read_text()))
    shown = [b for b in blocks if b["table"]]
    assert len(blocks) >= 6 and len(shown) >= 5, "the page's questions"
    for block in blocks:
        text = block["sql"].replace("PROJECT.personas_SPACE", f"{project}.personas_{space}")
        text = text.replace("PROJECT.personas__ops", f"{project}.{config.ops_dataset}")
        rows = query(bq, text)
        if not block["table"]:
            continue
        [header, *expected] = table_rows(block["table"])
        assert header == list(rows[0]) if rows else True, text
        assert [[cell(r[c]) for c in header] for r in rows] == expected, text
