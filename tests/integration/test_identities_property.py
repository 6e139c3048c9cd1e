"""Property: identities kept by incremental syncs over random, shuffled, duplicated and late calls (with
external ids, mobile ids and bad input) equals, after every run, the oracle (tests/identities_oracle.py:
the rule, from every stored copy of every call) and, at the end, a full rebuild.

Calls go through the real ingest core and Warehouse adapter in this process (not Pub/Sub, for speed)
into the stack's bqemulator; the sync is the real run_sync, keeping identities only (users has its own
property test). The overlap is longer than the runs are apart, so every run reads again the rows the
runs before it folded; a late call is written with a loaded_at before the previous run's end, as a row
that became visible after that run read its window (the frame's overlap covers it)."""

from __future__ import annotations

import base64
import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from google.cloud import bigquery
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from infra.local.stack import Stack
from personas_warehouse import sync
from personas_warehouse.bigquery import Warehouse
from personas_warehouse.derived import frame
from personas_warehouse.derived.identities import IDENTITIES
from personas_warehouse.ingest import ingest
from personas_warehouse.messages import PubSubMessage
from personas_warehouse.settings import Settings
from tests import identities_oracle as oracle
from tests.integration.conftest import WIDE_OPEN
from tests.integration.test_identities_e2e import identities

pytestmark = pytest.mark.integration
BASE = datetime(2026, 11, 1, tzinfo=UTC)
OVERLAP_SECONDS = 600
LATE = timedelta(seconds=120)  # within the overlap: the frame promises the next run reads such a row
_spaces = itertools.count()

ENTRIES = [
    {"id": "p1", "type": "phone", "collection": "users", "encoding": "none"},
    {"id": "p1", "type": "phone", "collection": "accounts"},
    {"id": "g1", "type": "group_id", "collection": "accounts", "encoding": "none"},
    {"id": 5, "type": "crm_id"},  # a number: not an identifier
    {"type": "crm_id"},
    "not an object",
]
DEVICES = [
    {"type": "ios", "id": "d1", "advertisingId": "i1", "adTrackingEnabled": True, "token": "t1"},
    {"type": "IOS", "id": "d1", "advertisingId": "i2", "adTrackingEnabled": False},
    {"type": "android", "id": "d2", "advertisingId": "i1", "adTrackingEnabled": True},
    {"type": "android", "token": "t2"},
    {"type": "web", "id": "d3"},
]

calls = st.lists(
    st.fixed_dictionaries(
        {
            "profile": st.sampled_from([("u1", None), ("u1", "a1"), ("u2", "a2"), (None, "a1"), (None, "a2")]),
            "kind": st.sampled_from(["identify", "track"]),
            "minute": st.integers(0, 5),
            "email": st.sampled_from([None, "e1@example.com", "e2@example.com"]),
            "device": st.none() | st.sampled_from(DEVICES),
            "external": st.none()
            | st.lists(st.sampled_from(ENTRIES), max_size=3)
            | st.sampled_from(["nope", {"id": "o1", "type": "crm_id"}]),
            "late": st.booleans(),
        }
    ),
    min_size=2,
    max_size=10,
)


def build(n: int, c: dict[str, Any]) -> dict[str, Any]:
    user, anonymous = c["profile"]
    call: dict[str, Any] = {"type": c["kind"], "messageId": f"m{n}"}
    call["timestamp"] = (BASE + timedelta(minutes=c["minute"])).isoformat()
    call |= {"userId": user} if user else {}
    call |= {"anonymousId": anonymous} if anonymous else {}
    context: dict[str, Any] = {}
    if c["email"] and c["kind"] == "identify":
        call["traits"] = {"email": c["email"]}
    elif c["email"]:  # where Engage puts the email on a track call
        context["traits"] = {"email": c["email"]}
    if c["kind"] == "track":
        call["event"] = "Audience Entered"
    if c["device"] is not None:
        context["device"] = c["device"]
    if c["external"] is not None:
        context["externalIds"] = c["external"]
    if context:
        call["context"] = context
    return call


# A call folded in the first run; its copy arrives late (loaded before that run's end, visible after it),
# beside a new call of the same profile with the same identifiers.
LATE_COPY = [
    {
        "profile": ("u1", "a1"),
        "kind": "identify",
        "minute": 3,
        "email": "e1@example.com",
        "device": DEVICES[0],
        "external": ENTRIES[:2],
        "late": False,
    },
    {
        "profile": ("u2", None),
        "kind": "track",
        "minute": 1,
        "email": None,
        "device": None,
        "external": None,
        "late": False,
    },
    {
        "profile": ("u1", None),
        "kind": "identify",
        "minute": 0,
        "email": "e1@example.com",
        "device": DEVICES[0],
        "external": ENTRIES[:1],
        "late": True,
    },
]
# The login call (userId and anonymousId) before the anonymous ones, bad externalIds of every shape first.
LOGIN_FIRST = [
    {
        "profile": ("u1", "a1"),
        "kind": "identify",
        "minute": 5,
        "email": None,
        "device": None,
        "external": "nope",
        "late": False,
    },
    {
        "profile": (None, "a1"),
        "kind": "track",
        "minute": 0,
        "email": "e2@example.com",
        "device": DEVICES[2],
        "external": {"id": "o1", "type": "crm_id"},
        "late": True,
    },
    {
        "profile": (None, "a1"),
        "kind": "identify",
        "minute": 1,
        "email": None,
        "device": DEVICES[3],
        "external": ENTRIES[3:],
        "late": False,
    },
]


class AsSent:
    def shuffle(self, items: list[Any]) -> None:
        pass


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@example(calls=LATE_COPY, duplicates=[0], runs=2, order=AsSent()).via("late copy beside a new call")
@example(calls=LOGIN_FIRST, duplicates=[1, 2], runs=3, order=AsSent()).via("login first, bad input")
@given(
    calls=calls,
    duplicates=st.lists(st.integers(0, 9), max_size=3),
    runs=st.integers(1, 3),
    order=st.randoms(use_true_random=False),
)
def test_incremental_identities_equal_the_oracle_and_a_rebuild(
    stack: Stack, bq: bigquery.Client, calls: list[dict[str, Any]], duplicates: list[int], runs: int, order: Any
) -> None:
    space = f"idprop_{next(_spaces)}_{abs(hash(str(calls))) % 10**6}"
    config = Settings(
        space_policy=WIDE_OPEN,
        bigquery_emulator_host=stack.config.bigquery_url,
        project=stack.config.project,
        sync_overlap_seconds=OVERLAP_SECONDS,
    )
    warehouse = Warehouse(bq)
    built = [(build(n, c), c["late"]) for n, c in enumerate(calls)]
    built += [built[d] for d in duplicates if d < len(built)]  # redeliveries and resends
    order.shuffle(built)

    stored: list[tuple[dict[str, Any], datetime]] = []
    size = -(-len(built) // runs)
    with mock.patch.object(sync, "DERIVED", (IDENTITIES,)):
        for start in range(0, len(built), size):
            for n, (call, late) in enumerate(built[start : start + size]):
                data = base64.b64encode(json.dumps(call).encode()).decode()
                message = PubSubMessage(f"{space}-{start}-{n}", data, datetime.now(UTC), {"space": space})
                loaded = datetime.now(UTC) - (LATE if late else timedelta(0))
                ingest(message, warehouse, config, now=lambda at=loaded: at)
                stored.append((call, datetime.fromisoformat(call["timestamp"])))
            [result] = sync.run_sync(warehouse, config, spaces=[space])["spaces"]
            assert result["status"] == "success", result
            assert identities(bq, space) == oracle.as_rows(oracle.identities(stored))
        incremental = identities(bq, space)
        [rebuilt] = sync.run_sync(warehouse, config, spaces=[space], full=True)["spaces"]
    assert rebuilt["tables"]["identities"]["mode"] == "full"
    assert identities(bq, space) == incremental


class FailingOn:
    """The real client, refusing the `n`-th MERGE into identities_state it is sent (a run that dies
    between two of its statements: the chunks before are folded, the rest are not)."""

    def __init__(self, client: bigquery.Client, n: int) -> None:
        self._client, self._left = client, n

    def query(self, text: str, *args: Any, **kwargs: Any) -> Any:
        if text.startswith(f"MERGE `{self._client.project}.") and ".identities_state` AS _old" in text:
            self._left -= 1
            if self._left == 0:
                raise RuntimeError("the run dies here")
        return self._client.query(text, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_a_run_that_dies_between_statements_counts_nothing_twice(stack: Stack, bq: bigquery.Client) -> None:
    """Eight profiles; a second wave of calls (new ones and copies) folded by a run with chunks of two
    partitions that dies at its third MERGE; the next run reads the same window again and must count
    what the dead run folded exactly once."""
    space = f"iddie_{next(_spaces)}"
    config = Settings(
        space_policy=WIDE_OPEN,
        bigquery_emulator_host=stack.config.bigquery_url,
        project=stack.config.project,
        sync_overlap_seconds=600,
    )
    warehouse = Warehouse(bq)
    stored: list[tuple[dict[str, Any], datetime]] = []

    def land(calls: list[dict[str, Any]]) -> None:
        for call in calls:
            data = base64.b64encode(json.dumps(call).encode()).decode()
            ingest(
                PubSubMessage(f"{space}-{len(stored)}", data, datetime.now(UTC), {"space": space}), warehouse, config
            )
            stored.append((call, datetime.fromisoformat(call["timestamp"])))

    def wave(tag: str, minute: int) -> list[dict[str, Any]]:
        return [
            build(
                0,
                {
                    "profile": (f"u{i}", f"a{i}"),
                    "kind": "identify",
                    "minute": minute,
                    "email": f"e{i}@example.com",
                    "device": DEVICES[i % 3],
                    "external": ENTRIES[:2],
                    "late": False,
                },
            )
            | {"messageId": f"{tag}{i}"}
            for i in range(8)
        ]

    first = wave("w1-", 0)
    with mock.patch.object(sync, "DERIVED", (IDENTITIES,)):
        land(first)
        assert sync.run_sync(warehouse, config, spaces=[space])["spaces"][0]["status"] == "success"
        land(wave("w2-", 3) + first[:4])  # new calls, and copies of four folded ones
        with mock.patch.object(frame, "PARTITION_BUDGET", 2):
            [died] = sync.run_sync(Warehouse(FailingOn(bq, 3)), config, spaces=[space])["spaces"]
        assert died["status"] == "failure" and died["tables"]["identities"]["statements"] == 2, died
        half = identities(bq, space)
        assert half != oracle.as_rows(oracle.identities(stored)), "the dead run folded some chunks, not all"
        [again] = sync.run_sync(warehouse, config, spaces=[space])["spaces"]
        assert again["status"] == "success"
        assert identities(bq, space) == oracle.as_rows(oracle.identities(stored))
        sync.run_sync(warehouse, config, spaces=[space], full=True)
        assert identities(bq, space) == oracle.as_rows(oracle.identities(stored))
