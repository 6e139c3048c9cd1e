"""The ingest HTTP function (app.handle_push) over an in-memory BigQuery: status codes Pub/Sub acts on
(204 ack, 500 redeliver, 405 for anything but POST), rejection rows for malformed push bodies (with the
subscription), and the one log line per request (with delivery_attempt)."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from personas_warehouse import app
from personas_warehouse.bigquery import Warehouse
from personas_warehouse.messages import SUBSTITUTE_ID_PREFIX
from personas_warehouse.settings import Settings
from tests.fakes import FakeBigQuery

PUSH = Path(__file__).resolve().parent.parent / "fixtures" / "push"
SETTINGS = Settings(ingest_deadline_seconds=3)
RECEIVED = datetime(2026, 11, 29, 0, 0, 1, tzinfo=UTC)
REJECTED = "personas-test.personas__ops.rejected_messages"
IDENTIFIES = "personas-test.personas_default.identifies"
CLOUD_SUBSCRIPTION = "projects/personas-prod/subscriptions/personas-calls-ingest"


@pytest.fixture
def fake() -> FakeBigQuery:
    return FakeBigQuery()


def post(fake: FakeBigQuery, body: bytes, method: str = "POST", settings: Settings = SETTINGS) -> app.Response:
    warehouse = Warehouse(fake, sleep=lambda _: None)  # type: ignore[arg-type]
    return app.handle_push(method, body, lambda: warehouse, settings, now=lambda: RECEIVED)


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]


def request_line(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    [line] = [entry for entry in log_lines(capsys) if entry["message"].startswith("push ")]
    return line


def test_emulator_push_is_written_and_acked(fake: FakeBigQuery, capsys: pytest.CaptureFixture[str]) -> None:
    body = (PUSH / "emulator_identify.json").read_bytes()
    assert post(fake, body) == ("", 204, {})
    [row] = fake.rows["personas-test.personas_marketing.identifies"]
    assert row["id"] == "c1" and row["a"] is True
    line = request_line(capsys)
    assert line["severity"] == "INFO" and line["outcome"] == "written" and line["rows"] == 1
    assert line["pubsub_message_id"] == "1"
    assert line["subscription"] == "projects/cap-proj/subscriptions/capsub"
    assert "delivery_attempt" not in line  # the emulator sends none


def test_delivery_attempt_is_in_the_request_log_line(fake: FakeBigQuery, capsys: pytest.CaptureFixture[str]) -> None:
    assert post(fake, (PUSH / "cloud_dead_letter_attempt.json").read_bytes())[1] == 204
    line = request_line(capsys)
    assert (line["delivery_attempt"], line["pubsub_message_id"]) == (3, "13417628309401281")
    assert line["subscription"] == CLOUD_SUBSCRIPTION
    assert fake.rows["personas-test.personas_marketing.audience_entered"][0]["id"] == "t-9"


@pytest.mark.parametrize("name", ["cloud_attributes_only.json", "emulator_attributes_only.json"])
def test_message_without_data_is_recorded_with_its_subscription_and_acked(
    fake: FakeBigQuery, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    body = (PUSH / name).read_bytes()
    assert post(fake, body) == ("", 204, {})
    [row] = fake.rows[REJECTED]
    assert row["error_class"] == "invalid_envelope"
    assert json.loads(row["errors"]) == {
        "message.data": ["Missing or empty: a message with only attributes carries no call."]
    }
    sent = json.loads(body)
    assert row["subscription"] == sent["subscription"]
    assert row["message_id"] == sent["message"]["messageId"]
    assert json.loads(row["attributes"]) == sent["message"]["attributes"]
    assert row["data"] == "" and row["call_index"] is None
    assert row["publish_time"].startswith(sent["message"]["publishTime"][:19])
    line = request_line(capsys)
    assert (line["severity"], line["outcome"], line["error_classes"]) == ("WARNING", "rejected", ["invalid_envelope"])


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"\xff\xfe", b"[1, 2]", b'{"subscription": "projects/p/subscriptions/s"}', b'{"message": 7}'],
)
def test_body_that_is_not_a_push_is_recorded_whole_and_acked(fake: FakeBigQuery, body: bytes) -> None:
    assert post(fake, body)[1] == 204
    [row] = fake.rows[REJECTED]
    assert row["error_class"] == "invalid_push"
    assert row["message_id"].startswith(SUBSTITUTE_ID_PREFIX)
    assert row["publish_time"] == "2026-11-29T00:00:01.000000Z"  # the receive time: there is no other
    assert row["data"] in (body.decode("utf-8", "replace"), "//4=")  # text, else base64
    if b"subscription" in body:
        assert row["subscription"] == "projects/p/subscriptions/s"


def test_redelivered_body_without_message_id_gets_the_same_insert_ids(fake: FakeBigQuery) -> None:
    seen: list[list[str]] = []
    original = fake.insert_rows_json

    def spy(ref: Any, rows: list[dict[str, Any]], row_ids: list[str], **kw: Any) -> list[Any]:
        seen.append(list(row_ids))
        return original(ref, rows, row_ids, **kw)

    fake.insert_rows_json = spy  # type: ignore[method-assign]
    message = {"data": "eyJ0eXBlIjogInBhZ2UifQ==", "publishTime": "2026-11-28T10:00:00Z"}  # {"type": "page"}
    for attempt in (1, 2):
        body = json.dumps({"message": message, "subscription": "s", "deliveryAttempt": attempt}).encode()
        assert post(fake, body)[1] == 204
    assert seen[0] == seen[1] and seen[0][0].startswith(SUBSTITUTE_ID_PREFIX)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
def test_anything_but_post_is_405_and_not_recorded(fake: FakeBigQuery, method: str) -> None:
    body = (PUSH / "emulator_identify.json").read_bytes()
    assert post(fake, body, method) == ("use POST\n", 405, {"Allow": "POST"})
    assert fake.insert_calls == 0 and fake.rows == {}


def test_transient_failure_is_500_for_a_redelivery(fake: FakeBigQuery, capsys: pytest.CaptureFixture[str]) -> None:
    fake.on_insert = lambda ref, rows: [{"index": 0, "errors": [{"reason": "backendError", "message": "x"}]}]
    status = post(fake, b"not json", settings=replace(SETTINGS, ingest_deadline_seconds=1))[1]
    assert status == 500
    line = request_line(capsys)
    assert (line["severity"], line["outcome"], line["status"]) == ("WARNING", "retry", 500)
    assert "TransientError" in line["message"]


def test_unexpected_exception_is_500_with_its_traceback_in_one_line(
    fake: FakeBigQuery, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> Warehouse:
        raise RuntimeError("bug")

    body = (PUSH / "cloud_dead_letter_attempt.json").read_bytes()
    assert app.handle_push("POST", body, broken, SETTINGS)[1] == 500
    line = request_line(capsys)
    assert line["severity"] == "ERROR" and line["delivery_attempt"] == 3
    assert line["stack_trace"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: bug" in line["stack_trace"]


def test_notes_of_fallbacks_are_logged(fake: FakeBigQuery, capsys: pytest.CaptureFixture[str]) -> None:
    call = b'{"type": "identify", "userId": "u1", "messageId": "n1"}'
    body = json.dumps({"message": {"data": base64.b64encode(call).decode(), "messageId": "9"}}).encode()
    assert post(fake, body)[1] == 204
    assert fake.rows[IDENTIFIES][0]["received_at"] == "2026-11-29T00:00:01.000000Z"
    line = request_line(capsys)
    assert line["severity"] == "WARNING"
    assert line["notes"] == {"message.publishTime": ["Missing; the receive time was used."]}
