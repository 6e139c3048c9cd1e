"""identities end to end on the local stack: calls published to Pub/Sub, pushed to the ingest function,
synced by the sync function, read back from `identities` with the real client.

The payloads (tests/fixtures/calls) follow Segment's docs (segmentio/segment-docs): the Spec's
context.device (src/connections/spec/common.md) on a Personas identify; an Engage track call with the
email in context.traits (src/engage/using-engage-data.md) from an Android device whose ad tracking is
off; the externalIds example of src/unify/identity-resolution/externalids.md with an accounts-level entry;
and externalIds entries of every bad kind. The SQL of docs/identities.md is run as written."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.cloud import bigquery

from infra.local.stack import Stack
from personas_warehouse.bigquery import Warehouse
from personas_warehouse.derived import identities as module
from personas_warehouse.ingest import ingest
from personas_warehouse.messages import PubSubMessage
from personas_warehouse.settings import Settings
from tests import identities_oracle as oracle
from tests.integration.conftest import WIDE_OPEN, query, wait_rows
from tests.integration.test_sync_e2e import sync
from tests.unit._support import fixture

pytestmark = pytest.mark.integration
P = "personas-local"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "identities.md"
FIXTURES = [
    "identify_mobile_ids.json",
    "track_mobile_ids_android.json",
    "track_external_ids.json",
    "identify_bad_external_ids.json",
]


def identities(bq: bigquery.Client, space: str) -> dict[oracle.Key, tuple[datetime, datetime, int]]:
    rows = query(bq, f"SELECT * FROM `{P}.personas_{space}.identities`")
    found = {
        (r["user_id"], r["anonymous_id"], r["type"], r["value"], r["collection"], r["encoding"]): (
            r["first_seen_at"],
            r["last_seen_at"],
            r["calls"],
        )
        for r in rows
    }
    assert len(found) == len(rows), "one row per profile and identifier"
    return found


def at(call: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(call["timestamp"].replace("Z", "+00:00"))


def test_segment_payloads_end_to_end(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str], space: str
) -> None:
    calls = [fixture(name) for name in FIXTURES]
    for call in [*calls, calls[0]]:  # the iOS identify twice: a redelivery
        publish(call, space=space)
    wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.identifies`", 3)
    wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.tracks`", 2)

    status, summary = sync(stack, spaces=[space])
    result = summary["spaces"][0]["tables"]["identities"]
    assert (status, result["status"], result["mode"]) == (200, "success", "full"), summary
    assert json.loads(result["report"]) == {module.INVALID_ENTRIES: 6, module.TOO_LONG: 1}

    got = identities(bq, space)
    assert got == oracle.as_rows(oracle.identities([(c, at(c)) for c in [*calls, calls[0]]]))
    ios, android, external = fixture(FIXTURES[0]), fixture(FIXTURES[1]), fixture(FIXTURES[2])
    device, droid = ios["context"]["device"], android["context"]["device"]
    assert {(k[0], k[1], k[2], k[3], v[2]) for k, v in got.items() if k[0] in ("u-1001", None)} == {
        ("u-1001", None, "user_id", "u-1001", 1),  # the redelivered copy is not counted
        ("u-1001", None, "anonymous_id", "anon-77", 1),
        ("u-1001", None, "email", "ada@example.com", 1),
        ("u-1001", None, "ios.id", device["id"], 1),
        ("u-1001", None, "ios.idfa", device["advertisingId"], 1),
        ("u-1001", None, "ios.push_token", device["token"], 1),
        (None, "anon-88", "anonymous_id", "anon-88", 1),
        (None, "anon-88", "email", "bo@example.com", 1),
        (None, "anon-88", "android.id", droid["id"], 1),  # no android.idfa: adTrackingEnabled is false
        (None, "anon-88", "android.push_token", droid["token"], 1),
    }
    assert ("use_123", None, "group_id", "acme", "accounts", "none") in got
    assert ("u-bad", None, "crm_id", "c-1", "users", "none") in got
    assert external["context"]["externalIds"][0]["id"] == "123-456-7890"

    # The values stay in the calls' own columns, as before.
    [row] = query(bq, f"SELECT * FROM `{P}.personas_{space}.identifies_view` WHERE user_id = 'u-1001'")
    assert (row["context_device_advertising_id"], row["context_device_ad_tracking_enabled"]) == (
        device["advertisingId"],
        True,
    )
    assert (row["context_device_type"], row["context_device_token"]) == ("ios", device["token"])
    [bad] = query(bq, f"SELECT context_external_ids FROM `{P}.personas_{space}.identifies` WHERE user_id = 'u-bad'")
    assert json.loads(bad["context_external_ids"]) == fixture(FIXTURES[3])["context"]["externalIds"]

    # Runs that re-read the same rows (the overlap), a late copy, and a rebuild change nothing.
    _, again = sync(stack, spaces=[space])
    assert again["spaces"][0]["tables"]["identities"]["mode"] == "incremental" and identities(bq, space) == got
    publish(calls[1], space=space)
    wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.tracks`", 3)
    _, late = sync(stack, spaces=[space])
    assert late["spaces"][0]["tables"]["identities"]["rows_inserted"] == 0 and identities(bq, space) == got
    _, full = sync(stack, spaces=[space], full=True)
    assert full["spaces"][0]["tables"]["identities"]["mode"] == "full" and identities(bq, space) == got


def test_bad_input_never_fails_a_run(stack: Stack, bq: bigquery.Client, space: str) -> None:
    """Shapes and sizes no Segment library sends, written in process (the stack's ingest refuses messages
    over 20,000 bytes; a call with thousands of entries is bigger)."""
    thousands = [{"id": f"e{i}", "type": "crm_id"} for i in range(5_000)]
    calls: list[dict[str, Any]] = [
        {"userId": "u1", "context": {"externalIds": [{"id": "first", "type": "crm_id"}]}},  # the column is text
        {"userId": "u1", "context": {"externalIds": thousands}},
        {"userId": "u2", "context": {"externalIds": "not a list"}},
        {"userId": "u2", "context": {"externalIds": {"id": "x", "type": "crm_id"}}},  # an object
        {"userId": "u2", "context": {"externalIds": 12345}},  # stored as the text 12345
        {"userId": "u3", "traits": {"email": "e" * 3_000 + "@example.com"}},
        {"userId": "u3", "context": {"device": {"type": "ios", "id": "D" * 2_000, "token": "t3"}}},
        {"userId": "u3", "context": {"externalIds": [{"id": "ok", "type": "T" * 1_100}, {"id": 7, "type": "n"}]}},
        {"anonymousId": "a4", "context": {"externalIds": [None, [], "x", {"id": None, "type": "t"}, {}]}},
    ]
    settings = Settings(
        space_policy=WIDE_OPEN, bigquery_emulator_host=stack.config.bigquery_url, project=stack.config.project
    )
    warehouse = Warehouse(bq)
    sent = []
    for i, body in enumerate(calls):
        call = {"type": "identify", "messageId": f"bad{i}", "timestamp": f"2026-11-01T10:0{i}:00Z", **body}
        data = base64.b64encode(json.dumps(call).encode()).decode()
        ingest(PubSubMessage(f"{space}-{i}", data, datetime.now(UTC), {"space": space}), warehouse, settings)
        sent.append(call)

    status, summary = sync(stack, spaces=[space])
    result = summary["spaces"][0]["tables"]["identities"]
    assert (status, result["status"]) == (200, "success"), summary
    expected = oracle.left_out(sent)
    assert json.loads(result["report"]) == dict(expected)
    assert expected == {
        module.OVER_LIMIT: 4_900,
        module.NOT_A_LIST: 3,
        module.TOO_LONG: 3,
        module.INVALID_ENTRIES: 6,
    }
    got = identities(bq, space)
    assert got == oracle.as_rows(oracle.identities([(c, at(c)) for c in sent]))
    crm = sorted(k[3] for k in got if k[0] == "u1" and k[2] == "crm_id")
    assert crm == sorted(["first", *(f"e{i}" for i in range(100))])  # the first 100 entries of a call
    assert ("u3", None, "ios.push_token", "t3", "users", "none") in got
    # A message row per call, naming its profile's id (what forget deletes by: tables.json).
    state = f"`{P}.personas_{space}.identities_state`"
    messages = query(bq, f"SELECT user_id, anonymous_id, _profile FROM {state} WHERE _message IS NOT NULL")
    assert sorted((r["user_id"], r["anonymous_id"], r["_profile"]) for r in messages if r["user_id"]) == [
        (c["userId"], None, f"u:{c['userId']}") for c in sent if "userId" in c
    ]
    assert [(r["anonymous_id"], r["_profile"]) for r in messages if not r["user_id"]] == [("a4", "a:a4")]


def docs_queries() -> dict[str, str]:
    """The SQL blocks of docs/identities.md, by their first line's comment."""
    blocks = re.findall(r"```sql\n(.*?)```", DOCS.read_text(), re.S)
    return {block.split("\n", 1)[0].removeprefix("-- "): block for block in blocks}


def test_the_docs_questions(stack: Stack, bq: bigquery.Client, publish: Callable[..., str], space: str) -> None:
    def call(kind: str, n: int, minute: int, **fields: Any) -> dict[str, Any]:
        body = {"type": kind, "messageId": f"q{n}", "timestamp": f"2026-11-01T10:{minute:02d}:00Z", **fields}
        return body | ({"event": "Audience Entered"} if kind == "track" else {})

    iphone = {"type": "ios", "id": "D1", "advertisingId": "I1", "adTrackingEnabled": True}
    for c in [
        call("track", 1, 0, anonymousId="a1", context={"device": iphone}),  # before login
        call("identify", 2, 5, userId="u1", anonymousId="a1", traits={"email": "e1@example.com"}),  # login
        call(
            "identify",
            3,
            10,
            userId="u2",
            traits={"email": "e1@example.com"},
            context={"device": {"type": "android", "id": "D2"}},
        ),
        call("identify", 4, 15, userId="u3", context={"device": iphone | {"advertisingId": "I3"}}),
        call(
            "identify",
            5,
            20,
            userId="u4",
            context={"device": {"type": "ios", "advertisingId": "I4", "adTrackingEnabled": False}},
        ),
        call(
            "identify",
            6,
            25,
            userId="u5",
            context={"device": {"type": "ios", "id": "00000000-0000-0000-0000-000000000000"}},
        ),
        call(
            "identify",
            7,
            30,
            userId="u6",
            context={"device": {"type": "ios", "id": "00000000-0000-0000-0000-000000000000"}},
        ),
    ]:
        publish(c, space=space)
    wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.identifies`", 6)
    wait_rows(bq, f"SELECT id FROM `{P}.personas_{space}.tracks`", 1)
    assert sync(stack, spaces=[space])[1]["spaces"][0]["tables"]["identities"]["status"] == "success"

    sqls = {
        k: v.replace("my-project.personas_default", f"{P}.personas_{space}").replace("my-project.", f"{P}.")
        for k, v in docs_queries().items()
    }
    mine = query(bq, sqls["every identifier of a user"], user_id="u1")
    assert [(r["type"], r["value"], r["via"]) for r in mine] == [
        ("anonymous_id", "a1", "before login, as a1"),
        ("anonymous_id", "a1", "own"),
        ("email", "e1@example.com", "own"),
        ("ios.id", "D1", "before login, as a1"),
        ("ios.idfa", "I1", "before login, as a1"),
        ("user_id", "u1", "own"),
    ]
    shared = query(bq, sqls["users who share a device or an email"])
    assert [(r["type"], r["value"], r["users"]) for r in shared] == [
        ("email", "e1@example.com", ["u1", "u2"]),
        ("ios.id", "D1", ["u1", "u3"]),  # u1's before login; the all-zero id of u5 and u6 is left out
    ]
    reachable = query(bq, sqls["users reachable on iOS advertising ids"])
    assert [(r["user_id"], r["idfa"]) for r in reachable] == [("u1", "I1"), ("u3", "I3")]  # not u4: tracking off
    left_out = query(bq, sqls["what identities left out"])
    assert space in {r["space"] for r in left_out}
