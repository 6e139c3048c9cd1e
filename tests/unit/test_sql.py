"""The users MERGE stays within BigQuery's 1,024K-character query limit at the full column budget:
columns are split across several statements, each complete, none over the limit, none lost."""

from __future__ import annotations

import re

import pytest

from personas_warehouse import sql
from personas_warehouse.settings import Settings

BUDGET = Settings().max_columns_per_table


def longest_names(count: int) -> list[str]:
    """Distinct column names of the longest length the naming rule allows (300 characters)."""
    return [f"c{i:05d}_".ljust(300, "x") for i in range(count)]


def written_columns(statement: str) -> list[str]:
    insert = statement.split("WHEN NOT MATCHED THEN INSERT (", 1)[1].split(")", 1)[0]
    return [c.strip().strip("`") for c in insert.split(",")][2:]  # after `id`, `received_at`


@pytest.mark.parametrize("incremental", [False, True])
def test_full_column_budget_fits_in_query_limit(incremental: bool) -> None:
    columns = longest_names(BUDGET)
    plan = sql.plan_merge("personas-test", "personas_default", columns, incremental=incremental)
    assert len(plan.statements) > 1, "5,000 columns of 300 characters cannot fit in one statement"
    assert max(len(s) for s in plan.statements) <= sql.MAX_QUERY_CHARS < 1_048_576
    assert [c for group in plan.columns for c in group] == columns
    assert [written_columns(s) for s in plan.statements] == [list(g) for g in plan.columns]


def test_few_columns_make_one_statement() -> None:
    plan = sql.plan_merge("personas-test", "personas_default", ["a", "b"], incremental=True)
    assert len(plan.statements) == 1
    assert written_columns(plan.statements[0]) == ["a", "b"]
    assert "@since" in plan.statements[0]


def test_no_columns_still_keeps_users_current() -> None:
    [statement] = sql.plan_merge("personas-test", "personas_default", [], incremental=False).statements
    assert "@since" not in statement
    assert re.search(r"INSERT \(`id`, `received_at`\)", statement)


def test_limit_is_honoured_for_any_budget() -> None:
    columns = longest_names(40)
    plan = sql.plan_merge("personas-test", "personas_default", columns, incremental=True, max_chars=20_000)
    assert len(plan.statements) > 2
    assert all(len(s) <= 20_000 for s in plan.statements)
    with pytest.raises(ValueError):
        sql.plan_merge("personas-test", "personas_default", columns, incremental=True, max_chars=2_000)
