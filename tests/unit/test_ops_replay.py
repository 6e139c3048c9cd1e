"""infra.ops.replay over in-memory fakes: idempotence, truncated data refused, dry run changes nothing,
a batch call replayed alone, dead letters acked only after their republish."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tqdm import tqdm

import personas_warehouse.ingest as ingest_module
from infra.ops import common, replay
from infra.ops.replay import Filters, replay_dead_letters, replay_payload, replay_rejected
from personas_warehouse.bigquery import Warehouse
from personas_warehouse.ingest import ingest
from personas_warehouse.messages import PubSubMessage
from personas_warehouse.settings import Settings, SpaceConfig
from personas_warehouse.shaping import Fitted
from tests.fakes import StrictFakeBigQuery
from tests.unit._ops_fakes import T0, FakePublisher, FakeReader, FakeSubscriber

TOPIC = "projects/personas-test/topics/personas-calls"
SUB = "projects/personas-test/subscriptions/dl"
T0_TEXT = "2026-11-28T12:00:00Z"


def test_rejected_calls_are_republished_once_with_replay_of_and_their_space() -> None:
    reader, publisher = FakeReader(), FakePublisher()
    reader.reject("m1", 0, "schema_violation", "mkt", attributes='{"space": "mkt", "x": "1"}', data='{"a":1}')

    first = replay_rejected(reader, publisher, TOPIC, Filters())

    assert [(t, d, a) for t, d, a in publisher.published] == [
        (TOPIC, b'{"a":1}', {"space": "mkt", "x": "1", "replay_of": "m1", "original_publish_time": T0_TEXT})
    ]
    [record] = reader.ops["replays"]
    assert record["original_message_id"] == "m1" and record["call_index"] == 0
    assert (record["new_message_id"], record["source"], record["outcome"]) == ("new-1", "rejected", "published")
    assert (first.exit_status, len(first.published)) == (0, 1)

    second = replay_rejected(reader, publisher, TOPIC, Filters())
    assert len(publisher.published) == 1, "a replayed call must not be replayed again"
    assert (len(second.published), second.already) == (0, 1)
    assert len(reader.ops["replays"]) == 1


def test_a_failed_publish_is_recorded_and_retried_next_time() -> None:
    reader = FakeReader()
    reader.reject("m1", 0, "schema_violation", "mkt")
    failed = replay_rejected(reader, FakePublisher(fail=lambda data: True), TOPIC, Filters())
    assert failed.exit_status == 1 and reader.ops["replays"][0]["outcome"] == "publish_failed"
    assert "503" in reader.ops["replays"][0]["error"]

    again = replay_rejected(reader, publisher := FakePublisher(), TOPIC, Filters())
    assert len(again.published) == 1 and len(publisher.published) == 1


def test_truncated_data_is_refused_and_never_published() -> None:
    reader, publisher = FakeReader(), FakePublisher()
    reader.reject("m1", None, "oversized", "mkt", data='{"type":"identify","traits":{"big":"xxxx', data_truncated=True)
    reader.reject("m2", None, "bad_base64", None, data="%%%")

    summary = replay_rejected(reader, publisher, TOPIC, Filters())

    assert publisher.published == [] and "replays" not in reader.created
    assert {c.message_id for c in summary.refused} == {"m1", "m2"}
    assert "truncated" in next(c.refusal for c in summary.refused if c.message_id == "m1")
    assert summary.exit_status == 1


def test_dry_run_publishes_and_records_nothing() -> None:
    reader, publisher = FakeReader(), FakePublisher()
    reader.reject("m1", 0, "schema_violation", "mkt")
    summary = replay_rejected(reader, publisher, TOPIC, Filters(), dry_run=True)
    assert publisher.published == [] and "replays" not in reader.ops and reader.created == []
    assert [c.message_id for c in summary.would] == ["m1"]
    assert "would replay 1" in summary.line()


def test_duplicate_rejection_rows_are_replayed_once() -> None:
    reader, publisher = FakeReader(), FakePublisher()
    reader.reject("m1", 0, "schema_violation", "mkt")
    reader.reject("m1", 0, "schema_violation", "mkt")  # the message was delivered twice
    replay_rejected(reader, publisher, TOPIC, Filters())
    assert len(publisher.published) == 1


def test_filters_reach_the_query_as_parameters() -> None:
    reader, publisher = FakeReader(), FakePublisher()
    reader.reject("m1", 0, "schema_violation", "mkt")
    reader.reject("m2", 0, "unsafe_space", "mkt")
    reader.reject("m3", 0, "schema_violation", "sales")
    reader.reject("m4", 0, "schema_violation", "mkt", publish_time=T0 - timedelta(days=2))

    filters = Filters(space="mkt", error_class="schema_violation", start=T0 - timedelta(hours=1), end=T0 + timedelta(1))
    replay_rejected(reader, publisher, TOPIC, filters)
    assert [a["replay_of"] for _, _, a in publisher.published] == ["m1"]
    query = next(q for q in reader.queries if q.kind == "rejected_to_replay")
    assert "mkt" not in query.sql and "schema_violation" not in query.sql

    replay_rejected(reader, publisher, TOPIC, Filters(message_ids=("m3",)))
    assert [a["replay_of"] for _, _, a in publisher.published] == ["m1", "m3"]


def test_replay_payload_publishes_what_ingest_stored_and_cuts_a_call_out_of_an_older_whole_envelope() -> None:
    stored = '{"batch":[{"messageId":"b"}],"sentAt":"2026-11-01T12:00:09Z","context":{"library":"x"}}'
    assert replay_payload(stored, 1) == stored.encode(), "a call stored alone in its envelope goes out as stored"
    whole = {"context": {"library": "x"}, "batch": [{"messageId": "a"}, {"messageId": "b"}, {"messageId": "c"}]}
    assert json.loads(replay_payload(json.dumps(whole), 1)) == {
        "context": {"library": "x"},
        "batch": [whole["batch"][1]],
    }
    assert replay_payload('{"messageId": "a"}', 0) == b'{"messageId": "a"}'
    assert replay_payload("not json", None) == b"not json"


def test_replay_of_a_replay_keeps_the_first_originals_publish_time() -> None:
    first = replay.replay_attributes({"space": "mkt"}, "m1", T0)
    assert first == {"space": "mkt", "replay_of": "m1", "original_publish_time": T0_TEXT}
    again = replay.replay_attributes(first, "new-1", T0 + timedelta(days=2))
    assert again == {"space": "mkt", "replay_of": "new-1", "original_publish_time": T0_TEXT}


# -- a replay lands where the original delivery would have -------------------------------------------------

ENVELOPE_SETTINGS = Settings(ingest_deadline_seconds=30, spaces={"marketing": SpaceConfig(space_ids=("spa_mkt",))})
ORIGINAL_PUBLISHED = datetime(2026, 11, 1, 12, 0, 30, tzinfo=UTC)


def _pubsub(data: bytes, message_id: str, published: datetime, attributes: dict[str, str]) -> PubSubMessage:
    return PubSubMessage(message_id, base64.b64encode(data).decode(), published, attributes, "sub")


def _refuse_row_once(monkeypatch: pytest.MonkeyPatch, row_id: str) -> None:
    """BigQuery refuses one row of the first delivery (a wrong-typed value forced into it after fitting: what
    a column re-created with another type between fitting and writing gives), and nothing afterwards."""
    real = ingest_module.fit_rows

    def fit_rows(*args: Any) -> Fitted:
        fitted = real(*args)
        for row in fitted.rows:
            if row["id"] == row_id:
                row["plan_score"] = "not a number"
        monkeypatch.setattr(ingest_module, "fit_rows", real)
        return fitted

    monkeypatch.setattr(ingest_module, "fit_rows", fit_rows)


def _rows(fake: StrictFakeBigQuery, dataset: str, table: str) -> dict[str, dict[str, Any]]:
    return {
        r["id"]: {k: v for k, v in r.items() if k != "loaded_at"}
        for r in fake.rows.get(f"{fake.project}.{dataset}.{table}", [])
    }


def test_a_refused_call_of_a_batch_replays_from_its_stored_row_to_what_the_original_would_have_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """From the rejected_messages row exactly as ingest stores it: the call is routed by the envelope's
    context.personas.space_id (no `space` attribute), and has no timestamp of its own, so its event time
    comes from the original's publish time and the envelope's sentAt. The replay must land in the same
    dataset with the same received_at and timestamp as the original delivery would have written."""
    calls = [
        {
            "type": "identify",
            "userId": "u1",
            "messageId": "a",
            "originalTimestamp": "2026-11-01T11:59:50Z",
            "traits": {"plan_score": 1},
        },
        {
            "type": "identify",
            "userId": "u2",
            "messageId": "b",
            "originalTimestamp": "2026-11-01T11:59:55Z",
            "traits": {"plan_score": 2},
        },
    ]
    envelope = {"sentAt": "2026-11-01T12:00:00Z", "context": {"personas": {"space_id": "spa_mkt"}}, "batch": calls}
    data = json.dumps(envelope).encode()
    original = _pubsub(data, "orig-1", ORIGINAL_PUBLISHED, {})

    # What the original delivery writes when nothing goes wrong (the reference).
    clean = StrictFakeBigQuery()
    ingest(original, Warehouse(clean, sleep=lambda _: None), ENVELOPE_SETTINGS)  # type: ignore[arg-type]
    expected = _rows(clean, "personas_marketing", "identifies")
    assert set(expected) == {"a", "b"}

    # The original delivery with call 1's row refused by BigQuery: a row_refused rejection of call 1.
    fake = StrictFakeBigQuery()
    warehouse = Warehouse(fake, sleep=lambda _: None)  # type: ignore[arg-type]
    _refuse_row_once(monkeypatch, "b")
    outcome = ingest(original, warehouse, ENVELOPE_SETTINGS)
    assert [(r.error_class, r.call_index) for r in outcome.rejections] == [("row_refused", 1)]
    [stored] = fake.rows[f"{fake.project}.personas__ops.rejected_messages"]

    # Replay that row as BigQuery returns it (TIMESTAMP columns come back as datetimes).
    reader, publisher = FakeReader(project=fake.project), FakePublisher()
    row = {**stored, "publish_time": datetime.fromisoformat(stored["publish_time"])}
    reader.ops["rejected_messages"] = [row]
    summary = replay_rejected(reader, publisher, TOPIC, Filters())
    assert len(summary.published) == 1
    [(_, republished, attributes)] = publisher.published
    assert attributes == {"replay_of": "orig-1", "original_publish_time": "2026-11-01T12:00:30Z"}

    # Pub/Sub delivers the replay days later, with a publish time of its own.
    ingest(
        _pubsub(republished, "new-1", ORIGINAL_PUBLISHED + timedelta(days=3), attributes), warehouse, ENVELOPE_SETTINGS
    )

    assert _rows(fake, "personas_marketing", "identifies") == expected
    assert "personas-test.personas_default.identifies" not in fake.rows, "routed by the envelope, not the default"
    landed = expected["b"]
    assert (landed["received_at"], landed["timestamp"]) == (
        "2026-11-01T12:00:30.000000Z",
        "2026-11-01T12:00:25.000000Z",
    )


def test_dead_letters_are_acked_only_after_a_successful_republish() -> None:
    reader = FakeReader()
    sub = FakeSubscriber(
        [
            FakeSubscriber.message("d1", b'{"ok":1}', space="mkt", CloudPubSubDeadLetterSourceDeliveryCount="5"),
            FakeSubscriber.message("d2", b"fail", space="mkt"),
            FakeSubscriber.message("d3", b'{"ok":3}', space="sales"),
        ]
    )
    publisher = FakePublisher(fail=lambda data: data == b"fail")
    bars: list[tqdm[Any]] = []

    def progress(total: int | None) -> tqdm[Any]:
        bars.append(tqdm(total=total, file=io.StringIO()))  # a real bar: an unknown total must work
        return bars[-1]

    summary = replay_dead_letters(reader, publisher, TOPIC, sub, SUB, Filters(space="mkt"), progress=progress)

    attributes = {"space": "mkt", "replay_of": "d1", "original_publish_time": T0_TEXT}
    assert [(d, a) for _, d, a in publisher.published] == [(b'{"ok":1}', attributes)]
    assert sub.acked == ["d1"], "only the republished message is acked"
    assert set(sub.messages) == {"d2", "d3"} and not sub.leased, "the others are handed back"
    assert [r["outcome"] for r in reader.ops["replays"]] == ["published", "publish_failed"]
    assert summary.exit_status == 1
    assert bars[0].n == 2


def test_a_dead_letter_replayed_before_is_acked_without_republishing() -> None:
    """A run stopped after publishing and recording, before acking: the next run only acks."""
    reader = FakeReader()
    reader.ops["replays"] = [
        {"original_message_id": "d1", "call_index": None, "source": "dead_letter", "outcome": "published"}
    ]
    sub = FakeSubscriber([FakeSubscriber.message("d1")])
    publisher = FakePublisher()
    summary = replay_dead_letters(reader, publisher, TOPIC, sub, SUB, Filters())
    assert publisher.published == [] and sub.acked == ["d1"] and summary.already == 1


def test_dead_letter_dry_run_consumes_nothing() -> None:
    reader = FakeReader()
    sub = FakeSubscriber([FakeSubscriber.message(f"d{i}") for i in range(5)], batch=2)
    summary = replay_dead_letters(reader, None, TOPIC, sub, SUB, Filters(), dry_run=True)
    assert len(summary.would) == 5
    assert len(sub.messages) == 5 and sub.acked == [] and not sub.leased
    assert reader.created == []


def test_error_class_filter_leaves_dead_letters_alone() -> None:
    sub = FakeSubscriber([FakeSubscriber.message("d1")])
    summary = replay_dead_letters(FakeReader(), FakePublisher(), TOPIC, sub, SUB, Filters(error_class="x"))
    assert summary.published == [] and set(sub.messages) == {"d1"}


def test_main_dry_run_prints_and_exit_codes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    reader = FakeReader()
    reader.reject("m1", 0, "schema_violation", "mkt")
    reader.reject("m2", None, "oversized", "mkt", data_truncated=True)
    monkeypatch.setattr(common, "make_warehouse", lambda project, ops: reader)

    def no_publisher() -> Any:
        raise AssertionError("a dry run must not make a publisher")

    monkeypatch.setattr(common, "make_publisher", no_publisher)
    assert replay.main(["--topic", "personas-calls", "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "would replay rejected m1 call 0" in out and "REFUSED rejected m2" in out and "truncated" in out

    publisher = FakePublisher()
    monkeypatch.setattr(common, "make_publisher", lambda: publisher)
    assert replay.main(["--topic", "personas-calls", "--message-id", "m1"]) == 0
    [(topic, _, attributes)] = publisher.published
    assert topic.endswith("/topics/personas-calls") and attributes["replay_of"] == "m1"


def test_space_filter_matches_a_call_refused_before_routing_by_its_space_attribute() -> None:
    """A schema violation has no `space` column; its `space` attribute says where it was going."""
    reader, publisher = FakeReader(), FakePublisher()
    reader.reject("m1", 0, "schema_violation", "mkt", space_column=None)
    reader.reject("m2", 0, "schema_violation", "sales", space_column=None)
    replay_rejected(reader, publisher, TOPIC, Filters(space="mkt"))
    assert [a for _, _, a in publisher.published] == [
        {"space": "mkt", "replay_of": "m1", "original_publish_time": T0_TEXT}
    ]
    assert reader.ops["replays"][0]["space"] == "mkt"


def test_a_replay_refused_again_is_not_replayed_unless_asked() -> None:
    """Without this, every run would replay the previous run's replay of an unfixed cause."""
    reader, publisher = FakeReader(), FakePublisher()
    reader.reject("m1", 0, "schema_violation", "mkt")
    replay_rejected(reader, publisher, TOPIC, Filters())
    reader.reject("new-1", 0, "schema_violation", "mkt", attributes='{"space": "mkt", "replay_of": "m1"}')

    second = replay_rejected(reader, publisher, TOPIC, Filters())
    assert (len(second.published), second.already, second.refused_again) == (0, 1, 1)
    assert len(publisher.published) == 1

    third = replay_rejected(reader, publisher, TOPIC, Filters(include_replays=True))
    assert len(third.published) == 1 and publisher.published[-1][2]["replay_of"] == "new-1"
    fourth = replay_rejected(reader, publisher, TOPIC, Filters(include_replays=True))
    assert len(fourth.published) == 0 and fourth.already == 2
