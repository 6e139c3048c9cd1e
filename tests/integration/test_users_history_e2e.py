"""users_history on the local stack, beyond the property test: selective sync (a column switched off keeps
its stored values in effect, as users keeps its last value; switched back on, it is filled from history),
traits named like its own columns, rows that land between a run's statements, and the partitions each
statement modifies."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.cloud import bigquery

from infra.local.stack import Stack
from personas_warehouse.bigquery import Warehouse
from personas_warehouse.settings import Settings, SpaceConfig
from personas_warehouse.sync import run_sync
from tests.integration.conftest import WIDE_OPEN, query
from tests.integration.test_sync_concurrency import Hooked, identify, land, small_budget, stored_calls
from tests.integration.test_users_history_property import narrowed, periods_oracle, table_of
from tests.sync_fakes import _BETWEEN, _IN, confined_to

pytestmark = pytest.mark.integration
_counter = iter(range(10**6))


def space_of(name: str) -> str:
    return f"h{name}_{next(_counter)}_{random.randrange(10**6)}"


def settings_for(stack: Stack, **kw: Any) -> Settings:
    return Settings(
        space_policy=WIDE_OPEN, bigquery_emulator_host=stack.config.bigquery_url, project=stack.config.project, **kw
    )


def without(sent: list[tuple[dict[str, Any], datetime]], trait: str) -> list[tuple[dict[str, Any], datetime]]:
    return [({**c, "traits": {k: v for k, v in c["traits"].items() if k != trait}}, r) for c, r in sent]


def current_equals_users(bq: bigquery.Client, dataset: str) -> None:
    """The rows with valid_to null are users, without received_at."""
    current = query(
        bq, f"SELECT * EXCEPT (valid_from, valid_to, _bucket) FROM {dataset}.users_history WHERE valid_to IS NULL"
    )
    users = query(bq, f"SELECT * EXCEPT (received_at) FROM {dataset}.users")
    assert sorted(current, key=lambda r: r["id"]) == sorted(users, key=lambda r: r["id"])


def test_a_column_switched_off_keeps_its_values_and_switched_on_is_filled_from_history(
    stack: Stack, bq: bigquery.Client
) -> None:
    project, space = stack.config.project, space_of("sel")
    dataset = f"`{project}.personas_{space}`"
    on = settings_for(stack, sync_overlap_seconds=0)
    off = replace(on, spaces={space: SpaceConfig(disabled_columns={"users": frozenset({"score"})})})
    warehouse = Warehouse(bq)
    earlier = datetime.now(UTC) - timedelta(minutes=5)
    first = [identify("u1", 1, plan="free", score=1), identify("u1", 2, score=2), identify("u2", 1, plan="pro")]
    land(warehouse, on, space, first, earlier)

    [result] = run_sync(warehouse, off, spaces=[space])["spaces"]
    assert result["tables"]["users_history"]["skipped_columns"] == '["score"]'
    sent = stored_calls(bq, project, space)
    assert table_of(bq, dataset) == periods_oracle(without(sent, "score"))

    run_sync(warehouse, on, spaces=[space])  # score switched back on: filled from history
    assert table_of(bq, dataset) == periods_oracle(sent)
    current_equals_users(bq, dataset)

    land(warehouse, on, space, [identify("u1", 3, plan="pro", score=3)], datetime.now(UTC))
    run_sync(warehouse, off, spaces=[space])  # off again: u1's score stays 2, as in users
    every = stored_calls(bq, project, space)
    late = {c["messageId"] for c, _ in every} - {c["messageId"] for c, _ in sent}
    frozen = [
        ({**c, "traits": {k: v for k, v in c["traits"].items() if k != "score" or c["messageId"] not in late}}, r)
        for c, r in every
    ]
    assert table_of(bq, dataset) == periods_oracle(frozen)
    current_equals_users(bq, dataset)

    disabled = replace(on, spaces={space: SpaceConfig(disabled_tables=frozenset({"users_history"}))})
    [result] = run_sync(warehouse, disabled, spaces=[space])["spaces"]
    assert result["tables"]["users_history"]["status"] == "skipped"


def test_traits_named_like_its_own_columns_are_left_out_and_said_so(stack: Stack, bq: bigquery.Client) -> None:
    project, space = stack.config.project, space_of("names")
    dataset = f"`{project}.personas_{space}`"
    config = settings_for(stack, sync_overlap_seconds=0)
    warehouse = Warehouse(bq)
    calls = [identify("u1", 1, plan="free", validFrom="2020"), identify("u1", 2, valid_to=7, as_of="x")]
    land(warehouse, config, space, calls, datetime.now(UTC) - timedelta(minutes=1))
    [result] = run_sync(warehouse, config, spaces=[space])["spaces"]
    history = result["tables"]["users_history"]
    assert history["status"] == "partial" and "['valid_from', 'valid_to']" in history["error"], history
    assert result["tables"]["users"]["status"] == "success"
    sent = without(without(stored_calls(bq, project, space), "valid_from"), "valid_to")
    assert table_of(bq, dataset) == periods_oracle(sent)
    at = query(bq, f"SELECT * FROM {dataset}.users_at(TIMESTAMP '2026-11-01 00:01:30+00')")
    assert at == [{"id": "u1", "plan": "free", "as_of": None}], "a trait named as_of does not hide the parameter"


def test_rows_that_land_between_statements_are_in_the_history_after_the_next_run(
    stack: Stack, bq: bigquery.Client
) -> None:
    """Calls stamped inside a run's window but visible only between its statements (between storing the
    calls and making the periods, too): the next run, whose window re-reads them, makes the history right."""
    project, space = stack.config.project, space_of("land")
    dataset = f"`{project}.personas_{space}`"
    config = settings_for(stack, sync_overlap_seconds=30)
    plain = Warehouse(bq)
    users = [f"u{i}" for i in range(8)]
    rng = random.Random(5)
    land(plain, config, space, [identify(u, rng.randrange(4), a=rng.randrange(2)) for u in users], datetime.now(UTC))
    run_sync(plain, config, spaces=[space])
    land(
        plain, config, space, [identify(u, rng.randrange(4), a=rng.randrange(3)) for u in users[:4]], datetime.now(UTC)
    )
    started = datetime.now(UTC)

    def before(text: str) -> None:
        if ".users_history" in text.split("\n", 1)[0]:
            late = [identify(rng.choice(users), rng.randrange(5), a=rng.randrange(3)) for _ in range(2)]
            land(plain, config, space, late, started - timedelta(seconds=1))

    with small_budget(2):  # several chunks
        [result] = run_sync(Warehouse(Hooked(bq, before)), config, spaces=[space])["spaces"]  # type: ignore[arg-type]
    assert result["status"] == "success", result
    run_sync(plain, config, spaces=[space])
    assert table_of(bq, dataset) == periods_oracle(stored_calls(bq, project, space))
    current_equals_users(bq, dataset)


def test_each_statement_modifies_only_the_partitions_it_names(stack: Stack, bq: bigquery.Client) -> None:
    """users_history and users_history_calls compared before and after every statement of a full and an
    incremental run: the partitions whose rows changed are among those the statement names."""
    project, space = stack.config.project, space_of("parts")
    config = settings_for(stack, sync_overlap_seconds=30)
    plain = Warehouse(bq)
    land(plain, config, space, [identify(f"u{i}", i % 4, a=i) for i in range(30)], datetime.now(UTC))
    snapshot: dict[str, Any] = {}
    checked: list[tuple[int, int]] = []

    def state() -> dict[tuple[str, int], list[str]]:
        found: dict[tuple[str, int], list[str]] = {}
        for name in ("users_history", "users_history_calls"):
            try:
                rows = query(bq, f"SELECT * FROM `{project}.personas_{space}.{name}`")
            except Exception:  # not created yet
                continue
            for row in rows:
                found.setdefault((name, row["_bucket"]), []).append(json.dumps(row, sort_keys=True, default=str))
        return {k: sorted(v) for k, v in found.items()}

    def flush() -> None:
        if not snapshot:
            return
        text, earlier = snapshot.pop("text"), snapshot.pop("state")
        now = state()
        changed = {b for k in set(earlier) | set(now) if earlier.get(k) != now.get(k) for b in [k[1]]}
        named = confined_to(text, _BETWEEN, _IN)
        assert named is not None and changed <= named, (sorted(changed - (named or set())), text[:200])
        checked.append((len(changed), len(named)))

    def before(text: str) -> None:
        flush()
        if ".users_history" in text.split("\n", 1)[0]:
            snapshot.update(text=text, state=state())

    hooked = Warehouse(Hooked(bq, before))  # type: ignore[arg-type]
    with small_budget(3_400):  # a full run: three chunks
        run_sync(hooked, config, spaces=[space])
        flush()
    land(plain, config, space, [identify(f"u{i}", 5, a=100 + i) for i in range(0, 30, 3)], datetime.now(UTC))
    land(plain, config, space, [identify(f"u{i}", 0, a=-i) for i in range(1, 30, 3)], datetime.now(UTC))  # late
    with small_budget(3):  # an incremental run: 20 users in chunks of 3 partitions
        run_sync(hooked, config, spaces=[space])
        flush()
    assert len(checked) >= 6 + 14 and sum(c for c, _ in checked[6:]) >= 20, checked
    assert table_of(bq, f"`{project}.personas_{space}`") == periods_oracle(stored_calls(bq, project, space))


@pytest.mark.parametrize("narrow", [False, True], ids=["one statement", "a column at a time"])
def test_calls_stored_twice_count_once(stack: Stack, bq: bigquery.Client, narrow: bool) -> None:
    """Two runs at once can both store a call (each read the calls before the other inserted it): every
    stored call doubled, the next runs still make the history the calls say."""
    project, space = stack.config.project, space_of("twice")
    dataset = f"`{project}.personas_{space}`"
    config = settings_for(stack, sync_overlap_seconds=0)
    warehouse = Warehouse(bq)
    first = [identify("u1", 1, a=1, b="x"), identify("u1", 3, a=2), identify("u2", 2, b="y")]
    land(warehouse, config, space, first, datetime.now(UTC) - timedelta(minutes=2))
    run_sync(warehouse, config, spaces=[space])
    bq.query(f"INSERT INTO {dataset}.users_history_calls SELECT * FROM {dataset}.users_history_calls").result()
    land(warehouse, config, space, [identify("u1", 2, b="z"), identify("u2", 0, a=5)], datetime.now(UTC))
    with narrowed(narrow):
        [result] = run_sync(warehouse, config, spaces=[space])["spaces"]
    assert result["status"] == "success", result
    assert table_of(bq, dataset) == periods_oracle(stored_calls(bq, project, space))
