"""Property: `users_history` kept by incremental syncs over random, shuffled, duplicated and late call
sequences equals an oracle, at every moment: the whole table equals the periods the oracle derives, and at
random moments t the point-in-time join (and `users_at(t)`) gives, per user whose first call is at or before
t, exactly the state an independent oracle computes from the calls up to t. The current rows equal
`users` (without received_at), and a full rebuild changes nothing.

`narrow` gives every column statements of its own (the calls' values, which calls start a period, the
periods' values), as BigQuery's 1,024K-character limit splits the widest spaces'.

Calls go through the real ingest core into the stack's bqemulator; the sync is the real run_sync."""

from __future__ import annotations

import base64
import itertools
import json
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
from personas_warehouse.derived import users as users_table
from personas_warehouse.derived import users_history as history
from personas_warehouse.ingest import ingest
from personas_warehouse.messages import PubSubMessage
from personas_warehouse.settings import Settings
from personas_warehouse.sync import run_sync
from tests.integration.conftest import PROPERTY_EXAMPLES, WIDE_OPEN, query
from tests.integration.test_sync_property import rank

pytestmark = pytest.mark.integration
BASE = datetime(2026, 11, 1, tzinfo=UTC)
# `as_of` is the table function's parameter, which a trait of that name must not hide.
PLAN, SCORE = "plan_of_the_user_as_computed_by_personas", "score_of_the_user_as_computed_by_personas"
TRAITS = {PLAN: st.sampled_from(["free", "pro"]), SCORE: st.integers(0, 2), "as_of": st.booleans()}
USERS = ["u1", "u2", "u3"]
_spaces = itertools.count()

calls = st.lists(
    st.fixed_dictionaries(
        {
            "user": st.sampled_from([*USERS, None]),
            "minute": st.integers(0, 5),  # few timestamps: ties, and calls that change nothing, are common
            "traits": st.fixed_dictionaries({}, optional={k: st.none() | v for k, v in TRAITS.items()}),
        }
    ),
    min_size=2,
    max_size=12,
)

Sent = list[tuple[dict[str, Any], datetime]]


def distinct_calls(sent: Sent, user: str) -> list[dict[str, Any]]:
    """A user's calls, copies once, in sql.KEY's order."""
    found = {(c["messageId"], c["timestamp"]): c for c, _ in sent if c.get("userId") == user}
    return sorted(found.values(), key=rank)


def state_at(calls: list[dict[str, Any]], t: datetime) -> dict[str, Any] | None:
    """users' rule over the calls up to t: per trait the value of the newest call that has one (None: no call yet)."""
    upto = [c for c in calls if datetime.fromisoformat(c["timestamp"]) <= t]
    if not upto:
        return None
    state: dict[str, Any] = {}
    for call in upto:  # in key order: the newest value wins
        state |= {k: v for k, v in call["traits"].items() if v is not None}
    return state


def periods_oracle(sent: Sent) -> dict[str, list[tuple[datetime, datetime | None, dict[str, Any]]]]:
    """users_history by its definition: per user, a period at the first moment and at each moment whose
    state differs from the one before; each valid to the next one's start."""
    found = {}
    for user in {c["userId"] for c, _ in sent if "userId" in c}:
        calls = distinct_calls(sent, user)
        moments = sorted({datetime.fromisoformat(c["timestamp"]) for c in calls})
        starts: list[tuple[datetime, dict[str, Any]]] = []
        for moment in moments:
            state = state_at(calls, moment)
            assert state is not None
            if not starts or starts[-1][1] != state:
                starts.append((moment, state))
        ends: list[datetime | None] = [start for start, _ in starts[1:]]
        found[user] = [(start, end, state) for (start, state), end in zip(starts, [*ends, None], strict=True)]
    return found


# Always tried, in three syncs. The first stores u1's periods [1, 3) free/0, [3, 4) free/1, [4, -) free/1/as_of
# (two calls at 4: one moment). The second brings late calls: at 2 (splits [1, 3) and changes [3, 4) until
# the plan is set again at 4) and at 0 (the same values as at 1: [0, 2) merges what was [1, 2)).
LATE = [
    {"user": "u1", "minute": 1, "traits": {PLAN: "free", SCORE: 0}},
    {"user": "u1", "minute": 3, "traits": {SCORE: 1}},
    {"user": "u1", "minute": 4, "traits": {PLAN: "free"}},
    {"user": "u1", "minute": 4, "traits": {"as_of": True}},
    {"user": None, "minute": 2, "traits": {PLAN: "pro"}},
    {"user": "u1", "minute": 2, "traits": {PLAN: "pro"}},
    {"user": "u2", "minute": 5, "traits": {}},
    {"user": "u1", "minute": 0, "traits": {PLAN: "free", SCORE: 0}},
]


@pytest.fixture(autouse=True)
def _users_and_history_only() -> Iterator[None]:
    """Only users (which the current periods must equal) and users_history are synced: the other derived
    tables' statements would double the run's time."""
    with mock.patch.object(sync, "DERIVED", (users_table.USERS, history.USERS_HISTORY)):
        yield


class AsSent:
    def shuffle(self, items: list[Any]) -> None:
        pass


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@example(calls=LATE, duplicates=[5, 0], chunks=3, order=AsSent(), narrow=False).via("late calls")
@example(calls=LATE, duplicates=[3], chunks=3, order=AsSent(), narrow=True).via("late calls, narrow")
@given(
    calls=calls,
    duplicates=st.lists(st.integers(0, 11), max_size=4),
    chunks=st.integers(1, 3),
    order=st.randoms(use_true_random=False),
    narrow=st.booleans(),
)
def test_users_history_equals_the_oracle_at_every_moment(
    stack: Stack,
    bq: bigquery.Client,
    calls: list[dict[str, Any]],
    duplicates: list[int],
    chunks: int,
    order: Any,
    narrow: bool,
) -> None:
    space = f"hist_{next(_spaces)}_{abs(hash(str(calls))) % 10**6}"
    project = stack.config.project
    config = Settings(
        space_policy=WIDE_OPEN,
        bigquery_emulator_host=stack.config.bigquery_url,
        project=project,
        sync_overlap_seconds=0,
    )
    sent: Sent = []
    sentences = Recorder(bq)
    with narrowed(narrow):
        for batch in batches(space, calls, duplicates, chunks, order):
            land(Warehouse(bq), config, space, batch, sent)
            [result] = run_sync(Warehouse(sentences), config, spaces=[space])["spaces"]  # type: ignore[arg-type]
            assert result["status"] == "success", result
    dataset = f"`{project}.personas_{space}`"
    kept = table_of(bq, dataset)
    wide = [t for t in sentences.texts if t.startswith(f"MERGE `{project}.personas_{space}.users_history_calls`")]
    if narrow and len({k for periods in kept.values() for _, _, s in periods for k in s}) >= 2:
        assert any("SET _starts" in t for t in wide), "narrow: which calls start a period, a column at a time"
    if not narrow:
        assert not any("SET _starts" in t for t in wide), "one statement makes the periods"
    assert kept == periods_oracle(sent)
    every = {user: distinct_calls(sent, user) for user in kept}
    moments = {datetime.fromisoformat(c["timestamp"]) for cs in every.values() for c in cs}
    rng = random.Random(len(sent))
    picked = sorted({*rng.sample(sorted(moments), min(3, len(moments))), BASE - timedelta(minutes=1)})
    picked += [m + timedelta(seconds=rng.choice([-30, 30])) for m in picked[1:3]]
    for t in picked:
        expected = {u: s for u, cs in every.items() if (s := state_at(cs, t)) is not None}
        assert as_of(bq, dataset, t) == expected, t
        assert as_of(bq, dataset, t, function=True) == expected, t
    current = {u: s for u, periods in kept.items() for _, end, s in periods if end is None}
    users = {
        r.pop("id"): {k: v for k, v in r.items() if v is not None} for r in query(bq, f"SELECT * FROM {dataset}.users")
    }
    assert current == {u: {k: v for k, v in r.items() if k != "received_at"} for u, r in users.items()}

    run_sync(Warehouse(bq), config, spaces=[space], full=True)
    assert table_of(bq, dataset) == kept


def batches(
    space: str, calls: list[dict[str, Any]], duplicates: list[int], chunks: int, order: Any
) -> Iterator[list[dict[str, Any]]]:
    built = []
    for i, c in enumerate(calls):
        call: dict[str, Any] = {
            "type": "identify",
            "messageId": f"{space}-m{i}",
            "traits": c["traits"],
            "timestamp": (BASE + timedelta(minutes=c["minute"])).isoformat(),
        }
        call.update({"userId": c["user"]} if c["user"] else {"anonymousId": f"anon{i}"})
        built.append(call)
    built += [built[d] for d in duplicates if d < len(built)]  # redeliveries and resends
    order.shuffle(built)
    size = -(-len(built) // chunks)
    for start in range(0, len(built), size):
        yield built[start : start + size]


def land(warehouse: Warehouse, config: Settings, space: str, batch: list[dict[str, Any]], sent: Sent) -> None:
    for call in batch:
        received = BASE + timedelta(hours=1, seconds=len(sent))
        data = base64.b64encode(json.dumps(call).encode()).decode()
        ingest(PubSubMessage(f"{space}-{len(sent)}", data, received, {"space": space}), warehouse, config)
        sent.append((call, received))


def table_of(bq: bigquery.Client, dataset: str) -> dict[str, list[tuple[datetime, datetime | None, dict[str, Any]]]]:
    rows = query(bq, f"SELECT * EXCEPT (_bucket) FROM {dataset}.users_history ORDER BY id, valid_from")
    found: dict[str, list[tuple[datetime, datetime | None, dict[str, Any]]]] = {}
    for row in rows:
        user, start, end = row.pop("id"), row.pop("valid_from"), row.pop("valid_to")
        found.setdefault(user, []).append((start, end, {k: v for k, v in row.items() if v is not None}))
    return found


def as_of(bq: bigquery.Client, dataset: str, t: datetime, *, function: bool = False) -> dict[str, dict[str, Any]]:
    """The traits at t, by the point-in-time join the docs give, or by users_at(t)."""
    text = (
        f"SELECT * FROM {dataset}.users_at(@t)"
        if function
        else f"SELECT * EXCEPT (valid_from, valid_to, _bucket) FROM {dataset}.users_history "
        f"WHERE valid_from <= @t AND (valid_to > @t OR valid_to IS NULL)"
    )
    config = bigquery.QueryJobConfig(query_parameters=[bigquery.ScalarQueryParameter("t", "TIMESTAMP", t)])
    rows = [dict(r) for r in bq.query(text, job_config=config).result()]
    found = {r.pop("id"): {k: v for k, v in r.items() if v is not None} for r in rows}
    assert len(found) == len(rows), f"one row per user at {t}"
    return found


@contextmanager
def narrowed(narrow: bool) -> Iterator[None]:
    """(narrow) every column in statements of its own, as BigQuery's query-length limit splits the widest
    spaces' (where to split is sql.split's business, held to that limit by tests/unit/test_sql_analyzer.py)."""
    if not narrow:
        yield
        return

    def one_each(build: Callable[[Sequence[str], int], str], items: Sequence[str], _: int | None = None) -> list[str]:
        return [build(items[i : i + 1], i) for i in range(len(items))] or [build([], 0)]

    with mock.patch.object(history, "split", one_each):
        yield


class Recorder:
    """The real client, keeping the text of every query sent."""

    def __init__(self, client: bigquery.Client) -> None:
        self._client = client
        self.texts: list[str] = []

    def query(self, text: str, *args: Any, **kwargs: Any) -> Any:
        self.texts.append(text)
        return self._client.query(text, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)
