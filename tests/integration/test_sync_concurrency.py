"""The sync while calls keep landing, on the local stack's real SQL engine:

- rows that become visible between two of a run's statements (stamped inside its window, visible only
  after its window query) are folded once or left for the next run, never inserted twice: a hook lands
  them at every statement boundary, for users inside and outside the statement's partitions and for
  new users;
- calls streamed through Pub/Sub while incremental syncs run back to back, over many more users than a
  run touches, end as one row per user, equal to a full rebuild and to the oracle;
- every statement modifies only the partitions its constant filters name, at most the budget (measured
  on the emulator by comparing the kept table, users_state or identities_state, before and after each
  statement, with a small budget).

Every derived table is checked: users against its oracle, identities against its own
(tests/identities_oracle.py), each equal to a full rebuild.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from bqemulator.sql.builtin_udfs import bqemu_farm_fingerprint
from google.cloud import bigquery, pubsub_v1
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.local.stack import Stack
from personas_warehouse import sync
from personas_warehouse.bigquery import Warehouse
from personas_warehouse.derived import frame
from personas_warehouse.derived.identities import IDENTITIES
from personas_warehouse.derived.users import USERS
from personas_warehouse.ingest import ingest
from personas_warehouse.messages import PubSubMessage
from personas_warehouse.settings import Settings
from personas_warehouse.sync import run_sync
from tests import identities_oracle
from tests.integration.conftest import OVERLAP_SECONDS, PROPERTY_EXAMPLES, WIDE_OPEN, query, wait_rows
from tests.integration.test_identities_e2e import identities
from tests.integration.test_sync_property import oracle
from tests.sync_fakes import _BETWEEN, _IN, confined_to

pytestmark = pytest.mark.integration
BASE = datetime(2026, 11, 1, tzinfo=UTC)
_counter = iter(range(10**9))


class Hooked:
    """The real client, with `before(text)` called before each DML statement the sync sends."""

    def __init__(self, client: bigquery.Client, before: Callable[[str], None]) -> None:
        self._client, self._before = client, before

    def query(self, text: str, *args: Any, **kwargs: Any) -> Any:
        if text.startswith("MERGE"):
            self._before(text)
        return self._client.query(text, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def identify(user: str, minute: int, **traits: Any) -> dict[str, Any]:
    return {
        "type": "identify",
        "messageId": f"m{next(_counter)}",
        "userId": user,
        "timestamp": (BASE + timedelta(minutes=minute)).isoformat(),
        "traits": traits,
    }


def land(warehouse: Warehouse, config: Settings, space: str, calls: list[dict[str, Any]], loaded_at: datetime) -> None:
    """Write calls as ingest does, stamped `loaded_at` (a row visible only now, stamped earlier)."""
    data = base64.b64encode(json.dumps({"batch": calls}).encode()).decode()
    message = PubSubMessage(f"msg-{next(_counter)}", data, BASE + timedelta(hours=1), {"space": space})
    ingest(message, warehouse, config, now=lambda: loaded_at)


def stored_calls(bq: bigquery.Client, project: str, space: str) -> list[tuple[dict[str, Any], datetime]]:
    """Every identify row, as the calls (and receive times) the oracle reads."""
    rows = query(bq, f"SELECT * FROM `{project}.personas_{space}.identifies` WHERE user_id IS NOT NULL")
    base = {"id", "user_id", "anonymous_id", "received_at", "sent_at", "original_timestamp", "timestamp", "loaded_at"}
    return [
        (
            {
                "messageId": r["id"],
                "userId": r["user_id"],
                "timestamp": r["timestamp"].isoformat(),
                "traits": {k: v for k, v in r.items() if k not in base and not k.startswith("context_")},
            },
            r["received_at"],
        )
        for r in rows
    ]


def users_of(bq: bigquery.Client, project: str, space: str) -> dict[str, dict[str, Any]]:
    rows = query(bq, f"SELECT * FROM `{project}.personas_{space}.users`")
    found = {r.pop("id"): {k: v for k, v in r.items() if v is not None} for r in rows}
    state = query(bq, f"SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS ids FROM `{project}.personas_{space}.users_state`")
    assert len(found) == len(rows) == state[0]["n"] == state[0]["ids"], "one row per user"
    return found


def identities_oracle_of(bq: bigquery.Client, project: str, space: str) -> dict[Any, Any]:
    """identities by its rule, from every stored identify row (these tests' calls carry only a userId)."""
    rows = query(bq, f"SELECT id, user_id, anonymous_id, timestamp FROM `{project}.personas_{space}.identifies`")
    calls = [
        (
            {"type": "identify", "messageId": r["id"], "userId": r["user_id"], "anonymousId": r["anonymous_id"]},
            r["timestamp"],
        )
        for r in rows
    ]
    return identities_oracle.as_rows(identities_oracle.identities(calls))


def assert_right(bq: bigquery.Client, warehouse: Warehouse, config: Settings, project: str, space: str) -> None:
    """users and identities equal their oracles over every stored call, and a full rebuild changes nothing."""
    incremental, kept = users_of(bq, project, space), identities(bq, space)
    assert incremental == oracle(stored_calls(bq, project, space))
    assert kept == identities_oracle_of(bq, project, space)
    run_sync(warehouse, config, spaces=[space], full=True)
    assert users_of(bq, project, space) == incremental and identities(bq, space) == kept


@pytest.fixture(autouse=True)
def _users_and_identities_only() -> Iterator[None]:
    """The sync of users and identities, which this file checks (assert_right): users_history's and
    audience_memberships' runs under the same conditions are their own tests' (test_users_history_e2e.py,
    test_memberships_property.py), and would triple these runs' time on the emulator."""
    with mock.patch.object(sync, "DERIVED", (USERS, IDENTITIES)):
        yield


@contextmanager
def small_budget(budget: int) -> Iterator[None]:
    saved = frame.PARTITION_BUDGET
    frame.PARTITION_BUDGET = budget
    try:
        yield
    finally:
        frame.PARTITION_BUDGET = saved


landings = st.lists(
    st.tuples(
        st.sampled_from(["inside", "outside", "new"]),
        st.integers(0, 3),  # minute: ties with the stored calls are common
        st.sampled_from([None, "a", "b"]),
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(boundaries=st.lists(landings, min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_rows_that_land_between_statements_are_folded_once(
    stack: Stack, bq: bigquery.Client, boundaries: list[list[tuple[str, int, str | None]]], seed: int
) -> None:
    project, space = stack.config.project, f"land_{next(_counter)}"
    config = Settings(
        space_policy=WIDE_OPEN,
        bigquery_emulator_host=stack.config.bigquery_url,
        project=project,
        sync_overlap_seconds=30,
    )
    plain = Warehouse(bq)
    rng = random.Random(seed)
    users = [f"u{i}" for i in range(12)]
    start = datetime.now(UTC) - timedelta(minutes=5)
    land(plain, config, space, [identify(u, rng.randrange(4), a=rng.randrange(3), b="x") for u in users], start)
    run_sync(plain, config, spaces=[space])  # the first run: full

    land(
        plain, config, space, [identify(u, rng.randrange(4), a=rng.randrange(3)) for u in users[:5]], datetime.now(UTC)
    )
    pending = list(boundaries)
    run_started = datetime.now(UTC)

    def before(text: str) -> None:
        if not pending:
            return
        confined = confined_to(text, _BETWEEN, _IN) or set()
        calls = []
        for where, minute, trait in pending.pop(0):
            if where == "new":
                user = f"new{next(_counter)}"
            else:
                inside = [u for u in users if bucket(u) in confined]
                outside = [u for u in users if bucket(u) not in confined]
                user = rng.choice((inside if where == "inside" else outside) or users)
            calls.append(identify(user, minute, **({trait: rng.randrange(3)} if trait else {})))
        # Stamped just before the run's window closed, visible only now.
        land(plain, config, space, calls, run_started - timedelta(seconds=1))

    with small_budget(3):  # several chunks, so several statement boundaries
        [result] = run_sync(Warehouse(Hooked(bq, before)), config, spaces=[space])["spaces"]
    assert result["status"] == "success", result
    run_sync(plain, config, spaces=[space])  # the overlap re-reads what landed late
    assert_right(bq, plain, config, project, space)


def bucket(user: str) -> int:
    """users_state's partition of a user id, as sql.bucket computes it."""
    return abs(int(bqemu_farm_fingerprint(user) or 0)) % 10_000


def test_calls_streamed_while_syncs_run_back_to_back(
    stack: Stack, bq: bigquery.Client, publisher: pubsub_v1.PublisherClient
) -> None:
    """1,000 users; 150 calls published over several seconds (a third for new users) while incremental syncs
    run one after another; then the sync catches up."""
    project, space = stack.config.project, f"stream_{next(_counter)}"
    config = Settings(
        space_policy=WIDE_OPEN,
        bigquery_emulator_host=stack.config.bigquery_url,
        project=project,
        sync_overlap_seconds=OVERLAP_SECONDS,
    )
    warehouse = Warehouse(bq)
    rng = random.Random(7)
    seed = [identify(f"u{i}", rng.randrange(30), plan=rng.choice(["free", "pro"]), score=i) for i in range(1_000)]
    long_ago = datetime.now(UTC) - timedelta(minutes=10)  # outside every incremental run's window
    for start in range(0, len(seed), 500):
        land(warehouse, config, space, seed[start : start + 500], long_ago)
    first = run_sync(warehouse, config, spaces=[space])["spaces"][0]["tables"]["users"]
    assert first["mode"] == "full" and first["status"] == "success"

    topic = publisher.topic_path(project, stack.config.topic)
    streamed: list[dict[str, Any]] = []

    def stream() -> None:
        for i in range(150):
            user = f"u{rng.randrange(1_000)}" if i % 3 else f"late{i}"
            call = identify(
                user, rng.randrange(30), plan=rng.choice(["free", "pro", "team"]), score=rng.randrange(1000)
            )
            publisher.publish(topic, json.dumps(call).encode(), space=space).result(timeout=30)
            streamed.append(call)
            time.sleep(0.02)

    publishing = threading.Thread(target=stream)
    publishing.start()
    runs = []
    while publishing.is_alive():
        runs.append(run_sync(warehouse, config, spaces=[space])["spaces"][0]["tables"]["users"])
    publishing.join()
    wait_rows(bq, f"SELECT id FROM `{project}.personas_{space}.identifies`", 1_150, timeout=120)
    for _ in range(2):
        runs.append(run_sync(warehouse, config, spaces=[space])["spaces"][0]["tables"]["users"])
    assert all(r["status"] == "success" and r["mode"] == "incremental" for r in runs), runs
    assert len(runs) >= 3
    assert max(r["source_rows_read"] for r in runs) <= 150, "each run read its window, not the history"
    assert_right(bq, warehouse, config, project, space)


def test_each_statement_modifies_only_the_partitions_it_names(stack: Stack, bq: bigquery.Client) -> None:
    """The kept table (users_state, identities_state) compared before and after every statement: the
    partitions whose rows changed are among those the statement's constant filters name, and no more than
    the budget."""
    project, space = stack.config.project, f"parts_{next(_counter)}"
    config = Settings(
        space_policy=WIDE_OPEN,
        bigquery_emulator_host=stack.config.bigquery_url,
        project=project,
        sync_overlap_seconds=30,
    )
    plain = Warehouse(bq)
    rng = random.Random(3)
    now = datetime.now(UTC) - timedelta(minutes=1)
    land(plain, config, space, [identify(f"u{i}", rng.randrange(4), a=i) for i in range(60)], now)
    checked: list[tuple[str, int, int]] = []
    snapshot: dict[str, Any] = {}

    def state(kept: str) -> dict[int, list[str]]:
        try:
            rows = query(bq, f"SELECT * FROM `{project}.personas_{space}.{kept}`")
        except Exception:  # not created yet
            return {}
        found: dict[int, list[str]] = {}
        for row in rows:
            found.setdefault(row["_bucket"], []).append(json.dumps(row, sort_keys=True, default=str))
        return {b: sorted(v) for b, v in found.items()}

    def before(text: str) -> None:
        flush()
        kept = text.split("`", 2)[1].rsplit(".", 1)[1]  # MERGE `project.dataset.table`
        snapshot.update(text=text, kept=kept, state=state(kept))

    def flush() -> None:
        """Compare the kept table with what it was before the last statement."""
        if not snapshot:
            return
        text, kept, earlier = snapshot.pop("text"), snapshot.pop("kept"), snapshot.pop("state")
        now_state = state(kept)
        changed = {b for b in set(earlier) | set(now_state) if earlier.get(b) != now_state.get(b)}
        named = confined_to(text, _BETWEEN, _IN)
        assert named is not None and changed <= named, (kept, sorted(changed - (named or set())), text[:200])
        checked.append((kept, len(changed), len(named)))

    hooked = Warehouse(Hooked(bq, before))
    with small_budget(2_500):  # a full run: four statements over the 10,000 partitions
        run_sync(hooked, config, spaces=[space])
        flush()
    land(plain, config, space, [identify(f"u{i}", 5, a=100 + i) for i in range(0, 60, 2)], datetime.now(UTC))
    land(plain, config, space, [identify(f"n{i}", 5, a=i) for i in range(10)], datetime.now(UTC))
    with small_budget(4):  # an incremental run: 40 users in chunks of 4 partitions
        run_sync(hooked, config, spaces=[space])
        flush()
    full, incremental = checked[:8], checked[8:]  # four statements per table, then chunks of four partitions
    assert [k for k, _, _ in full] == ["users_state"] * 4 + ["identities_state"] * 4, checked
    for kept in ("users_state", "identities_state"):
        mine = [(changed, named) for k, changed, named in incremental if k == kept]
        assert len(mine) >= 10 and all(changed <= named <= 4 for changed, named in mine), (kept, mine)
        assert sum(changed for changed, _ in mine) >= 35, (kept, mine)
    assert_right(bq, plain, config, project, space)
