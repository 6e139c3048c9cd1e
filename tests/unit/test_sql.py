"""The users sync's statements stay within BigQuery's 1,024K-character query limit at the full column
budget: columns are split across several statements, each complete, none over the limit, none lost,
and only the last one of a rebuild clears the rebuild flag."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import pytest

from personas_warehouse import sql
from personas_warehouse.settings import Settings

BUDGET = Settings().max_columns_per_table
P, D = "personas-test", "personas_default"
Build = Callable[[Sequence[sql.Synced], bool], str]
BUILDERS: dict[str, Build] = {
    "fold": lambda cols, last: sql.fold_sql(P, D, cols),
    "rebuild, listed users": lambda cols, last: sql.rebuild_sql(P, D, cols, listed=True, clear_flag=last),
    "rebuild, every user": lambda cols, last: sql.rebuild_sql(P, D, cols, listed=False, clear_flag=last),
}


def longest_names(count: int) -> list[sql.Synced]:
    """Distinct columns of the longest length the naming rule allows (300 characters)."""
    return [sql.ROW, *sql.synced([f"c{i:05d}_".ljust(300, "x") for i in range(count)])]


def written(statement: str) -> list[str]:
    insert = statement.split("WHEN NOT MATCHED THEN INSERT (", 1)[1].split(")", 1)[0]
    return [n for n in re.findall(r"`([^`]+)`", insert) if n not in ("id", sql.REBUILD, sql.BUCKET)]


@pytest.mark.parametrize("name", BUILDERS)
def test_full_column_budget_fits_in_query_limit(name: str) -> None:
    columns = longest_names(BUDGET)
    statements = sql.split(BUILDERS[name], columns)
    assert len(statements) > 1, "5,000 columns of 300 characters cannot fit in one statement"
    assert max(len(s) for s in statements) <= sql.MAX_QUERY_CHARS < 1_048_576
    assert [n for s in statements for n in written(s)] == [n for c in columns for n in (c.column, c.asof)]
    clears = [f"`{sql.REBUILD}` = FALSE" in s for s in statements]
    assert clears == ([False] * (len(statements) - 1) + [True] if name.startswith("rebuild") else [False] * len(clears))


def test_few_columns_make_one_statement() -> None:
    columns = [sql.ROW, *sql.synced(["a", "b"])]
    [statement] = sql.split(BUILDERS["fold"], columns)
    assert written(statement) == [
        "received_at",
        "_asof",
        "a",
        sql.synced(["a"])[0].asof,
        "b",
        sql.synced(["b"])[0].asof,
    ]
    assert "@since" in statement and "@touched" in statement


def test_limit_is_honoured_for_any_budget() -> None:
    columns = longest_names(40)
    statements = sql.split(BUILDERS["fold"], columns, max_chars=30_000)
    assert len(statements) > 2
    assert all(len(s) <= 30_000 for s in statements)
    with pytest.raises(ValueError):
        sql.split(BUILDERS["fold"], columns, max_chars=3_000)


def test_as_of_columns_are_hidden_names_the_naming_rule_never_makes() -> None:
    [column] = sql.synced(["x" * 300])
    assert column.asof.startswith("_asof_") and len(column.asof) == 22
    assert sql.IDENTIFIER.match(column.asof)
