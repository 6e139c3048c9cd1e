"""infra.ops.status over in-memory fakes: lag, rows by hour and day, rejections, top discards, the
dead-letter backlog counted without consuming it, and a screen-sized rendering."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from infra.ops import status
from tests.unit._ops_fakes import T0, FakeReader, FakeSubscriber

NOW = T0 + timedelta(hours=2)


def collect(reader: FakeReader, **kwargs: object) -> dict[str, dict[str, object]]:
    data = status.collect(reader, now=lambda: NOW, **kwargs)  # type: ignore[arg-type]
    return {s["space"]: s for s in data["spaces"]}


def test_sync_lag_is_now_minus_the_last_successful_watermark() -> None:
    reader = FakeReader()
    reader.row("mkt", "identifies", "a")
    reader.sync("mkt", "success", T0, watermark=T0 - timedelta(minutes=30))
    reader.sync("mkt", "failure", T0 + timedelta(hours=1), watermark=None)
    mkt = collect(reader)["mkt"]
    assert mkt["users_lag_seconds"] == 2.5 * 3600
    assert (mkt["last_status"], mkt["last_success"]) == ("failure", "2026-11-28T12:00:00Z")


def test_each_derived_table_has_its_last_run_and_an_old_history_row_counts_as_users() -> None:
    reader = FakeReader()
    reader.row("mkt", "identifies", "a")
    reader.sync("mkt", "success", T0, watermark=T0, table=None)  # written before sync_history named tables
    reader.sync("mkt", "failure", T0 + timedelta(hours=1), watermark=None, table="identities")
    tables = collect(reader)["mkt"]["tables"]
    assert tables["users"]["lag_seconds"] == 2 * 3600  # type: ignore[index]
    assert tables["identities"]["last_status"] == "failure" and tables["identities"]["lag_seconds"] is None  # type: ignore[index]


def test_duplicate_user_ids_are_reported_and_none_is_zero() -> None:
    reader = FakeReader()
    for user in ("u1", "u2", "u2", "u3"):
        reader.row("mkt", "users_state", user)
    for user in ("u1", "u2"):
        reader.row("ok", "users_state", user)
    reader.row("fresh", "identifies", "a")  # no users_state yet: unknown, not 0
    by = collect(reader)
    assert (by["mkt"]["duplicate_user_ids"], by["ok"]["duplicate_user_ids"], by["fresh"]["duplicate_user_ids"]) == (
        1,
        0,
        None,
    )
    text = status.render(status.collect(reader, now=lambda: NOW))
    assert "DUPLICATES    mkt: users_state holds 1 extra rows (expected 0)" in text and "DUPLICATES    ok" not in text


def test_a_space_never_synced_has_no_lag() -> None:
    reader = FakeReader()
    reader.row("new", "identifies", "a")
    assert collect(reader)["new"]["users_lag_seconds"] is None


def test_rows_written_in_the_last_hour_and_day_by_loaded_at() -> None:
    reader = FakeReader()
    reader.row("mkt", "identifies", "a", loaded=NOW - timedelta(minutes=10))
    reader.row("mkt", "tracks", "b", loaded=NOW - timedelta(minutes=50))
    reader.row("mkt", "tracks", "c", loaded=NOW - timedelta(hours=5))
    reader.row("mkt", "identifies", "d", loaded=NOW - timedelta(days=2))
    reader.row("mkt", "users", "u1", loaded=NOW)  # not a raw table
    mkt = collect(reader)["mkt"]
    assert (mkt["rows_last_hour"], mkt["rows_last_day"]) == (2, 3)


def test_rejections_by_class_including_the_unrouted() -> None:
    reader = FakeReader()
    reader.row("mkt", "identifies", "a")
    reader.reject("m1", 0, "schema_violation", "mkt", received_at=NOW - timedelta(hours=1))
    reader.reject("m2", 0, "schema_violation", "mkt", received_at=NOW - timedelta(hours=3))
    reader.reject("m3", None, "invalid_json", None, received_at=NOW - timedelta(hours=1))
    reader.reject("m4", None, "invalid_json", "mkt", received_at=NOW - timedelta(days=3))
    by = collect(reader)
    assert by["mkt"]["rejections_24h"] == {"schema_violation": 2}
    assert by[status.UNROUTED]["rejections_24h"] == {"invalid_json": 1}


def test_the_five_most_discarded_columns_per_space() -> None:
    reader = FakeReader()
    for n, column in enumerate(["a", "b", "c", "d", "e", "f"], start=1):
        for _ in range(n):
            reader.discard("mkt", "identifies", column, loaded=NOW - timedelta(hours=1))
    for _ in range(10):
        reader.discard("mkt", "identifies", "old", loaded=NOW - timedelta(days=2))
    top = collect(reader)["mkt"]["top_discards_24h"]
    assert [(d["column"], d["n"]) for d in top] == [("f", 6), ("e", 5), ("d", 4), ("c", 3), ("b", 2)]


def test_dead_letter_backlog_is_counted_without_consuming_it() -> None:
    reader = FakeReader()
    sub = FakeSubscriber([FakeSubscriber.message(f"d{i}", space="mkt" if i % 2 else "sales") for i in range(7)])
    data = status.collect(
        reader, subscriber=sub, dead_letter_subscription="projects/p/subscriptions/dl", now=lambda: NOW
    )
    assert data["dead_letter"]["backlog"] == 7
    assert data["dead_letter"]["by_space"] == {"mkt": 3, "sales": 4}
    assert len(sub.messages) == 7 and not sub.leased and sub.acked == []


def test_dead_letter_backlog_is_unknown_without_a_subscription() -> None:
    data = status.collect(FakeReader(), now=lambda: NOW)
    assert data["dead_letter"]["backlog"] is None
    assert "dead letters: unknown" in status.render(data)


def test_a_bounded_peek_says_at_least() -> None:
    sub = FakeSubscriber([FakeSubscriber.message(f"d{i}") for i in range(7)])
    data = status.collect(FakeReader(), subscriber=sub, dead_letter_subscription="s", now=lambda: NOW, peek_limit=3)
    assert str(data["dead_letter"]["backlog"]).startswith(">=")
    assert len(sub.messages) == 7 and not sub.leased


def test_a_handful_of_queries_whatever_the_number_of_spaces() -> None:
    reader = FakeReader()
    for i in range(30):
        reader.row(f"s{i}", "identifies", "a")
        reader.row(f"s{i}", "tracks", "b")
        reader.discard(f"s{i}", "identifies", "x")
    reader.reject("m1", 0, "schema_violation", "s1")
    reader.sync("s1", "success", T0, T0)
    collect(reader)
    assert len(reader.queries) == 4


def test_render_fits_one_screen_and_json_is_the_same_data(capsys: pytest.CaptureFixture[str]) -> None:
    reader = FakeReader()
    for space in ("marketing", "sales", "support"):
        reader.row(space, "identifies", "a", loaded=NOW - timedelta(minutes=5))
        reader.sync(space, "success", T0, T0)
        reader.discard(space, "identifies", "total_revenue")
        reader.reject("m-" + space, 0, "schema_violation", space, received_at=NOW)
    data = status.collect(reader, now=lambda: NOW)
    text = status.render(data)
    assert len(text.splitlines()) <= 24 and max(len(line) for line in text.splitlines()) <= 100
    assert "marketing" in text and "2h00m" in text and "identifies.total_revenue 1" in text
    assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (5, "5s"), (600, "10m"), (3 * 3600 + 240, "3h04m"), (2 * 86400 + 3 * 3600, "2d03h")],
)
def test_duration(seconds: int | None, text: str) -> None:
    assert status.duration(seconds) == text


def test_a_rejection_before_routing_counts_for_the_space_of_its_attribute() -> None:
    reader = FakeReader()
    reader.reject("m1", 0, "schema_violation", "mkt", space_column=None, received_at=NOW)
    assert collect(reader)["mkt"]["rejections_24h"] == {"schema_violation": 1}
