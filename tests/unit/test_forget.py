"""Forgetting users (personas_warehouse.forget, infra.ops.forget) over the strict BigQuery fake, which runs
forget's SQL and refuses DML on rows still in BigQuery's streaming buffer, as BigQuery does.

Rows are written the way the functions write them (ingest over the fake: identifies, tracks, event tables,
discards, rejected_messages), plus replays and users_state as their writers leave them; so every table
kind of tables.json that can hold an id is covered, and a new kind fails `test_the_scenario_covers_every_
kind_that_holds_ids` until it is."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import redirect_stderr
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infra.ops import forget as command
from personas_warehouse import forget, forget_sql
from personas_warehouse.app import handle_push
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.errors import TransientError
from personas_warehouse.forget import ForgetError, SuppressionCache, checked_ids, subject_hash
from personas_warehouse.forget_sql import Ids
from personas_warehouse.ingest import ingest
from personas_warehouse.settings import Settings, SpaceConfig
from schemas.tables import spec, table_specs
from tests.fakes import FakeClock, StrictFakeBigQuery
from tests.unit._support import message

KEY = "k" * 32
SETTINGS = Settings(
    forget_hash_key=KEY,
    spaces={"default": SpaceConfig(), "mkt": SpaceConfig(space_ids=("spa_mkt",))},
)
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PROJECT = "personas-test"


class World:
    """The fake BigQuery, a Warehouse over it, and one clock for the buffer, the cache and `now`."""

    def __init__(self, settings: Settings = SETTINGS) -> None:
        self.clock = FakeClock()
        self.fake = StrictFakeBigQuery(PROJECT, clock=self.clock)
        self.warehouse = Warehouse(self.fake, sleep=lambda s: None)  # type: ignore[arg-type]
        self.settings = settings
        self.cache = SuppressionCache(clock=self.clock)
        forget.suppression_cache.put(self.warehouse, self.cache)
        self.messages = 0

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.clock.now)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def send(self, document: Any, space: str | None = None) -> Any:
        self.messages += 1
        attributes = {"space": space} if space else {}
        pushed = message(document, message_id=f"p{self.messages}", attributes=attributes)
        return ingest(pushed, self.warehouse, self.settings, now=self.now)

    def rows(self, table: str, dataset: str = "personas_default") -> list[dict[str, Any]]:
        return self.fake.rows.get(f"{PROJECT}.{dataset}.{table}", [])

    def forget(self, *user_ids: str, anonymous: tuple[str, ...] = (), **kw: Any) -> forget.Report:
        ids = checked_ids(user_ids, anonymous)
        return forget.forget(self.warehouse, self.settings, ids, now=self.now, deadline=Deadline(600), **kw)

    def finish(self) -> dict[str, Any]:
        return forget.finish_pending_forgets(self.warehouse, self.settings, Deadline(600), now=self.now)

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return {k: v for k, v in self.fake.rows.items() if not k.endswith("_view")}


def identify(message_id: str, user: str = "alice", **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "messageId": message_id, "userId": user, "traits": traits or {"plan": "pro"}}


def track(message_id: str, user: str = "alice", event: str = "Audience Entered") -> dict[str, Any]:
    return {"type": "track", "messageId": message_id, "userId": user, "event": event, "properties": {"k": 1}}


def populate(world: World, user: str, prefix: str, space: str | None = None) -> None:
    """Every table a user's calls reach: identifies, tracks, an event table, a discard, a rejection (its
    data holds the id), a replay of that rejection, and the sync's tables (written by its MERGEs)."""
    world.send(identify(f"{prefix}-1", user, score=1), space)
    world.send(identify(f"{prefix}-2", user, score="high"), space)  # "high" into INT64: a discard
    world.send(track(f"{prefix}-3", user), space)
    world.send({"type": "identify", "messageId": f"{prefix}-4", "userId": user, "timestamp": "no"}, space)
    world.send({"type": "track", "messageId": f"{prefix}-5", "anonymousId": f"anon-{user}", "event": "Viewed"}, space)
    ops = world.settings.ops_dataset
    rejected = [r for r in world.rows("rejected_messages", ops) if f'"{user}"' in r["data"]][-1:]
    world.warehouse.ensure_table(ops, "replays", spec("replays"), Deadline(60))
    assert (
        world.fake.insert_rows_json(
            f"{PROJECT}.{ops}.replays",
            [
                {"original_message_id": r["message_id"], "new_message_id": f"new-{prefix}", "source": "rejected"}
                for r in rejected
            ],
            row_ids=[f"replay-{prefix}"] * len(rejected),
        )
        == []
    )
    dataset = f"personas_{space or 'default'}"
    # The sync's tables, written by MERGE: users_state, users_history and the calls it keeps.
    for name, row in (
        ("users_state", {"id": user}),
        ("users_history", {"id": user}),
        ("users_history_calls", {"user_id": user}),
    ):
        world.warehouse.ensure_table(dataset, name, spec(name), Deadline(60))
        world.fake.rows[f"{PROJECT}.{dataset}.{name}"].append({**row, "_bucket": 1})
    world.warehouse.ensure_table(dataset, "identities_state", spec("identities_state"), Deadline(60))
    world.fake.rows[f"{PROJECT}.{dataset}.identities_state"].extend(identities_rows(user, prefix))
    # audience_memberships and its audience_events (MERGE-written): a profile is its user_id, else (an
    # anonymous-only profile) its anonymous_id.
    for kept, first in (("audience_events", {"id": f"{prefix}-3"}), ("audience_memberships", {})):
        world.warehouse.ensure_table(dataset, kept, spec(kept), Deadline(60))
        world.fake.rows[f"{PROJECT}.{dataset}.{kept}"] += [
            {**first, "user_id": user, "anonymous_id": None, "audience_key": "vip", "_bucket": 2},
            {**first, "user_id": None, "anonymous_id": f"anon-{user}", "audience_key": "vip", "_bucket": 3},
        ]


def identities_rows(user: str, prefix: str, anonymous: str | None = None) -> list[dict[str, Any]]:
    """identities_state as the sync's MERGE leaves it after the calls of populate(): the user's profile (its
    userId, and an anonymousId it was seen with) and the anonymous profile, each with a message row."""
    anonymous = anonymous or f"anon-{user}"
    mine, anon = {"user_id": user, "_profile": f"u:{user}"}, {"anonymous_id": anonymous, "_profile": f"a:{anonymous}"}
    return [
        {**mine, "type": "user_id", "value": user, "calls": 3, "_bucket": 2},
        {**mine, "type": "anonymous_id", "value": anonymous, "calls": 1, "_bucket": 2},
        {**mine, "_message": f"{prefix}-1", "_bucket": 2},
        {**anon, "type": "anonymous_id", "value": anonymous, "calls": 1, "_bucket": 3},
        {**anon, "_message": f"{prefix}-5", "_bucket": 3},
    ]


def holding(world: World, *values: str) -> dict[str, int]:
    """Tables with a row that holds any of these values anywhere (an id, or inside a stored call)."""
    found: dict[str, int] = {}
    for key, rows in world.tables().items():
        if key.endswith(("forget_suppressions", "forget_requests")):
            continue
        n = sum(
            any(v == cell or (isinstance(cell, str) and f'"{v}"' in cell) for cell in r.values() for v in values)
            for r in rows
        )
        if n:
            found[key.rsplit(".", 1)[-1] if "personas_default" in key else key.split(".", 1)[1]] = n
    return found


@pytest.fixture
def world() -> Iterator[World]:
    yield World()


# -- every table ------------------------------------------------------------------------------------


def test_the_scenario_covers_every_kind_that_holds_ids(world: World) -> None:
    populate(world, "alice", "a")
    kinds = {k for k, s in table_specs().items() if s.forget and s.forget.none is None}
    made = set()
    for key, rows in world.tables().items():
        name = key.rsplit(".", 1)[-1]
        kind = name if name in table_specs() else "track_event"
        if rows:
            made.add(kind)
    assert kinds - made == set(), "populate() must write a row of every kind that can hold an id"


def test_every_table_kind_says_how_to_forget_a_user_in_it() -> None:
    """A kind added to tables.json without `forget` would be a table forget cannot see into."""
    for kind, table in table_specs().items():
        assert table.forget is not None, f"tables.json: {kind} needs a `forget` (or 'none: why')"
        via = table.forget.via
        for source in via.kinds if via else ():
            assert via is not None and via.key in table_specs()[source].column_names, (kind, source)


def test_forget_deletes_every_row_of_the_user_and_nothing_of_another(world: World) -> None:
    populate(world, "alice", "a")
    populate(world, "bob", "b")
    populate(world, "alice", "am", space="mkt")
    world.advance(31 * 60)  # out of the streaming buffer
    before_bob = holding(world, "bob", "anon-bob")
    assert len(world.rows("discards")) == 2  # alice's and bob's (discards hold the row's id only)
    assert set(holding(world, "alice", "anon-alice")) >= {
        "identifies",
        "tracks",
        "audience_entered",
        "viewed",
        "users_state",
        "audience_memberships",
        "audience_events",
        "personas__ops.rejected_messages",
        "personas_mkt.identifies",
    }

    report = world.forget("alice", anonymous=("anon-alice",))

    assert holding(world, "alice", "anon-alice") == {"personas__ops.forget_pending": 2}  # until it settles
    assert holding(world, "bob", "anon-bob") == before_bob
    assert report.left == 0 and report.found == report.deleted > 0
    found = {(t.dataset, t.table): t.found for t in report.tables if t.found}
    assert found[("personas_default", "discards")] == 1 and found[("personas__ops", "replays")] == 2
    assert found[("personas_mkt", "identifies")] == 2 and found[("personas_default", "users_state")] == 1
    # identities_state: the profiles' rows, message rows included (their _profile names the id too).
    assert found[("personas_default", "identities_state")] == 5
    assert {r["_profile"] for r in world.rows("identities_state")} == {"u:bob", "a:anon-bob"}
    assert found[("personas_default", "audience_memberships")] == found[("personas_default", "audience_events")] == 2
    assert [r["row_id"] for r in world.rows("discards")] == ["b-2"]
    # The replay rows of alice went with her rejections; bob's stayed.
    assert [r["new_message_id"] for r in world.rows("replays", "personas__ops")] == ["new-b"]


def test_an_anonymous_id_is_forgotten_from_the_users_profiles_that_recorded_it(world: World) -> None:
    """identities records a user's anonymousIds as rows of the user's profile: forgetting the anonymousId
    alone deletes those rows and the anonymous profile, and nothing else of the user's."""
    populate(world, "alice", "a")
    world.fake.rows[f"{PROJECT}.personas_default.identities_state"].extend(identities_rows("carol", "c", "anon-alice"))
    world.advance(31 * 60)
    world.forget(anonymous=("anon-alice",))
    left = world.rows("identities_state")
    assert [r for r in left if "anon-alice" in (r.get("anonymous_id"), r.get("value"), r["_profile"][2:])] == []
    assert sorted((r["_profile"], r.get("type") or "", r.get("value") or "") for r in left) == [
        ("u:alice", "", ""),  # a message row
        ("u:alice", "user_id", "alice"),
        ("u:carol", "", ""),
        ("u:carol", "user_id", "carol"),
    ]


def test_a_request_stays_pending_until_in_flight_calls_cannot_land_then_releases_the_ids(world: World) -> None:
    populate(world, "alice", "a")
    world.advance(31 * 60)
    report = world.forget("alice")
    assert report.status == "pending" and report.left == 0
    assert report.settle_after == world.now() + timedelta(seconds=60 + 50 + 60)
    assert world.finish()["finished"] == 0  # too early
    world.advance(171)
    summary = world.finish()
    assert summary == {"pending": 1, "finished": 1, "rows_deleted": 0, "rows_left": 0, "failed": 0}
    assert world.rows("forget_pending", "personas__ops") == []  # the ids in clear are gone
    assert world.finish()["pending"] == 0
    statuses = [r["status"] for r in world.rows("forget_requests", "personas__ops")]
    assert statuses == ["pending", "done"]


# -- BigQuery's streaming buffer -------------------------------------------------------------------


def test_rows_in_the_streaming_buffer_are_left_pending_with_why_then_finished_by_the_sync(world: World) -> None:
    populate(world, "alice", "a")  # all of it streamed just now
    report = world.forget("alice")
    left = {t.table: t for t in report.tables if t.left}
    assert set(left) >= {"identifies", "tracks", "audience_entered", "discards", "rejected_messages", "replays"}
    assert "streaming buffer" in left["discards"].why and "streaming buffer" in left["replays"].why
    # The raw rows are found through discards' row ids: they wait for discards.
    assert left["identifies"].why.startswith("kept until discards is empty")
    assert left["rejected_messages"].why.startswith("kept until replays is empty")
    deleted = {t.table: t.deleted for t in report.tables if t.deleted}
    # By MERGE, never in the buffer (alice's profile).
    assert deleted == {
        "users_state": 1,
        "users_history": 1,
        "users_history_calls": 1,
        "identities_state": 3,
        "audience_memberships": 1,
        "audience_events": 1,
    }
    assert command.main is not None and report.left > 0

    world.advance(20 * 60)
    assert world.finish()["rows_left"] > 0  # still in the buffer (30 minutes)
    world.advance(11 * 60)
    summary = world.finish()
    assert (summary["finished"], summary["rows_left"]) == (1, 0)
    assert holding(world, "alice") == {}


def test_rows_streamed_long_enough_ago_are_deleted_and_the_recent_ones_left(world: World) -> None:
    world.send(identify("old-1"))
    world.advance(40 * 60)
    world.send(identify("new-1"))  # in the buffer: the whole DELETE is refused, then rows older than 30 min go
    report = world.forget("alice")
    [identifies] = [t for t in report.tables if t.table == "identifies"]
    assert (identifies.found, identifies.deleted, identifies.left) == (2, 1, 1)
    assert [r["id"] for r in world.rows("identifies")] == ["new-1"]
    refused = [s for s, _ in world.fake.statements if s.startswith("DELETE") and "identifies" in s]
    assert len(refused) == 2 and "@before" in refused[1]


def test_the_fake_refuses_dml_on_buffered_rows_as_bigquery_does(world: World) -> None:
    world.send(identify("m1"))
    table = f"`{PROJECT}.personas_default.identifies`"
    job = world.fake.query(f"DELETE FROM {table} WHERE `id` IN UNNEST(@ids)", _config(ids=["m1"]))
    with pytest.raises(Exception, match="would affect rows in the streaming buffer, which is not supported"):
        job.result()
    # A DELETE that touches no buffered row goes through.
    assert world.fake.query(f"DELETE FROM {table} WHERE `id` IN UNNEST(@ids)", _config(ids=["x"])).result() == []
    world.advance(30 * 60)
    job = world.fake.query(f"DELETE FROM {table} WHERE `id` IN UNNEST(@ids)", _config(ids=["m1"]))
    job.result()
    assert job.num_dml_affected_rows == 1


def _config(**arrays: list[str]) -> Any:
    from google.cloud import bigquery

    return bigquery.QueryJobConfig(
        query_parameters=[bigquery.ArrayQueryParameter(k, "STRING", v) for k, v in arrays.items()]
    )


# -- batching and cost ------------------------------------------------------------------------------


def test_many_ids_cost_the_statements_of_one(world: World) -> None:
    for i in range(30):
        world.send(identify(f"m{i}", f"user{i}"))
        world.send(track(f"t{i}", f"user{i}"))
    world.advance(31 * 60)
    world.forget("user0")
    one = len(world.fake.statements)
    world.fake.statements.clear()
    report = world.forget(*(f"user{i}" for i in range(1, 30)))
    assert len(world.fake.statements) == one  # one COUNT per dataset, one DELETE per table, whatever the ids
    assert report.deleted == 29 * 3 and world.rows("identifies") == []


# -- kept forgotten ---------------------------------------------------------------------------------


def test_later_calls_of_forgotten_ids_are_acked_and_stored_nowhere(world: World) -> None:
    world.send(identify("m0", "bob"))
    world.forget("alice", anonymous=("anon-carol",))
    world.advance(60)  # the instance's copy of the suppressions is read again
    outcome = world.send(
        {
            "batch": [
                identify("m1"),
                identify("m2", "bob"),
                track("m3"),
                {"type": "identify", "messageId": "m4", "userId": "alice", "timestamp": "no"},
                {"type": "track", "messageId": "m5", "anonymousId": "anon-carol", "event": "Viewed"},
                {"type": "identify", "messageId": "m6", "userId": 42},
            ]
        }
    )
    assert outcome.suppressed == 4 and outcome.rows == {"personas_default.identifies": 2}
    assert [r["id"] for r in world.rows("identifies")] == ["m0", "m2", "m6"]
    assert world.rows("rejected_messages", "personas__ops") == []  # alice's bad call too
    # An integer id is the same user as its decimal string.
    world.forget("42")
    world.advance(60)
    assert world.send(identify("m7", 42)).suppressed == 1  # type: ignore[arg-type]


def test_the_push_log_line_counts_the_dropped_calls(world: World) -> None:
    world.forget("alice")
    world.advance(60)
    import base64

    body = json.dumps(
        {
            "message": {
                "data": base64.b64encode(json.dumps(identify("m1")).encode()).decode(),
                "messageId": "p1",
                "publishTime": "2026-12-01T12:00:00Z",
            },
            "subscription": "s",
        }
    ).encode()
    err = io.StringIO()
    with redirect_stderr(err):
        status = handle_push("POST", body, lambda: world.warehouse, world.settings)
    line = json.loads(err.getvalue().splitlines()[-1])
    assert status[1] == 204 and line["message"] == "push acked" and line["suppressed"] == 1 and line["rows"] == 0


def test_a_space_scoped_request_forgets_and_suppresses_in_that_space_only(world: World) -> None:
    world.send(identify("d1"))
    world.send(identify("k1"), space="mkt")
    world.advance(31 * 60)
    report = world.forget("alice", spaces=["mkt"])
    assert report.spaces == ["mkt"]
    assert [r["id"] for r in world.rows("identifies")] == ["d1"]
    assert world.rows("identifies", "personas_mkt") == []
    world.advance(60)
    assert world.send(identify("d2")).suppressed == 0
    assert world.send(identify("k2"), space="mkt").suppressed == 1


def test_the_copy_of_suppressions_is_at_most_forget_refresh_seconds_old(world: World) -> None:
    world.send(identify("m1", "bob"))  # the instance reads the (empty) list now
    reads = _counting_reads(world)
    world.forget("alice")
    world.advance(59)
    assert world.send(identify("m2")).suppressed == 0  # within the window: still the old copy
    world.advance(1)
    assert world.send(identify("m3")).suppressed == 1
    assert world.send(identify("m4")).suppressed == 1
    assert reads == ["forget_suppressions"]  # one read per window, whatever the traffic


def _counting_reads(world: World) -> list[str]:
    reads: list[str] = []
    original = world.fake.list_rows

    def counting(ref: Any, **kw: Any) -> Any:
        reads.append(str(ref).rsplit(".", 1)[-1])
        return original(ref, **kw)

    world.fake.list_rows = counting  # type: ignore[method-assign]
    return reads


def test_a_failed_read_of_the_suppressions_is_not_written_past(world: World) -> None:
    world.send(identify("m1", "bob"))
    world.advance(60)

    def down(ref: Any, **_: Any) -> Any:
        raise ConnectionError("BigQuery unreachable")

    world.fake.list_rows = down  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        world.send(identify("m2", "bob"))
    assert [r["id"] for r in world.rows("identifies")] == ["m1"]


def test_writes_stop_when_the_key_is_missing_or_another_one(world: World) -> None:
    world.forget("alice")
    for settings in (replace(SETTINGS, forget_hash_key=None), replace(SETTINGS, forget_hash_key="x" * 32)):
        other = World(settings)
        other.fake = world.fake
        other.warehouse = Warehouse(world.fake, sleep=lambda s: None)  # type: ignore[arg-type]
        with pytest.raises(TransientError, match="FORGET_HASH_KEY"):
            ingest(message(identify("m9", "bob")), other.warehouse, settings)
    assert world.rows("identifies") == []


def test_unsuppress_lets_the_ids_in_again_and_cancels_what_was_pending(world: World) -> None:
    world.forget("alice")
    world.advance(60)
    assert world.send(identify("m1")).suppressed == 1
    removed = forget.unsuppress(world.warehouse, world.settings, checked_ids(["alice"], []), now=world.now)
    assert removed == 1 and world.rows("forget_pending", "personas__ops") == []
    world.advance(60)
    assert world.send(identify("m2")).suppressed == 0
    world.advance(31 * 60)
    assert world.finish()["pending"] == 0 and [r["id"] for r in world.rows("identifies")] == ["m2"]
    assert [r["action"] for r in world.rows("forget_requests", "personas__ops")] == ["forget", "unsuppress"]


# -- audit ------------------------------------------------------------------------------------------


def test_the_audit_holds_hashes_and_counts_never_the_ids(world: World) -> None:
    populate(world, "alice", "a")
    world.advance(31 * 60)
    report = world.forget("alice", anonymous=("anon-alice",))
    [row] = world.rows("forget_requests", "personas__ops")
    text = json.dumps(row, default=str)
    assert "alice" not in text
    assert json.loads(row["subject_hashes"]) == [
        subject_hash(KEY.encode(), "user_id", "alice"),
        subject_hash(KEY.encode(), "anonymous_id", "anon-alice"),
    ]
    assert (row["rows_found"], row["rows_deleted"], row["rows_left"]) == (report.found, report.deleted, 0)
    assert json.loads(row["detail"])["tables"]["personas_default"]["identifies"]["deleted"] == 2
    suppressions = world.rows("forget_suppressions", "personas__ops")
    assert "alice" not in json.dumps(suppressions, default=str) and len(suppressions) == 2


# -- refusals and the command -----------------------------------------------------------------------


def test_an_id_with_no_rows_is_reported_and_suppressed(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    world.send(identify("m1", "bob"))
    report = world.forget("nobody")
    assert (report.found, report.left) == (0, 0)
    assert "no row of these ids was found anywhere" in command.render(report)


@pytest.mark.parametrize(
    ("call", "message_text"),
    [
        (lambda w: w.forget(""), "empty user_id"),
        (lambda w: w.forget("   "), "empty user_id"),
        (lambda w: w.forget(), "no id to forget"),
        (lambda w: w.forget("alice", spaces=["nope"]), "no such space: nope"),
        (lambda w: forget.forget(w.warehouse, replace(SETTINGS, forget_hash_key=None), Ids(("a",))), "FORGET_HASH_KEY"),
    ],
)
def test_a_request_that_cannot_start_changes_nothing(world: World, call: Any, message_text: str) -> None:
    world.send(identify("m1"))
    world.fake.statements.clear()
    with pytest.raises(ForgetError, match=message_text):
        call(world)
    assert world.fake.statements == [] and [r["id"] for r in world.rows("identifies")] == ["m1"]


def test_a_dry_run_counts_and_changes_nothing(world: World) -> None:
    populate(world, "alice", "a")
    world.advance(31 * 60)
    before = {k: len(v) for k, v in world.tables().items()}
    report = world.forget("alice", dry_run=True)
    assert report.found > 0 and report.deleted == 0 and report.status == "dry_run"
    assert {k: len(v) for k, v in world.tables().items()} == before
    assert all(s.startswith("SELECT") for s, _ in world.fake.statements)


def test_the_command_reads_ids_files_and_refuses_bad_ones_before_anything(
    tmp_path: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORGET_HASH_KEY", KEY)
    good = tmp_path / "ids.txt"
    good.write_text("alice\n\nbob\n")
    assert command.read_ids(str(good)) == ["alice", "bob"]
    blank = tmp_path / "blank.txt"
    blank.write_text("alice\n  \n")
    made: list[Any] = []
    monkeypatch.setattr(command, "make_client", lambda settings: made.append(settings))
    for argv, why in (
        (["--ids-file", str(tmp_path / "missing.txt")], "cannot read ids file"),
        (["--ids-file", str(blank)], "blank.txt:2: a line of only spaces"),
        (["--user-id", ""], "an empty user_id"),
        (["--anonymous-id", "x" * 1025], "longer than 1024"),
    ):
        assert command.main(argv) == 2
        assert why in capsys.readouterr().err
    assert made == [], "refused before any BigQuery client was made"


def test_the_command_prints_a_table_per_dataset_and_exits_1_while_rows_are_left(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(world, "alice", "a")
    monkeypatch.setenv("FORGET_HASH_KEY", KEY)
    monkeypatch.setattr(command, "make_client", lambda settings: world.fake)
    monkeypatch.setattr(command, "Warehouse", lambda client: world.warehouse)
    assert command.main(["--user-id", "alice", "--project", PROJECT]) == 1  # in the buffer
    out = capsys.readouterr().out
    assert "personas_default\ntable" in out and "personas__ops\ntable" in out and "streaming buffer" in out
    world.advance(31 * 60)
    assert command.main(["--user-id", "alice", "--project", PROJECT, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows_left"] == 0


# -- the patterns that find a call of an id in stored JSON text --------------------------------------


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ('{"userId":"u1","type":"identify"}', True),
        ('{"type": "identify", "userId" : "u1"}', True),
        ('{"userId":"u1"', True),
        ('{"userId":"u1', True),  # cut right after the id
        ('{"userId":"u12"}', False),
        ('{"userId":"xu1"}', False),
        ('{"anonymousId":"u1"}', False),  # u1 is forgotten as a user id only
        ('{"traits":{"friend":"u1"}}', False),
        ('{"batch":[{"userId":"other"},{"userId":"u1"}]}', True),
        ('{"userId":42}', True),
        ('{"userId":"42"}', True),
        ('{"userId":420}', False),
        ('{"userId":"caf\\u00e9"}', True),
        ('{"userId":"café"}', True),
        ('{"userId":"a\\"b"}', True),
    ],
)
def test_call_patterns(text: str, found: bool) -> None:
    import re

    ids = Ids(("u1", "42", "café", 'a"b'))
    assert any(re.search(p, text) for p in forget_sql.call_patterns(ids)) is found


def test_the_key_is_checked_at_start_and_never_printed() -> None:
    from personas_warehouse.settings import ConfigError, load_settings

    with pytest.raises(ConfigError, match="FORGET_HASH_KEY must be at least 32"):
        load_settings({"FORGET_HASH_KEY": "short"})
    with pytest.raises(ConfigError, match="FORGET_REFRESH_SECONDS must be at least 1"):
        load_settings({"FORGET_REFRESH_SECONDS": "0"})
    settings = load_settings({"FORGET_HASH_KEY": KEY, "FORGET_REFRESH_SECONDS": "5"})
    assert (settings.forget_hash_key, settings.forget_refresh_seconds) == (KEY, 5.0)
    assert KEY not in repr(settings)
