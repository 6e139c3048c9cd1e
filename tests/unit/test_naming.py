"""naming: the one rule that makes every dataset, table and column name."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from personas_warehouse import naming
from schemas.tables import spec
from tests.unit._support import FAST, THOROUGH, odd_keys

SAFE = re.compile(r"^[a-z_][a-z0-9_]*$")
CANONICAL = r"[a-z][a-z0-9]{0,20}(_[a-z0-9]{1,20}){0,6}"
RESERVED = ("_table_", "_file_", "_partition", "_row_timestamp", "__root__", "_colon_")
IDENTIFY_TAKEN = spec("identifies").column_names
TRACK_TAKEN = spec("tracks").column_names
FIXED_TABLES = frozenset({"identifies", "tracks", "discards", "users"})


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def trait_column(key: str) -> str:
    """How shaping names a top-level trait of an identify call."""
    return naming.column_name((key,), taken=IDENTIFY_TAKEN, taken_prefixes=("context_",))


# --- snake_case ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("userID", "user_id"),
        ("HTTPServer", "http_server"),
        ("getHTTPResponseCode", "get_http_response_code"),
        ("HTTP2Server", "http2_server"),
        ("ABCDef", "abc_def"),
        ("aBC", "a_bc"),
        ("iOS", "i_os"),
        ("totalRevenue180Days", "total_revenue180_days"),
        ("a1B2c3", "a1_b2c3"),
        ("A1", "a1"),
        ("MiXeD_Case-Key", "mi_xe_d_case_key"),
        ("Audience Entered", "audience_entered"),
        ("first name", "first_name"),
        ("  spaced  out ", "spaced_out"),
        ("a--b__c", "a_b_c"),
        ("x.y", "x_y"),
        ("price ($)", "price"),
        ("...dots...", "dots"),
        ("already_snake_case", "already_snake_case"),
        ("café", "cafe"),
        ("Ñandú", "nandu"),
        ("Straße", "strae"),  # ß has no ASCII decomposition: dropped
        ("ﬁle", "file"),  # ligature decomposes
        ("ＡＢＣ", "abc"),  # full-width letters decompose
        ("имя", ""),
        ("🎉", ""),
        ("🎉party🎉", "party"),
        ("", ""),
        ("!!!", ""),
        ("123abc", "123abc"),
        ("_TABLE_x", "table_x"),
        ("__ROOT__", "root"),
        ("_PARTITIONTIME", "partitiontime"),
        ("ID", "id"),
        ("Id", "id"),
    ],
)
def test_snake_case(key: str, expected: str) -> None:
    assert naming.snake_case(key) == expected


# --- column_name -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("firstName", "first_name"),
        ("HTTPServer", "http_server"),
        ("Audience Entered", "audience_entered"),
        ("123abc", "_123abc"),
        ("1", "_1"),
        ("2nd place", "_2nd_place"),
        # base columns of identifies are taken: the trait gets a `_` prefix
        ("id", "_id"),
        ("ID", "_id"),
        ("userID", "_user_id"),
        ("user_id", "_user_id"),
        ("anonymousId", "_anonymous_id"),
        ("received_at", "_received_at"),
        ("receivedAt", "_received_at"),
        ("sentAt", "_sent_at"),
        ("originalTimestamp", "_original_timestamp"),
        ("timestamp", "_timestamp"),
        ("loaded_at", "_loaded_at"),
        # `context_` belongs to context columns
        ("context_foo", "_context_foo"),
        ("contextFoo", "_context_foo"),
        ("Context Foo", "_context_foo"),
        ("context", "context"),
        ("contextual", "contextual"),
        # reserved BigQuery prefixes cannot survive snake-casing (leading `_` are stripped)
        ("_TABLE_x", "table_x"),
        ("_file_y", "file_y"),
        ("_PARTITIONTIME", "partitiontime"),
        ("_Row_Timestamp", "row_timestamp"),
        ("__ROOT__", "root"),
        ("_COLON_z", "colon_z"),
        # nothing nameable left: `_` plus a hash of the key
        ("", "_" + digest("")),
        ("!!!", "_" + digest("!!!")),
        ("🎉", "_" + digest("🎉")),
        ("имя", "_" + digest("имя")),
        ("x" * 300, "x" * 300),
    ],
)
def test_trait_column_name(key: str, expected: str) -> None:
    assert trait_column(key) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("address", "city"), "address_city"),
        (("Address", "zipCode"), "address_zip_code"),
        (("context", "app", "version"), "context_app_version"),
        (("", "city"), "city"),
        (("🎉", "city"), "city"),
        (("a", "🎉"), "a"),
        (("1", "a"), "_1_a"),
        (("🎉", "🎉"), "_" + digest("🎉\x1f🎉")),
        ((), "_" + digest("")),
    ],
)
def test_column_name_of_paths(path: tuple[str, ...], expected: str) -> None:
    assert naming.column_name(path) == expected


@pytest.mark.parametrize(
    ("taken", "key", "expected"),
    [
        # a `_` prefix that lands on a reserved prefix gets another one
        (frozenset({"table_x"}), "table_x", "__table_x"),
        (frozenset({"file_x"}), "fileX", "__file_x"),
        (frozenset({"partition"}), "Partition", "__partition"),
        (frozenset({"partitiontime"}), "_PARTITIONTIME", "__partitiontime"),
        (frozenset({"row_timestamp"}), "rowTimestamp", "__row_timestamp"),
        (frozenset({"colon_a"}), "colon a", "__colon_a"),
        # a prefixed name that is itself taken gets prefixed again
        (frozenset({"a", "_a"}), "a", "__a"),
        (frozenset({"a", "_a", "__a"}), "A", "___a"),
        (frozenset({"b"}), "a", "a"),
    ],
)
def test_column_name_prefix_loop(taken: frozenset[str], key: str, expected: str) -> None:
    assert naming.column_name((key,), taken=taken) == expected


def test_track_base_columns_are_taken_for_properties() -> None:
    taken = TRACK_TAKEN
    assert naming.column_name(("event",), taken=taken) == "_event"
    assert naming.column_name(("eventText",), taken=taken) == "_event_text"
    assert naming.column_name(("Event",), taken=IDENTIFY_TAKEN) == "event"


def test_long_names_are_cut_and_suffixed_with_hash_of_full_name() -> None:
    name = "x" * 301
    assert naming.column_name((name,)) == "x" * 291 + "_" + digest(name)
    prefixed = "_1" + "y" * 400
    result = naming.column_name(("1" + "y" * 400,))
    assert result == prefixed[:291] + "_" + digest(prefixed)
    assert len(result) == 300


def test_long_names_differing_only_at_the_end_differ() -> None:
    a = naming.column_name(("a" * 400 + "b",))
    b = naming.column_name(("a" * 400 + "c",))
    assert a != b
    assert a[:291] == b[:291]


def test_cut_names_are_stable_under_the_rule() -> None:
    first = naming.column_name(("a" * 290 + "_" + "b" * 50,))
    assert "__" not in first
    assert naming.column_name((first,)) == first


# --- event_table_name ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ("Audience Entered", "audience_entered"),
        ("Audience Exited", "audience_exited"),
        ("Trait Computed", "trait_computed"),
        ("Order Completed (v2)", "order_completed_v2"),
        ("Identifies", "_identifies"),
        ("identifies", "_identifies"),
        ("Tracks", "_tracks"),
        ("Users", "_users"),
        ("DISCARDS", "_discards"),
        ("Track Event", "track_event"),
        ("3D Secure Passed", "_3_d_secure_passed"),  # digit then capital splits, as in total_revenue180_days
        ("🎉", "_" + digest("🎉")),
        ("   ", "_" + digest("   ")),
        ("x" * 1019, "x" * 1019),  # room is left for the `_view` suffix
    ],
)
def test_event_table_name(event: str, expected: str) -> None:
    assert naming.event_table_name(event, taken=FIXED_TABLES) == expected


def test_event_table_name_long() -> None:
    event = "e" * 1100
    assert naming.event_table_name(event, taken=FIXED_TABLES) == "e" * 1010 + "_" + digest(event)


# --- space slugs and datasets ----------------------------------------------------------------------


@pytest.mark.parametrize("slug", ["default", "marketing", "a", "0", "9lives", "eu_west_1", "a_", "a" * 100])
def test_space_dataset_of_safe_slug(slug: str) -> None:
    assert naming.is_space_slug(slug)
    assert naming.space_dataset(slug) == "personas_" + slug
    assert naming.is_space_dataset("personas_" + slug)
    assert naming.space_of_dataset("personas_" + slug) == slug


@pytest.mark.parametrize(
    "slug",
    ["", "Bad", "Bad-Space", "a-b", "a;drop", "_x", "-x", "a b", "café", "a" * 101, "a.b", "a`b", " a", "a\tb"],
)
def test_space_dataset_rejects_unsafe_slug(slug: str) -> None:
    assert not naming.is_space_slug(slug)
    with pytest.raises(ValueError, match="Not a safe space slug"):
        naming.space_dataset(slug)


@pytest.mark.parametrize("slug", ["abc\n", "marketing\n"])
def test_space_slug_rejects_trailing_newline(slug: str) -> None:
    assert not naming.is_space_slug(slug)
    with pytest.raises(ValueError):
        naming.space_dataset(slug)


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ("personas_default", True),
        ("personas_marketing", True),
        ("personas__ops", False),  # the default ops dataset can never be a space's
        ("personas_", False),
        ("personas_Bad", False),
        ("personas_a-b", False),
        ("Personas_x", False),
        ("ops", False),
        ("personasx", False),
        ("personas_" + "a" * 101, False),
    ],
)
def test_is_space_dataset(dataset: str, expected: bool) -> None:
    assert naming.is_space_dataset(dataset) is expected


# --- properties ------------------------------------------------------------------------------------

paths = st.lists(odd_keys | st.text(), min_size=1, max_size=4).map(tuple)
taken_sets = st.frozensets(
    st.sampled_from(sorted(IDENTIFY_TAKEN | TRACK_TAKEN | {"a", "_a", "table_x", "partition", "file"}))
    | st.from_regex(r"\A[a-z_][a-z0-9_]{0,10}\Z"),
    max_size=6,
)
prefix_sets = st.sampled_from([(), ("context_",), ("context_", "a")])


@THOROUGH
@given(paths, taken_sets, prefix_sets)
def test_column_names_are_always_legal(path: tuple[str, ...], taken: frozenset[str], prefixes: tuple[str, ...]) -> None:
    name = naming.column_name(path, taken=taken, taken_prefixes=prefixes)
    assert SAFE.match(name), name
    assert len(name) <= naming.MAX_COLUMN_LENGTH
    assert not name.lower().startswith(RESERVED)
    assert name not in taken
    if prefixes:
        assert not name.startswith(prefixes)
    # deterministic, also for an equal path built anew (and past the naming cache)
    assert naming.column_name(tuple(list(path)), taken=taken, taken_prefixes=prefixes) == name
    uncached = getattr(naming.safe_name, "__wrapped__", naming.safe_name)
    assert uncached(path, taken=taken, taken_prefixes=prefixes) == name


@FAST
@given(st.text(max_size=1200), st.frozensets(st.from_regex(r"\A[a-z_][a-z0-9_]{0,10}\Z"), max_size=4))
def test_table_names_are_always_legal(event: str, taken: frozenset[str]) -> None:
    name = naming.event_table_name(event, taken=taken | FIXED_TABLES)
    assert SAFE.match(name), name
    assert len(name) <= naming.MAX_TABLE_LENGTH
    assert name not in FIXED_TABLES and name not in taken
    assert naming.event_table_name(event, taken=taken | FIXED_TABLES) == name


@FAST
@given(st.from_regex(rf"\A{CANONICAL}\Z"))
def test_canonical_names_that_are_not_taken_are_kept(name: str) -> None:
    assume(name not in IDENTIFY_TAKEN and not name.startswith("context_"))
    assert naming.column_name((name,)) == name
    assert trait_column(name) == name
    if name not in FIXED_TABLES:
        assert naming.event_table_name(name, taken=FIXED_TABLES) == name


@FAST
@given(st.text(max_size=250))
def test_rule_is_idempotent_on_its_own_short_output(key: str) -> None:
    first = trait_column(key)
    assume(not first.startswith("_"))  # `_`-prefixed names are marked, not canonical
    assert trait_column(first) == first


@FAST
@given(
    st.lists(st.text(alphabet="bcdefgh", min_size=1, max_size=20), min_size=2, max_size=2, unique=True),
    st.integers(min_value=282, max_value=400),
)
def test_different_long_names_give_different_columns(suffixes: list[str], stem: int) -> None:
    first, second = ("a" * stem + "_" + s for s in suffixes)
    assert naming.column_name((first,)) != naming.column_name((second,))


@FAST
@given(st.from_regex(r"\A[a-z0-9][a-z0-9_]{0,99}\Z"))
def test_space_dataset_round_trip(slug: str) -> None:
    dataset = naming.space_dataset(slug)
    assert naming.is_space_dataset(dataset)
    assert naming.space_of_dataset(dataset) == slug
    assert naming.DATASET_NAME.match(dataset)


@FAST
@given(st.text(max_size=110))
def test_space_dataset_only_for_slugs(slug: str) -> None:
    assume("\n" not in slug)  # see test_space_slug_rejects_trailing_newline
    if re.fullmatch(r"[a-z0-9][a-z0-9_]{0,99}", slug):
        assert naming.space_dataset(slug) == "personas_" + slug
    else:
        with pytest.raises(ValueError):
            naming.space_dataset(slug)


@pytest.mark.parametrize(
    ("first", "second"),
    [("имя1", "фамилия1"), ("日本", "中国"), ("Straße", "Strae")],
)
def test_keys_whose_letters_have_no_ascii_form_never_share_a_column(first: str, second: str) -> None:
    a, b = naming.column_name((first,)), naming.column_name((second,))
    assert a != b
    assert SAFE.match(a) and SAFE.match(b)
    assert naming.column_name((first,)) == a  # still deterministic


def test_accents_alone_keep_the_plain_name() -> None:
    assert naming.column_name(("Café Crème",)) == "cafe_creme"


@pytest.mark.parametrize(
    ("event", "table"),
    [("Tracks View", "_tracks_view"), ("identifies_view", "_identifies_view"), ("Page View", "_page_view")],
)
def test_event_tables_never_take_a_view_name(event: str, table: str) -> None:
    assert naming.event_table_name(event, taken=frozenset({"identifies", "tracks"})) == table


@given(st.text(min_size=1, max_size=1200))
def test_event_tables_leave_room_for_their_view(event: str) -> None:
    name = naming.event_table_name(event, taken=frozenset())
    assert len(naming.view_name(name)) <= naming.MAX_TABLE_LENGTH
    assert not name.endswith(naming.VIEW_SUFFIX) or name.startswith("_")
