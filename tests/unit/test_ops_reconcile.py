"""infra.ops.reconcile over in-memory fakes: what counts as rows, rejected, missing; duplicates; batching;
exit codes; the publisher's ids file read back."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from infra import publish
from infra.ops import common, queries, reconcile
from infra.ops.reconcile import Call, read_ids, reconcile_ids, reconcile_window
from personas_warehouse.sql import UnsafeIdentifier
from tests.unit._ops_fakes import T0, FakeReader, FakeSubscriber

PUBLISHED_AFTER = T0 - timedelta(minutes=5)  # the rows of _ops_fakes are at T0


def call(pubsub_id: str | None, index: int, call_id: str | None, space: str | None) -> Call:
    """A call as the ids file names it, published after PUBLISHED_AFTER."""
    return Call(pubsub_id, index, call_id, space, PUBLISHED_AFTER)


def spaces(report: reconcile.Report) -> dict[str, dict[str, Any]]:
    return {s["space"]: s for s in report.as_dict()["spaces"]}


def test_each_call_is_rows_rejected_or_missing() -> None:
    reader = FakeReader()
    reader.row("mkt", "identifies", "i1")
    reader.row("mkt", "tracks", "t1")
    reader.reject("p3", 0, "schema_violation", "mkt")
    calls = [
        call("p1", 0, "i1", "mkt"),
        call("p2", 0, "t1", "mkt"),
        call("p3", 0, None, "mkt"),
        call("p4", 0, "gone", "mkt"),
    ]

    report = reconcile_ids(reader, calls)

    mkt = spaces(report)["mkt"]
    assert (mkt["calls"], mkt["rows"], mkt["rejected"], mkt["missing"]) == (4, 2, {"schema_violation": 1}, 1)
    assert mkt["missing_ids"] == [{"pubsub_id": "p4", "call_index": 0, "id": "gone"}]
    assert report.exit_status == 1


def test_nothing_missing_exits_zero() -> None:
    reader = FakeReader()
    reader.row("mkt", "identifies", "i1")
    report = reconcile_ids(reader, [call("p1", 0, "i1", "mkt")])
    assert report.missing == 0 and report.exit_status == 0


def test_rejection_of_one_batch_call_does_not_cover_the_others() -> None:
    reader = FakeReader()
    reader.extra_tables["mkt"] = {"identifies"}
    reader.reject("p1", 1, "schema_violation", "mkt")
    calls = [call("p1", 0, "a", "mkt"), call("p1", 1, "b", "mkt"), call("p1", 2, "c", "mkt")]
    mkt = spaces(reconcile_ids(reader, calls))["mkt"]
    assert (mkt["rejected"], mkt["missing"]) == ({"schema_violation": 1}, 2)


def test_a_whole_message_rejection_covers_every_call_of_it() -> None:
    reader = FakeReader()
    reader.reject("p1", None, "invalid_envelope", None)
    calls = [call("p1", 0, "a", "mkt"), call("p1", 1, "b", "mkt")]
    mkt = spaces(reconcile_ids(reader, calls))["mkt"]
    assert (mkt["rejected"], mkt["missing"]) == ({"invalid_envelope": 2}, 0)


def test_a_row_wins_over_an_older_rejection_of_the_same_call() -> None:
    """Rejected, replayed after a fix, written: it is a row now."""
    reader = FakeReader()
    reader.row("mkt", "identifies", "a")
    reader.reject("p1", 0, "row_refused", "mkt")
    mkt = spaces(reconcile_ids(reader, [call("p1", 0, "a", "mkt")]))["mkt"]
    assert (mkt["rows"], mkt["rejected"]) == (1, {})


def test_duplicate_rows_are_counted_once_per_id() -> None:
    reader = FakeReader()
    for _ in range(3):
        reader.row("mkt", "identifies", "a")  # redelivered twice, insert-id dedup missed
    reader.row("mkt", "tracks", "b")
    calls = [call("p1", 0, "a", "mkt"), call("p1", 0, "a", "mkt"), call("p2", 0, "b", "mkt")]
    mkt = spaces(reconcile_ids(reader, calls))["mkt"]
    assert (mkt["rows"], mkt["duplicate_rows"], mkt["missing"]) == (3, 2, 0)


def test_a_call_without_space_is_found_in_whichever_space_has_it() -> None:
    reader = FakeReader()
    reader.row("other", "identifies", "a")
    reader.row("mkt", "identifies", "zzz")
    report = reconcile_ids(reader, [call("p1", 0, "a", None), call("p2", 0, "b", None)])
    by = spaces(report)
    assert by["other"]["rows"] == 1
    assert by[reconcile.UNKNOWN_SPACE]["missing"] == 1


def test_lookups_are_batched_never_one_query_per_id() -> None:
    reader = FakeReader()
    calls = [call(f"p{i}", 0, f"c{i}", "mkt") for i in range(25)]
    for i in range(0, 25, 2):
        reader.row("mkt", "identifies", f"c{i}")
    reader.row("mkt", "tracks", "c1")
    reader.reject("p3", 0, "schema_violation", "mkt")

    report = reconcile_ids(reader, calls, chunk=10)

    kinds = [q.kind for q in reader.queries]
    assert kinds.count("raw_id_counts") == 3 and kinds.count("rejections_by_message") == 3
    assert all(len(q.param("ids")) <= 10 for q in reader.queries)
    mkt = spaces(report)["mkt"]
    assert (mkt["rows"], mkt["rejected"], mkt["missing"]) == (14, {"schema_violation": 1}, 10)


def test_only_the_spaces_named_are_queried_when_every_call_has_one() -> None:
    reader = FakeReader()
    reader.row("mkt", "identifies", "a")
    reader.row("sales", "identifies", "b")
    reconcile_ids(reader, [call("p1", 0, "a", "mkt")])
    [query] = [q for q in reader.queries if q.kind == "raw_id_counts"]
    assert "personas_sales" not in query.sql and "personas_mkt" in query.sql


def test_ids_mode_reads_each_table_from_the_first_publish_on_never_its_whole_history() -> None:
    reader = FakeReader()
    reader.row("mkt", "identifies", "a", at=T0)
    reader.row("mkt", "identifies", "a", at=T0 - timedelta(days=90))  # an old row with the same id
    reader.row("mkt", "tracks", "b", at=T0)
    reader.reject("p3", 0, "schema_violation", "mkt")
    reader.reject("p3", 0, "schema_violation", "mkt", received_at=T0 - timedelta(days=90))
    calls = [call("p1", 0, "a", "mkt"), call("p2", 0, "b", "mkt"), call("p3", 0, "c", "mkt")]

    mkt = spaces(reconcile_ids(reader, calls))["mkt"]

    assert (mkt["rows"], mkt["duplicate_rows"], mkt["rejected"]) == (2, 0, {"schema_violation": 1})
    since = PUBLISHED_AFTER - reconcile.CLOCK_MARGIN
    assert {q.kind: q.param("since") for q in reader.queries} == {
        "raw_id_counts": since,
        "rejections_by_message": since,
    }
    [rows] = [q for q in reader.queries if q.kind == "raw_id_counts"]
    assert "personas_mkt.identifies` WHERE id IN UNNEST(@ids) AND loaded_at >= @since" in rows.sql
    assert "personas_mkt.tracks` WHERE id IN UNNEST(@ids) AND received_at >= @since" in rows.sql


def test_the_bound_is_the_earliest_publish_and_an_unknown_one_must_be_given() -> None:
    early = Call("p0", 0, "z", "mkt", T0 - timedelta(days=1))
    assert reconcile.lower_bound([call("p1", 0, "a", "mkt"), early]) == T0 - timedelta(days=1) - reconcile.CLOCK_MARGIN
    with pytest.raises(ValueError, match="--since"):
        reconcile.lower_bound([call("p1", 0, "a", "mkt"), Call(None, 0, "plain-id", None)])
    with pytest.raises(ValueError, match="--since"):
        reconcile_ids(FakeReader(), [Call("p1", 0, "a", "mkt")])


def test_main_needs_since_for_an_ids_file_without_publish_times(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reader = FakeReader()
    reader.row("mkt", "identifies", "a")
    monkeypatch.setattr(common, "make_warehouse", lambda project, ops: reader)
    ids = tmp_path / "ids.txt"
    ids.write_text("a\n")  # a plain call id: no publish time
    assert reconcile.main(["--ids-file", str(ids)]) == 2
    assert "--since" in capsys.readouterr().err and reader.queries == []
    assert reconcile.main(["--ids-file", str(ids), "--since", "2026-11-28T00:00:00Z"]) == 0
    assert reader.queries[0].param("since") == datetime(2026, 11, 28, tzinfo=UTC)


def test_window_counts_calls_duplicates_rejections_and_dead_letters_as_missing() -> None:
    reader = FakeReader()
    reader.row("mkt", "identifies", "a", at=T0)
    reader.row("mkt", "identifies", "a", at=T0)
    reader.row("mkt", "tracks", "b", at=T0)
    reader.row("mkt", "tracks", "old", at=T0 - timedelta(days=2))
    reader.reject("p1", 0, "schema_violation", "mkt")
    reader.reject("p1", 0, "schema_violation", "mkt")  # the same rejection recorded twice
    reader.reject("p2", None, "invalid_json", None)
    sub = FakeSubscriber(
        [
            FakeSubscriber.message("d1", at=T0, space="mkt"),
            FakeSubscriber.message("d2", at=T0 - timedelta(days=3), space="mkt"),
        ]
    )
    start, end = T0 - timedelta(hours=1), T0 + timedelta(hours=1)

    report = reconcile_window(
        reader, start, end, subscriber=sub, dead_letter_subscription="projects/p/subscriptions/dl"
    )

    by = spaces(report)
    assert (by["mkt"]["rows"], by["mkt"]["duplicate_rows"], by["mkt"]["rejected"]) == (2, 1, {"schema_violation": 1})
    assert by["mkt"]["missing"] == 1 and by["mkt"]["missing_ids"] == [{"pubsub_id": "d1", "dead_letter": True}]
    assert by["?"]["rejected"] == {"invalid_json": 1}
    assert report.exit_status == 1
    assert set(sub.messages) == {"d1", "d2"} and not sub.leased and not sub.acked, "peeking must not consume"
    assert {q.param("since") for q in reader.queries} == {start - reconcile.CLOCK_MARGIN}


def test_window_without_dead_letters_is_clean() -> None:
    reader = FakeReader()
    reader.row("mkt", "identifies", "a")
    report = reconcile_window(reader, T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    assert report.exit_status == 0 and report.dead_letter == "not checked"


def test_read_ids_reads_what_the_publisher_writes() -> None:
    seen: list[str] = []
    lines = [
        json.dumps({"type": "identify", "userId": "u", "messageId": "m1"}),
        json.dumps({"type": "identify", "userId": "u"}),  # no messageId: only a rejection can explain it
        json.dumps({"type": "track", "userId": "u", "messageId": "m3", "event": "E"}),
    ]
    from tests.unit.test_publish import FakePublisher

    publish.publish_lines(
        lines,
        FakePublisher(),
        "projects/p/topics/t",
        batch=2,
        on_published=lambda mid, ids: seen.append(publish.ids_line(mid, ids, "mkt", T0)),
    )
    calls = read_ids("".join(seen).splitlines())
    assert calls == [Call("1", 0, "m1", "mkt", T0), Call("1", 1, None, "mkt", T0), Call("2", 0, "m3", "mkt", T0)]


def test_read_ids_plain_lines_and_bad_lines() -> None:
    assert read_ids(["abc", "", '{"pubsub_id": "p", "call_ids": []}']) == [
        Call(None, 0, "abc", None),
        Call("p", 0, None, None),
    ]
    with pytest.raises(ValueError, match="line 2"):
        read_ids(["abc", '{"call_ids": ["x"]}'])


def test_values_are_parameters_and_identifiers_are_checked() -> None:
    tables = [queries.SpaceTable("mkt", "personas_mkt", "identifies")]
    query = queries.raw_id_counts("personas-test", tables, ["x'; DROP TABLE users;--"], T0)
    assert "DROP" not in query.sql and "'mkt'" not in query.sql
    assert query.param("s0") == "mkt"
    with pytest.raises(UnsafeIdentifier):
        unsafe = [queries.SpaceTable("x", "personas_x`; --", "identifies")]
        queries.raw_id_counts("personas-test", unsafe, ["a"], T0)


def test_main_prints_json_and_exits_one_when_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reader = FakeReader()
    reader.row("mkt", "identifies", "a")
    monkeypatch.setattr(common, "make_warehouse", lambda project, ops: reader)
    ids = tmp_path / "ids.jsonl"
    ids.write_text(publish.ids_line("p1", ["a"], "mkt", T0) + publish.ids_line("p2", ["never"], "mkt", T0))

    assert reconcile.main(["--ids-file", str(ids), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["totals"] == {"calls": 2, "rows": 1, "rejected": 0, "missing": 1, "duplicate_rows": 0}

    ids.write_text(publish.ids_line("p1", ["a"], "mkt", T0))
    assert reconcile.main(["--ids-file", str(ids)]) == 0
    assert "nothing missing" in capsys.readouterr().out

    ids.write_text("{not json\n")
    assert reconcile.main(["--ids-file", str(ids)]) == 2


def test_main_refuses_half_a_window(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        reconcile.main(["--from", "2026-11-28T00:00:00Z"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        reconcile.main(["--from", "2026-11-28T00:00:00", "--to", "2026-11-29T00:00:00Z"])  # no zone
    assert "time zone" in capsys.readouterr().err
