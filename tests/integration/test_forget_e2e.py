"""Forget a user on the local stack: publish identify, track and discard-producing calls (and a refused
one) for a user and for another, run `python -m infra.ops.forget`, find no row of the user in any table of
the space nor in the operations dataset, publish the user's calls again, still none, while the other
user's rows are untouched. (bqemulator has no streaming buffer: the strict fake's unit tests cover it.)"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from google.cloud import bigquery

from infra.local.stack import Stack
from infra.ops import forget as command
from tests.integration.conftest import FORGET_ENV, identify, sync_cli, wait_rows

pytestmark = pytest.mark.integration
P = "personas-local"
OPS = "personas__ops"


def calls(user: str, tag: str) -> list[dict[str, Any]]:
    """Every kind of row a user's calls make: identifies, tracks and an event table, a discard ("high"
    into the INT64 column `score`), and a rejection whose stored data holds the user id."""
    return [
        identify(user, f"{tag}-i1", "2026-12-01T10:00:00Z", score=1),
        identify(user, f"{tag}-i2", "2026-12-01T10:01:00Z", score="high"),
        {"type": "track", "userId": user, "messageId": f"{tag}-t1", "event": "Audience Entered", "properties": {}},
        {"type": "identify", "userId": user, "messageId": f"{tag}-bad", "timestamp": "not a time"},
    ]


def holding(bq: bigquery.Client, dataset: str, needles: list[str]) -> dict[str, int]:
    """Rows of every table (not view) of a dataset holding one of `needles` in any column, read whole."""
    found: dict[str, int] = {}
    for item in bq.list_tables(f"{P}.{dataset}"):
        if item.table_type != "TABLE":
            continue
        n = 0
        for row in bq.list_rows(f"{P}.{dataset}.{item.table_id}"):
            cells = [str(v) for v in row.values() if v is not None]
            n += any(needle == cell or f'"{needle}"' in cell for cell in cells for needle in needles)
        if n:
            found[item.table_id] = n
    return found


def test_forget_a_user_everywhere_and_keep_them_out(
    stack: Stack,
    bq: bigquery.Client,
    publish: Callable[..., str],
    space: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alice, bob = f"alice-{space}", f"bob-{space}"
    ds = f"`{P}.personas_{space}"
    first, rest = calls(alice, f"{space}-a"), calls(bob, f"{space}-b")
    for call in (first[0], rest[0]):  # `score` is made INT64 before "high" arrives (Pub/Sub keeps no order)
        publish(call, space=space)
    wait_rows(bq, f"SELECT id FROM {ds}.identifies`", 2)
    for call in [*first[1:], *rest[1:]]:
        publish(call, space=space)
    wait_rows(bq, f"SELECT id FROM {ds}.identifies`", 4)
    wait_rows(bq, f"SELECT id FROM {ds}.audience_entered`", 2)
    wait_rows(bq, f"SELECT row_id FROM {ds}.discards`", 2)
    wait_rows(bq, f"SELECT message_id FROM `{P}.{OPS}.rejected_messages` WHERE STRPOS(data, @u) > 0", 1, u=alice)
    sync_cli(stack, space)  # users_state, users_history and its calls get both users
    dataset = f"personas_{space}"
    alice_ids = [alice, *(f"{space}-a-{s}" for s in ("i1", "i2", "t1", "bad"))]
    bob_ids = [bob, *(f"{space}-b-{s}" for s in ("i1", "i2", "t1", "bad"))]
    assert set(holding(bq, dataset, alice_ids)) == {
        "identifies",
        "tracks",
        "audience_entered",
        "discards",
        "users_state",
        "users_history",
        "users_history_calls",
        "identities_state",
    }
    assert holding(bq, OPS, [alice]) == {"rejected_messages": 1}
    bob_before = holding(bq, dataset, bob_ids)

    for key, value in {**stack.config.exports(), **FORGET_ENV}.items():
        monkeypatch.setenv(key, value)
    try:
        _forget_and_check(stack, bq, publish, space, capsys, alice, bob, alice_ids, bob_ids, bob_before)
    finally:  # the stack is shared: tests that ingest in-process without the key must not meet this id
        assert command.main(["--unsuppress", "--user-id", alice, "--project", P]) == 0


def _forget_and_check(
    stack: Stack,
    bq: bigquery.Client,
    publish: Callable[..., str],
    space: str,
    capsys: pytest.CaptureFixture[str],
    alice: str,
    bob: str,
    alice_ids: list[str],
    bob_ids: list[str],
    bob_before: dict[str, int],
) -> None:
    dataset, ds = f"personas_{space}", f"`{P}.personas_{space}"
    code = command.main(["--user-id", alice, "--space", space, "--project", P, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert (report["rows_left"], report["status"]) == (0, "pending")
    deleted = {t: c["deleted"] for t, c in report["tables"][dataset].items() if c["deleted"]}
    assert deleted == {
        "identifies": 2,
        "tracks": 1,
        "audience_entered": 1,
        "discards": 1,
        "users_state": 1,
        "users_history": 1,  # one period: the second call's score was discarded, so it changed nothing
        "users_history_calls": 2,
        "identities_state": 4,  # her user_id row and a message row per stored call (i1, i2, t1; not the refused one)
    }
    assert report["tables"][OPS]["rejected_messages"]["deleted"] == 1

    assert holding(bq, dataset, alice_ids) == {}
    assert holding(bq, OPS, [alice]) == {"forget_pending": 1}  # the id, until the request settles
    assert holding(bq, dataset, bob_ids) == bob_before
    [audit] = [r for r in bq.list_rows(f"{P}.{OPS}.forget_requests") if r["request_id"] == report["request_id"]]
    assert alice not in json.dumps(dict(audit.items()), default=str) and audit["rows_deleted"] == 14

    # Later calls of the forgotten user are acked and stored nowhere; the other user's still land.
    time.sleep(2 * float(FORGET_ENV["FORGET_REFRESH_SECONDS"]))
    for call in calls(alice, f"{space}-again"):
        publish(call, space=space)
    publish(identify(bob, f"{space}-b-after", "2026-12-01T11:00:00Z", score=2), space=space)
    wait_rows(bq, f"SELECT id FROM {ds}.identifies` WHERE id = @m", 1, m=f"{space}-b-after")
    time.sleep(3)  # the emulator pushes about in order; leave time for any straggler of alice's
    again = [alice, *(f"{space}-again-{s}" for s in ("i1", "i2", "t1", "bad"))]
    assert holding(bq, dataset, again) == {}
    assert holding(bq, OPS, [alice]) == {"forget_pending": 1}
    sync_cli(stack, space)
    assert holding(bq, dataset, again) == {}
    # + b-after: its call, stored for users_history, the period its score (2, was 1) starts, and its message
    # row in identities_state.
    grown = ("identifies", "users_history", "users_history_calls", "identities_state")
    assert holding(bq, dataset, bob_ids) == {**bob_before, **{t: bob_before[t] + 1 for t in grown}}
    log = (stack.state_dir / "logs" / "ingest.log").read_text()
    assert '"suppressed":1' in log
