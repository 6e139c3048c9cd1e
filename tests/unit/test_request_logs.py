"""Log volume of the ingest function: a request whose calls are all written whole logs one line, however
many calls it carries; every rejected call and every call that lost values still gets a line of its own."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from personas_warehouse import app
from personas_warehouse.bigquery import Warehouse
from personas_warehouse.settings import Settings
from tests.fakes import FakeBigQuery

SETTINGS = Settings(ingest_deadline_seconds=3)
RECEIVED = datetime(2026, 11, 29, 0, 0, 1, tzinfo=UTC)


def push(fake: FakeBigQuery, calls: list[dict[str, Any]]) -> int:
    data = base64.b64encode(json.dumps({"batch": calls}).encode()).decode()
    body = json.dumps({"message": {"data": data, "messageId": "p-1", "publishTime": "2026-11-29T00:00:00Z"}})
    warehouse = Warehouse(fake, sleep=lambda _: None)  # type: ignore[arg-type]
    return app.handle_push("POST", body.encode(), lambda: warehouse, SETTINGS, now=lambda: RECEIVED)[1]


def identify(i: int, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "messageId": f"m-{i}", "userId": f"u-{i}", "traits": traits}


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]


def test_a_batch_written_whole_is_one_line_naming_its_tables(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeBigQuery()
    assert push(fake, [identify(i, plan="pro", visits=i) for i in range(100)]) == 204
    assert len(fake.rows["personas-test.personas_default.identifies"]) == 100
    [line] = log_lines(capsys)
    assert (line["severity"], line["message"], line["outcome"], line["status"]) == (
        "INFO",
        "push acked",
        "written",
        204,
    )
    assert (line["rows"], line["tables"], line["discards"], line["rejections"]) == (
        100,
        ["personas_default.identifies"],
        0,
        0,
    )


def test_tracks_name_both_their_tables() -> None:
    fake = FakeBigQuery()
    track = {"type": "track", "messageId": "t-1", "userId": "u", "event": "Audience Entered"}
    with pytest.MonkeyPatch.context() as patch:
        lines: list[dict[str, Any]] = []
        patch.setattr(app, "log", lambda severity, message, **fields: lines.append(fields))
        assert push(fake, [track]) == 204
    [line] = lines
    assert line["tables"] == ["personas_default.audience_entered", "personas_default.tracks"]


def test_every_rejection_and_every_discard_still_has_its_own_line(capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeBigQuery()
    calls = [identify(i, visits=i) for i in range(100)]
    for i in (10, 20, 30):
        calls[i] = {"type": "identify", "messageId": f"m-{i}"}  # no userId: rejected
    for i in (40, 50):
        calls[i] = identify(i, visits="many")  # visits is INT64 (the first value decided): a discard
    assert push(fake, calls) == 204
    lines = log_lines(capsys)
    rejected = [line for line in lines if line["message"] == "call rejected"]
    lossy = [line for line in lines if line["message"] == "call written with discards"]
    [request] = [line for line in lines if line["message"] == "push acked"]
    assert len(lines) == 3 + 2 + 1
    assert sorted(line["call_index"] for line in rejected) == [10, 20, 30]
    assert all(line["outcome"] == "schema_violation" and line["severity"] == "WARNING" for line in rejected)
    assert sorted(line["call_index"] for line in lossy) == [40, 50]
    assert all((line["discards"], line["table"], line["severity"]) == (1, "identifies", "WARNING") for line in lossy)
    assert (request["outcome"], request["rows"], request["discards"], request["rejections"]) == ("partial", 97, 2, 3)
