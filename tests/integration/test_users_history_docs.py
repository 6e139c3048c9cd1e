"""docs/users_history.md answers its questions with SQL that runs: the calls its table lists are sent (the
one that "arrives last" after a first sync), and every SQL block of the page is run on the local stack and
gives the result table printed under it."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, date, datetime, timedelta
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
from tests.integration.conftest import WIDE_OPEN

pytestmark = pytest.mark.integration
DOC = Path(__file__).resolve().parents[2] / "docs" / "users_history.md"
_BLOCK = re.compile(r"```sql\n((?:.|\n)*?)```\n\n((?:\|[^\n]*\|\n)+)")


def table(text: str) -> list[list[str]]:
    """A markdown table's rows (header first), cells stripped."""
    lines = [line for line in text.strip().splitlines() if not re.fullmatch(r"\|(-+\|)+", line)]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def calls_of(doc: str) -> list[tuple[dict[str, Any], bool]]:
    """The page's example calls, and whether each is the one that arrives last."""
    listed = table(doc[doc.index("| user | timestamp | traits |") :].split("\n\n", 1)[0])
    found = []
    for n, (user, moment, traits) in enumerate(listed[1:]):
        values = {k: json.loads(v) for k, v in re.findall(r"`(\w+): ([^`]+)`", traits)}
        stamp = datetime.fromisoformat(moment).replace(tzinfo=UTC).isoformat()
        call = {"type": "identify", "messageId": f"doc-{n}", "userId": user, "timestamp": stamp, "traits": values}
        found.append((call, "arrives last" in traits))
    return found


def shown(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def test_every_sql_block_of_the_page_gives_the_result_it_shows(stack: Stack, bq: bigquery.Client) -> None:
    doc = DOC.read_text()
    project, space = stack.config.project, f"docs_{datetime.now(UTC):%H%M%S%f}"
    config = Settings(
        space_policy=WIDE_OPEN,
        bigquery_emulator_host=stack.config.bigquery_url,
        project=project,
        sync_overlap_seconds=0,
    )
    warehouse = Warehouse(bq)
    calls = calls_of(doc)
    assert len(calls) == 7 and sum(last for _, last in calls) == 1
    for late in (False, True):
        for n, (call, last) in enumerate(calls):
            if last == late:
                data = base64.b64encode(json.dumps(call).encode()).decode()
                received = datetime(2026, 11, 10, tzinfo=UTC) + timedelta(seconds=n)
                ingest(PubSubMessage(f"{space}-{n}", data, received, {"space": space}), warehouse, config)
        [result] = run_sync(warehouse, config, spaces=[space])["spaces"]
        assert result["status"] == "success", result

    blocks = _BLOCK.findall(doc)
    assert len(blocks) == 5, "every SQL block is followed by its result"
    for text, expected in blocks:
        sql = text.replace("PROJECT.personas_default", f"{project}.personas_{space}")
        rows = [dict(r) for r in bq.query(sql).result()]
        header, *body = table(expected)
        assert [[shown(r[c]) for c in header] for r in rows] == body, text
