"""The operator commands on the local stack: publish with an ids file, reconcile it (and a window),
replay a rejection (refused again, recorded once), replay a dead letter, and read the status."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.cloud import bigquery, pubsub_v1

from infra import publish
from infra.local.stack import Stack
from infra.ops import reconcile, replay, status
from tests.integration.conftest import sync_cli, wait_rows

pytestmark = pytest.mark.integration
P = "personas-local"


def run(main: Any, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_reconcile_replay_and_status(
    stack: Stack,
    bq: bigquery.Client,
    space: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in stack.config.exports().items():
        monkeypatch.setenv(key, value)
    started = datetime.now(UTC) - timedelta(seconds=5)
    calls = tmp_path / "calls.jsonl"
    calls.write_text(
        "\n".join(
            json.dumps(c)
            for c in [
                {"type": "identify", "userId": "u1", "messageId": f"{space}-i1", "traits": {"plan": "pro"}},
                {"type": "identify", "userId": "u2", "messageId": f"{space}-i2", "traits": {"plan": "free"}},
                {"type": "track", "userId": "u1", "messageId": f"{space}-t1", "event": "Audience Entered"},
                {"type": "identify", "messageId": f"{space}-bad", "traits": {"plan": "x"}},  # no userId: refused
            ]
        )
        + "\n"
    )
    ids = tmp_path / "ids.jsonl"
    argv = [str(calls), "--project", P, "--topic", stack.config.topic, "--attribute", f"space={space}"]
    assert publish.main([*argv, "--ids-file", str(ids)]) == 0
    assert "published 4 messages" in capsys.readouterr().out
    published = [json.loads(line) for line in ids.read_text().splitlines()]
    assert len(published) == 4 and all(p["space"] == space for p in published)
    [bad_id] = [p["pubsub_id"] for p in published if p["call_ids"] == [f"{space}-bad"]]

    ds = f"`{P}.personas_{space}"
    wait_rows(bq, f"SELECT id FROM {ds}.identifies`", 2)
    wait_rows(bq, f"SELECT id FROM {ds}.tracks`", 1)
    rejected_sql = f"SELECT * FROM `{P}.personas__ops.rejected_messages` WHERE message_id = @m"
    wait_rows(bq, rejected_sql, 1, m=bad_id)

    # 1. Reconcile by ids: everything accounted for, the refused call by its class.
    code, out = run(reconcile.main, ["--ids-file", str(ids)], capsys)
    [mine] = out["spaces"]
    assert (code, mine["space"], mine["calls"], mine["rows"], mine["missing"]) == (0, space, 4, 3, 0)
    assert mine["rejected"] == {"schema_violation": 1} and mine["duplicate_rows"] == 0

    # An id never published is missing: exit 1.
    with ids.open("a") as f:
        f.write(publish.ids_line("999999999", [f"{space}-never"], space, started))
    code, out = run(reconcile.main, ["--ids-file", str(ids)], capsys)
    assert (code, out["totals"]["missing"]) == (1, 1)
    assert out["spaces"][0]["missing_ids"] == [{"pubsub_id": "999999999", "call_index": 0, "id": f"{space}-never"}]

    # 2. Replay the rejection without fixing anything: republished with replay_of, refused again, recorded.
    code, out = run(replay.main, ["--topic", stack.config.topic, "--space", space, "--dry-run"], capsys)
    assert (code, out["published"], len(out["would_replay"])) == (0, 0, 1)
    code, out = run(replay.main, ["--topic", stack.config.topic, "--space", space], capsys)
    assert (code, out["published"]) == (0, 1)
    [record] = wait_rows(bq, f"SELECT * FROM `{P}.personas__ops.replays` WHERE original_message_id = @m", 1, m=bad_id)
    assert (record["source"], record["outcome"], record["space"]) == ("rejected", "published", space)
    [again] = wait_rows(bq, rejected_sql, 1, m=record["new_message_id"])
    assert again["error_class"] == "schema_violation"
    [first] = wait_rows(bq, rejected_sql, 1, m=bad_id)
    original_time = first["publish_time"].isoformat().replace("+00:00", "Z")
    assert json.loads(again["attributes"]) == {
        "space": space,
        "replay_of": bad_id,
        "original_publish_time": original_time,
    }

    # A second run replays nothing: the original was replayed, the replay's own rejection is left alone.
    code, out = run(replay.main, ["--topic", stack.config.topic, "--space", space], capsys)
    assert (code, out["published"], out["already_replayed"], out["refused_again"]) == (0, 0, 1, 1)

    # Window mode sees the same calls (the replay is one more rejected message).
    window = ["--from", started.isoformat(), "--to", (datetime.now(UTC) + timedelta(minutes=1)).isoformat()]
    code, out = run(reconcile.main, window, capsys)
    mine = next(s for s in out["spaces"] if s["space"] == space)
    assert (code, mine["rows"], mine["rejected"], mine["missing"]) == (0, 3, {"schema_violation": 2}, 0)

    # 3. Status after a users sync.
    sync_cli(stack, space)
    code, out = run(status.main, [], capsys)
    mine = next(s for s in out["spaces"] if s["space"] == space)
    assert code == 0 and mine["last_status"] == "success" and mine["users_lag_seconds"] is not None
    assert (mine["rows_last_hour"], mine["rows_last_day"]) == (3, 3)
    assert mine["rejections_24h"] == {"schema_violation": 2}
    assert out["dead_letter"]["backlog"] is None


def test_dead_letters_are_counted_and_replayed(
    stack: Stack,
    bq: bigquery.Client,
    space: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The local stack has no dead-letter policy (the emulator push never gives up), so this stands in a
    topic with a pull subscription, as Terraform creates, holding what Pub/Sub would have dead-lettered."""
    for key, value in stack.config.exports().items():
        monkeypatch.setenv(key, value)
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    dl_topic = publisher.topic_path(P, f"dl-{space}")
    dl_sub = subscriber.subscription_path(P, f"dl-{space}-pull")
    publisher.create_topic(name=dl_topic)
    subscriber.create_subscription(request={"name": dl_sub, "topic": dl_topic, "ack_deadline_seconds": 60})
    call = {"type": "identify", "userId": "u9", "messageId": f"{space}-dl", "traits": {"plan": "pro"}}
    original = publisher.publish(dl_topic, json.dumps(call).encode(), space=space).result(timeout=30)

    code, out = run(status.main, ["--dead-letter-subscription", dl_sub], capsys)
    assert out["dead_letter"]["backlog"] == 1 and out["dead_letter"]["by_space"] == {space: 1}

    argv = ["--topic", stack.config.topic, "--space", space, "--dead-letter-subscription", dl_sub]
    code, out = run(replay.main, argv, capsys)
    assert (code, out["published"]) == (0, 1)
    [row] = wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.identifies`", 1)
    assert row["id"] == f"{space}-dl"
    [record] = wait_rows(bq, f"SELECT * FROM `{P}.personas__ops.replays` WHERE original_message_id = @m", 1, m=original)
    assert (record["source"], record["outcome"]) == ("dead_letter", "published")

    time.sleep(1)
    code, out = run(status.main, ["--dead-letter-subscription", dl_sub], capsys)
    assert out["dead_letter"]["backlog"] == 0, "the replayed dead letter was acked"
