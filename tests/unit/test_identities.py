"""identities' pure parts: which columns it reads and how (by type), which identifiers a call carries (the
rule, after Segment's identity resolution docs), the statements' confinement to their chunk, and the plan's
answers (selective sync, missing sources, a table where the view goes, columns of other types).

The SQL itself runs on bqemulator in tests/integration/test_identities_*.py and through ZetaSQL in
tests/unit/test_sql_analyzer.py; the oracle those tests use is checked here against payloads from the docs."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personas_warehouse import naming
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.derived import DERIVED, identities
from personas_warehouse.derived.frame import Context, Derived, Keys, Plan, TableResult, Window, run_table
from personas_warehouse.settings import Settings, SpaceConfig
from schemas.tables import spec
from tests import identities_oracle as oracle
from tests.fakes import FakeBigQuery
from tests.unit._support import FAST, fixture

PROJECT, DATASET = "personas-test", naming.space_dataset("default")
KEYS = Keys((3, 4, 5, 9), 10_000)
WINDOW = Window(datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 1, 1, tzinfo=UTC))
EVERY_COLUMN = {
    "email": "STRING",
    "context_traits_email": "STRING",
    "context_device_type": "STRING",
    "context_device_id": "STRING",
    "context_device_advertising_id": "STRING",
    "context_device_ad_tracking_enabled": "BOOL",
    "context_device_token": "STRING",
    "context_external_ids": "STRING",
}


def test_the_columns_read_are_those_ingest_names() -> None:
    """The naming rule, applied to the keys Segment documents, gives the columns identities reads."""
    assert tuple(EVERY_COLUMN) == identities.READ


@pytest.mark.parametrize(
    ("column", "kind", "expected"),
    [
        ("context_device_id", "STRING", "`context_device_id`"),
        ("context_device_id", "INT64", "CAST(`context_device_id` AS STRING)"),  # a numeric id came first
        ("context_device_id", None, "CAST(NULL AS STRING)"),  # no call had one yet
        ("context_device_type", "STRING", "LOWER(`context_device_type`)"),
        ("context_device_ad_tracking_enabled", "BOOL", "`context_device_ad_tracking_enabled`"),
        ("context_device_ad_tracking_enabled", "STRING", "LOWER(`context_device_ad_tracking_enabled`) = 'true'"),
        ("context_device_ad_tracking_enabled", None, "CAST(NULL AS BOOL)"),
        ("context_external_ids", "STRING", "`context_external_ids`"),
        ("email", "INT64", "CAST(`email` AS STRING)"),
    ],
)
def test_each_column_is_read_by_its_type(column: str, kind: str | None, expected: str) -> None:
    read = identities.reading("identifies", {column: kind} if kind else {})
    assert read.columns[column] == expected and read.unreadable == []


@pytest.mark.parametrize(
    ("column", "kind"),
    [
        ("context_device_id", "TIMESTAMP"),
        ("context_device_token", "FLOAT64"),
        ("context_device_type", "INT64"),
        ("context_device_ad_tracking_enabled", "INT64"),
        ("context_external_ids", "BOOL"),  # a list can no longer be stored there: the run says so
        ("email", "BOOL"),
    ],
)
def test_a_column_of_another_type_is_not_read_and_is_named(column: str, kind: str) -> None:
    read = identities.reading("identifies", {column: kind})
    assert read.unreadable == [f"identifies.{column} ({kind})"]
    assert read.columns[column].startswith("CAST(NULL AS ")


def test_tracks_has_no_email_trait() -> None:
    """A track call's traits and properties are in its event's table; tracks holds its context."""
    read = identities.reading("tracks", {"email": "STRING", "context_traits_email": "STRING"})
    assert read.columns["email"] == "CAST(NULL AS STRING)"
    assert read.columns["context_traits_email"] == "`context_traits_email`"


def test_externalids_sent_as_an_object_are_found_in_their_flattened_columns() -> None:
    schema = {f"context_external_ids_k{i:03d}": "STRING" for i in range(80)} | {"context_external_ids": "STRING"}
    read = identities.reading("identifies", schema)
    assert read.object_columns == sorted(schema)[1 : identities.MAX_OBJECT_COLUMNS + 1]
    assert "context_external_ids" not in read.object_columns


def test_the_identifiers_are_segments_promoted_ones() -> None:
    """Segment's defaults (src/unify/identity-resolution/identity-resolution-settings.md in
    segmentio/segment-docs): user_id, anonymous_id, email from traits or context.traits, and per
    context.device.type ios or android: .id from device.id, .idfa from device.advertisingId when
    adTrackingEnabled is true, .push_token from device.token."""
    read = identities.reading("identifies", EVERY_COLUMN).columns
    rules = [i.rule for i in identities.identifiers(read)]
    assert rules == [
        "userId",
        "anonymousId",
        "traits.email (identify)",
        "context.traits.email",
        "context.device.id when context.device.type is ios or android",
        "context.device.advertisingId when context.device.type is ios or android and "
        "context.device.adTrackingEnabled is true",
        "context.device.token when context.device.type is ios or android",
    ]
    idfa = identities.identifiers(read)[5]
    assert "`context_device_ad_tracking_enabled`" in idfa.value
    assert idfa.type == "CONCAT(LOWER(`context_device_type`), '.idfa')"


# -- the statements ---------------------------------------------------------------------------------


def statements() -> dict[str, str]:
    reads = {s: identities.reading(s, EVERY_COLUMN) for s in identities.SOURCES}
    return {
        "fold": identities.fold_sql(PROJECT, DATASET, reads, KEYS, WINDOW),
        "rebuild": identities.rebuild_sql(PROJECT, DATASET, reads, KEYS, WINDOW),
    }


@pytest.mark.parametrize("kind", ["fold", "rebuild"])
def test_a_statement_reads_and_writes_only_its_chunk(kind: str) -> None:
    text = statements()[kind]
    assert text.startswith(f"MERGE `{PROJECT}.{DATASET}.identities_state` AS _old")
    # Source rows: by their profile's partition, and within the window; every source table is read.
    assert text.count(KEYS.rows("_profile")) == 1 and text.count(WINDOW.rows()) == 2
    for source in identities.SOURCES:
        assert f"FROM `{PROJECT}.{DATASET}.{source}` WHERE" in text
    # The kept table: only its chunk's partitions, wherever it is read or written.
    kept = re.findall(r"identities_state` AS (\w+)", text)
    for alias in kept:
        assert KEYS.partitions(alias) in text, alias
    assert f"{KEYS.bucket('_new._profile')})" in text  # inserted rows land in their profile's partition
    assert set(re.findall(r"@(\w+)", text)) == {"since", "until"}


def test_the_fold_counts_only_calls_it_has_not_folded() -> None:
    fold = statements()["fold"]
    assert "_s._message IS NOT NULL" in fold and "WHERE f._message IS NULL" in fold  # message rows of the chunk
    assert "COUNT(DISTINCT _counted)" in fold and "calls = _old.calls + _new.calls" in fold
    assert "LEAST(_old.first_seen_at, _new.first_seen_at)" in fold
    rebuild = statements()["rebuild"]
    assert "ON FALSE" in rebuild and "COUNT(DISTINCT _message)" in rebuild and "identities_state` AS _s" not in rebuild


def test_the_view_shows_identifier_rows_only() -> None:
    query = identities.identities_view_query(PROJECT, DATASET)
    assert query.endswith("WHERE type IS NOT NULL")
    assert [c.name for c in spec("identities").columns] == list(identities.SHOWN)
    state = [c.name for c in spec("identities_state").columns]
    assert state == [*identities.SHOWN, *identities.HIDDEN]


def test_identities_is_registered_and_kept_like_every_derived_table() -> None:
    assert identities.IDENTITIES in DERIVED
    assert spec("identities_state").buckets == 10_000 and spec("identities_state").partition_field is None


# -- the plan -----------------------------------------------------------------------------------------


def plan_for(tables: dict[str, dict[str, str]], config: SpaceConfig | None = None, *, view: str | None = None) -> Any:
    client = FakeBigQuery(PROJECT)
    warehouse = Warehouse(client)  # type: ignore[arg-type]
    deadline = Deadline(60)
    for name, columns in tables.items():
        warehouse.ensure_table(DATASET, name, spec(name), deadline)
        extra = {c: t for c, t in columns.items() if c not in spec(name).column_names}
        if extra:
            warehouse.add_columns(DATASET, name, extra, deadline)
    if view == "table":
        warehouse.ensure_table(DATASET, "identities", spec("users_state"), deadline)
    settings = Settings(project=PROJECT)
    context = Context(warehouse, settings, "default", config or SpaceConfig(), DATASET, deadline, None)
    return identities.IDENTITIES.plan(context)


@pytest.mark.parametrize("derived", DERIVED, ids=lambda d: d.name)
def test_every_derived_table_is_switched_off_by_selective_sync_before_its_plan(derived: Derived) -> None:
    """The frame asks the space's config, in one place for every derived table: a table switched off is never
    planned (this fake answers no query, so any statement would raise)."""
    client = FakeBigQuery(PROJECT)
    off = SpaceConfig(disabled_tables=frozenset({derived.name}))
    context = Context(Warehouse(client), Settings(project=PROJECT), "default", off, DATASET, Deadline(60), None)  # type: ignore[arg-type]
    result = TableResult("default", derived.name, derived.layout)
    run_table(derived, context, datetime.now(UTC), result)
    assert (result.status, result.error) == ("skipped", f"{derived.name} is disabled by selective sync")
    assert not client.tables and not client.datasets  # a plan would have laid out its kept table


def test_nothing_to_read_yet() -> None:
    assert plan_for({}) == "no identifies or tracks table yet"


def test_a_table_where_the_view_goes_is_refused() -> None:
    with pytest.raises(RuntimeError, match="not a view"):
        plan_for({"identifies": {}}, view="table")


def test_columns_it_cannot_read_make_the_run_partial_and_counts_go_to_the_report() -> None:
    plan = plan_for({"identifies": {"context_device_id": "TIMESTAMP"}, "tracks": EVERY_COLUMN})
    assert isinstance(plan, Plan)
    assert plan.partial and "identifies.context_device_id (TIMESTAMP)" in plan.partial
    assert [s.table for s in plan.sources] == ["identifies", "tracks"]
    assert [name for name, _ in plan.sources[0].counts] == [
        identities.NOT_A_LIST,
        identities.INVALID_ENTRIES,
        identities.OVER_LIMIT,
        identities.TOO_LONG,
    ]
    assert plan_for({"tracks": {}}).sources[0].table == "tracks"  # tracks alone is enough


# -- the rule, on the docs' payloads (the oracle the integration tests hold the SQL to) -----------------


def test_the_spec_s_ios_device_gives_its_mobile_ids() -> None:
    """context.device as Segment's Spec shows it (src/connections/spec/common.md)."""
    found, left = oracle.carried(fixture("identify_mobile_ids.json"))
    assert {(t, v) for t, v, _, _ in found} == {
        ("user_id", "u-1001"),
        ("anonymous_id", "anon-77"),
        ("email", "ada@example.com"),
        ("ios.id", "B5372DB0-C21E-11E4-8DFC-AA07A5B093DB"),
        ("ios.idfa", "7A3CBEA0-BDF5-11E4-8DFC-AA07A5B093DB"),
        ("ios.push_token", "ff15bc0c20c4aa6cd50854ff165fd265c838e5405bfeb9571066395b8c9da449"),
    }
    assert left == Counter()


def test_an_android_advertising_id_without_ad_tracking_is_not_an_identifier() -> None:
    found, _ = oracle.carried(fixture("track_mobile_ids_android.json"))
    assert {t for t, _, _, _ in found} == {"anonymous_id", "email", "android.id", "android.push_token"}


def test_externalids_entries_keep_collection_and_encoding() -> None:
    """The example of src/unify/identity-resolution/externalids.md, and an accounts-level entry."""
    found, left = oracle.carried(fixture("track_external_ids.json"))
    assert ("phone", "123-456-7890", "users", "none") in found
    assert ("group_id", "acme", "accounts", "none") in found and left == Counter()


def test_bad_externalids_are_left_out_and_counted() -> None:
    found, left = oracle.carried(fixture("identify_bad_external_ids.json"))
    assert [(t, v) for t, v, _, _ in found if t not in ("user_id", "anonymous_id")] == [("crm_id", "c-1")]
    assert left == Counter({identities.INVALID_ENTRIES: 6, identities.TOO_LONG: 1})


# -- bad input: left out and counted, never an error (the table the SQL is held to in test_identities_e2e) ---

L = identities.MAX_IDENTIFIER_CHARS
N = identities.MAX_EXTERNAL_IDS
NOT_A_LIST, INVALID, OVER, LONG = (
    identities.NOT_A_LIST,
    identities.INVALID_ENTRIES,
    identities.OVER_LIMIT,
    identities.TOO_LONG,
)


def _entry(value: Any = "v", kind: Any = "crm_id", **more: Any) -> dict[str, Any]:
    return {"id": value, "type": kind, **more}


def _ids(n: int) -> list[dict[str, Any]]:
    return [_entry(f"e{i}") for i in range(n)]


Found = list[tuple[str, str, str, str]]

BAD_INPUT: list[tuple[str, dict[str, Any], Found, dict[str, int]]] = [
    # externalIds that is not a list
    ("a string", {"externalIds": "not a list"}, [], {NOT_A_LIST: 1}),
    ("a number", {"externalIds": 12345}, [], {NOT_A_LIST: 1}),
    ("true", {"externalIds": True}, [], {NOT_A_LIST: 1}),
    ("an object (flattened by ingest)", {"externalIds": _entry("x")}, [], {NOT_A_LIST: 1}),
    ("an object of nulls (no column)", {"externalIds": {"id": None}}, [], {}),
    ("null", {"externalIds": None}, [], {}),
    ("an empty list", {"externalIds": []}, [], {}),
    # entries without id or type, or not strings
    ("no id", {"externalIds": [{"type": "crm_id"}]}, [], {INVALID: 1}),
    ("no type", {"externalIds": [{"id": "x"}]}, [], {INVALID: 1}),
    ("a null type", {"externalIds": [_entry("x", None)]}, [], {INVALID: 1}),
    ("a number id", {"externalIds": [_entry(42)]}, [], {INVALID: 1}),
    ("a float id", {"externalIds": [_entry(4.2)]}, [], {INVALID: 1}),
    ("a boolean id", {"externalIds": [_entry(True)]}, [], {INVALID: 1}),
    ("a list id", {"externalIds": [_entry(["x"])]}, [], {INVALID: 1}),
    ("an object id", {"externalIds": [_entry({"id": "x"})]}, [], {INVALID: 1}),
    ("a number type", {"externalIds": [_entry("x", 7)]}, [], {INVALID: 1}),
    ("an empty id", {"externalIds": [_entry("")]}, [], {INVALID: 1}),
    ("an empty type", {"externalIds": [_entry("x", "")]}, [], {INVALID: 1}),
    ("entries that are not objects", {"externalIds": [None, [], "x", 5, {}]}, [], {INVALID: 5}),
    (
        "the good entry among bad ones is kept",
        {"externalIds": [{"type": "crm_id"}, _entry("c-1"), _entry(1)]},
        [("crm_id", "c-1", "users", "none")],
        {INVALID: 2},
    ),
    (
        "collection and encoding that are not strings become the defaults",
        {"externalIds": [_entry("x", collection=5, encoding=None)]},
        [("crm_id", "x", "users", "none")],
        {},
    ),
    # thousands of entries: the first MAX_EXTERNAL_IDS are read, the rest counted
    ("exactly the limit", {"externalIds": _ids(N)}, [("crm_id", f"e{i}", "users", "none") for i in range(N)], {}),
    ("one over", {"externalIds": _ids(N + 1)}, [("crm_id", f"e{i}", "users", "none") for i in range(N)], {OVER: 1}),
    (
        "thousands",
        {"externalIds": _ids(5_000)},
        [("crm_id", f"e{i}", "users", "none") for i in range(N)],
        {OVER: 5_000 - N},
    ),
    (
        "bad entries past the limit are over the limit, not invalid",
        {"externalIds": [*_ids(N), {}, {}]},
        [("crm_id", f"e{i}", "users", "none") for i in range(N)],
        {OVER: 2},
    ),
    # identifiers longer than MAX_IDENTIFIER_CHARS (every part of one: type, value, collection, encoding)
    ("an id at the bound", {"externalIds": [_entry("x" * L)]}, [("crm_id", "x" * L, "users", "none")], {}),
    ("an id over it", {"externalIds": [_entry("x" * (L + 1))]}, [], {LONG: 1}),
    ("a type over it", {"externalIds": [_entry("x", "t" * (L + 1))]}, [], {LONG: 1}),
    ("a collection over it", {"externalIds": [_entry("x", collection="c" * (L + 1))]}, [], {LONG: 1}),
    ("an encoding over it", {"externalIds": [_entry("x", encoding="e" * (L + 1))]}, [], {LONG: 1}),
    ("a long id without a type is invalid", {"externalIds": [{"id": "x" * (L + 1)}]}, [], {INVALID: 1}),
    ("a context email over it", {"traits": {"email": "e" * (L + 1)}}, [], {LONG: 1}),
    ("an ios device id over it", {"device": {"type": "ios", "id": "d" * (L + 1)}}, [], {LONG: 1}),
    ("a push token over it", {"device": {"type": "android", "token": "t" * (L + 1)}}, [], {LONG: 1}),
    ("a web device id is no identifier, long or not", {"device": {"type": "web", "id": "d" * (L + 1)}}, [], {}),
    ("an empty device id", {"device": {"type": "ios", "id": ""}}, [], {}),
    (
        "an advertising id without ad tracking is no identifier, long or not",
        {"device": {"type": "ios", "advertisingId": "a" * (L + 1), "adTrackingEnabled": False}},
        [],
        {},
    ),
]


@pytest.mark.parametrize(("context", "found", "counts"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_left_out_and_counted(context: dict[str, Any], found: Found, counts: dict[str, int]) -> None:
    """The rule (tests/identities_oracle.py, which the integration tests hold the SQL to) on each kind of
    bad input the issue names: what is kept, and what goes to the run's report under which count."""
    call = {"type": "track", "messageId": "m", "userId": "u", "context": context}
    got, left = oracle.carried(call)
    assert got[0] == ("user_id", "u", "users", "none") and got[1:] == found
    assert left == Counter(counts)


def test_the_report_counts_are_the_ones_the_sql_sums() -> None:
    """counts(): one SQL expression per count the oracle keeps, with the same bounds, over the read columns
    and any context_external_ids_* column (externalIds once sent as an object)."""
    read = identities.reading("identifies", EVERY_COLUMN | {"context_external_ids_id": "STRING"})
    sql = dict(identities.counts(read))
    assert list(sql) == [NOT_A_LIST, INVALID, OVER, LONG]
    assert "OR `context_external_ids_id` IS NOT NULL" in sql[NOT_A_LIST]
    assert f"WITH OFFSET AS _n WHERE _n < {N})" in sql[INVALID] and f"- {N}, 0)" in sql[OVER]
    assert f"> {L}, 1, 0)" in sql[LONG] and f"<= {L}" in sql[LONG]
    # Each read identifier but userId and anonymousId (1,024 characters at most, schemas/calls.py) is measured.
    measured = [i.value for i in identities.identifiers(read.columns)][2:]
    assert all(f"LENGTH({v}) > {L}" in sql[LONG] for v in measured)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
texts = st.sampled_from(["", "x", "x" * L, "x" * (L + 1)]) | st.text(max_size=8)
entries = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"id": texts | json_values, "type": texts | json_values},
        optional={"collection": texts | json_values, "encoding": texts | json_values},
    ),
)


@FAST
@given(external=st.lists(entries, max_size=N + 20) | json_values)
def test_any_externalids_is_read_or_counted_never_an_error(external: Any) -> None:
    """Whatever externalIds holds: every entry read is an identifier or counted once (invalid or too long),
    every entry past the limit is counted once, and what is kept is text within the bound (type and value
    non-empty)."""
    found, left = oracle.carried({"type": "identify", "messageId": "m", "context": {"externalIds": external}})
    assert set(left) <= {NOT_A_LIST, INVALID, OVER, LONG}
    for kind, value, *rest in found:  # a collection or encoding is kept as sent, "" included
        assert kind and value and all(isinstance(t, str) and len(t) <= L for t in (kind, value, *rest))
    if isinstance(external, list):
        assert left[OVER] == max(len(external) - N, 0) and NOT_A_LIST not in left
        assert len(found) + left[INVALID] + left[LONG] == min(len(external), N)
    else:
        # Ingest flattens an object into context_external_ids_* columns; only null values make none.
        nothing = external is None or (isinstance(external, dict) and all(v is None for v in external.values()))
        assert found == [] and left == (Counter() if nothing else Counter({NOT_A_LIST: 1}))
