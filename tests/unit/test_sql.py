"""The users sync's statements stay within BigQuery's 1,024K-character query limit at the full column
budget, with the longest key set a statement can carry (4,000 scattered partitions): columns are split
across several statements, each complete, none over the limit, none lost; a rebuild's first statement
replaces the rows, the others fill their columns into them. And the constant partition filters say what
they mean."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from personas_warehouse import sql
from personas_warehouse.derived import users
from personas_warehouse.derived.frame import PARTITION_BUDGET, Keys, Window, chunks
from personas_warehouse.settings import Settings

BUDGET = Settings().max_columns_per_table
P, D = "personas-test", "personas_default"
KEYS = Keys(tuple(range(0, 2 * PARTITION_BUDGET, 2)), 10_000)  # scattered: the longest filter text
WINDOW = Window(datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC))
Build = Callable[[Sequence[users.Synced], int], str]
BUILDERS: dict[str, Build] = {
    "fold": lambda cols, i: users.fold_sql(P, D, cols, KEYS, WINDOW),
    "rebuild": lambda cols, i: users.rebuild_sql(P, D, cols, i, KEYS, WINDOW),
    "columns from history": lambda cols, i: users.history_sql(P, D, cols, KEYS, WINDOW),
}


def longest_names(count: int) -> list[users.Synced]:
    """Distinct columns of the longest length the naming rule allows (300 characters)."""
    return [users.ROW, *users.synced([f"c{i:05d}_".ljust(300, "x") for i in range(count)])]


def written(statement: str) -> list[str]:
    """The columns a statement writes: its INSERT list, else its UPDATE SET."""
    if "INSERT (" in statement:
        insert = statement.split("WHEN NOT MATCHED THEN INSERT (", 1)[1].split(")", 1)[0]
        return [n for n in re.findall(r"`([^`]+)`", insert) if n not in ("id", sql.BUCKET)]
    sets = statement.split("THEN UPDATE SET ", 1)[1]
    return re.findall(r"(?:^|, )`([^`]+)` = ", sets)


@pytest.mark.parametrize("name", BUILDERS)
def test_full_column_budget_fits_in_query_limit(name: str) -> None:
    columns = longest_names(BUDGET)
    statements = sql.split(BUILDERS[name], columns)
    assert len(statements) > 1, "5,000 columns of 300 characters cannot fit in one statement"
    assert max(len(s) for s in statements) <= sql.MAX_QUERY_CHARS < 1_048_576
    assert [n for s in statements for n in written(s)] == [n for c in columns for n in (c.column, c.asof)]
    if name == "rebuild":
        assert ["ON FALSE" in s for s in statements] == [True] + [False] * (len(statements) - 1)


def test_few_columns_make_one_statement() -> None:
    columns = [users.ROW, *users.synced(["a", "b"])]
    [statement] = sql.split(BUILDERS["fold"], columns)
    assert written(statement) == [
        "received_at",
        "_asof",
        "a",
        users.synced(["a"])[0].asof,
        "b",
        users.synced(["b"])[0].asof,
    ]
    assert "@since" in statement and "@until" in statement


def test_limit_is_honoured_for_any_budget() -> None:
    columns = longest_names(40)
    statements = sql.split(BUILDERS["fold"], columns, max_chars=90_000)
    assert len(statements) > 2
    assert all(len(s) <= 90_000 for s in statements)
    with pytest.raises(ValueError):
        sql.split(BUILDERS["fold"], columns, max_chars=60_000)


def test_as_of_columns_are_hidden_names_the_naming_rule_never_makes() -> None:
    [column] = users.synced(["x" * 300])
    assert column.asof.startswith("_asof_") and len(column.asof) == 22
    assert sql.IDENTIFIER.match(column.asof)


def test_every_statement_names_its_partitions_as_constants_in_the_merge_condition() -> None:
    """BigQuery prunes the target of a MERGE on constant filters of its partitioning column: each statement
    confines source rows and kept rows to the same partitions, and carries no parameter for them."""
    keys = Keys((3, 4, 5, 9), 10_000)
    for build in (users.fold_sql, users.history_sql):
        text = build(P, D, [users.ROW], keys, WINDOW)  # type: ignore[operator]
        on = text.split("\nON ", 1)[1].split("\n", 1)[0]
        assert on == "_old.id = _new.id AND (_old.`_bucket` BETWEEN 3 AND 5 OR _old.`_bucket` IN (9))"
        assert "ABS(MOD(FARM_FINGERPRINT(user_id), 10000)) BETWEEN 3 AND 5 OR" in text
    replace = users.rebuild_sql(P, D, [users.ROW], 0, keys, Window(None, WINDOW.until))
    assert (
        "WHEN NOT MATCHED BY SOURCE AND (_old.`_bucket` BETWEEN 3 AND 5 OR _old.`_bucket` IN (9)) THEN DELETE"
        in replace
    )
    assert "@since" not in replace and "loaded_at <= @until" in replace


@given(st.sets(st.integers(0, 9_999), max_size=300))
def test_the_partition_filter_names_exactly_its_partitions(buckets: set[int]) -> None:
    text = sql.in_buckets("b", buckets)
    named: set[int] = set()
    for low, high in re.findall(r"b BETWEEN (\d+) AND (\d+)", text):
        named.update(range(int(low), int(high) + 1))
    for listed in re.findall(r"b IN \(([\d, ]+)\)", text):
        named.update(int(n) for n in listed.split(","))
    assert named == buckets and (text == "FALSE") == (not buckets)


@given(st.sets(st.integers(0, 9_999)), st.integers(1, 5_000))
def test_chunks_cover_every_partition_once_within_the_budget(buckets: set[int], budget: int) -> None:
    found = chunks(buckets, 10_000, budget)
    assert sorted(b for keys in found for b in keys.buckets) == sorted(buckets)
    assert all(0 < len(keys.buckets) <= budget for keys in found)
