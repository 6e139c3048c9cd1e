"""users_history's pure pieces: statements split by columns lose none and stay within BigQuery's query
length; users_at reads its parameter where no trait column can hide it (BigQuery resolves a name that is
both a column and a parameter as the column); the frame does not count the internal table's rows."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from personas_warehouse import sql
from personas_warehouse.bigquery import Deadline
from personas_warehouse.derived import frame
from personas_warehouse.derived import users_history as history
from personas_warehouse.derived.frame import PARTITION_BUDGET, Internal, Keys, Window
from personas_warehouse.settings import Settings, SpaceConfig
from schemas.tables import spec
from tests import sqlcheck

P, D = "personas-test", "personas_default"
KEYS = Keys(tuple(range(0, 2 * PARTITION_BUDGET, 2)), 10_000)  # scattered: the longest filter text
WINDOW = Window(datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 2, tzinfo=UTC))
COLUMNS = [f"c{i:04d}_".ljust(300, "x") for i in range(300)]


@pytest.fixture(scope="module")
def analyzer() -> Iterator[sqlcheck.Analyzer]:
    loaded = sqlcheck.Analyzer.load()
    yield loaded
    loaded.close()


def named(statement: str) -> set[str]:
    return {c for c in re.findall(r"`(c\d{4}_x+)`", statement)}


@pytest.mark.parametrize("scoped", [True, False], ids=["fold", "rebuild"])
def test_a_wide_space_splits_by_columns_and_loses_none(monkeypatch: pytest.MonkeyPatch, scoped: bool) -> None:
    """300 columns of 300 characters under a 200,000-character limit: the periods need several statements;
    which calls start a period is decided a group at a time, then the values, each column in one group."""
    monkeypatch.setattr(sql, "MAX_QUERY_CHARS", 200_000)
    built = history.Built(P, D, COLUMNS, COLUMNS)
    statements = built.fold(KEYS, WINDOW) if scoped else built.rebuild(KEYS, WINDOW)
    assert max(map(len, statements)) <= 200_000
    calls = [s for s in statements if s.startswith(f"MERGE `{P}.{D}.users_history_calls`")]
    starts = [s for s in calls if "SET _starts" in s]
    stored = [s for s in calls if s not in starts]
    periods = [s for s in statements if s.startswith(f"MERGE `{P}.{D}.users_history` ")]
    assert all(isinstance(s, Internal) for s in calls) and not any(isinstance(s, Internal) for s in periods)
    assert statements == [*stored, *starts, *periods], "the calls, then where periods start, then the periods"
    for kind in (stored, starts, periods):
        assert len(kind) > 1 and sorted(c for s in kind for c in named(s)) == sorted(COLUMNS), "each column once"
    assert starts[0].endswith("SET _starts = _new._begins")
    assert all(s.endswith("SET _starts = (_old._starts OR _new._begins)") for s in starts[1:])
    assert "DELETE" in periods[0] and "INSERT" in periods[0] and all("INSERT" not in s for s in periods[1:])


def test_a_space_that_fits_makes_its_periods_in_one_statement() -> None:
    statements = history.Built(P, D, COLUMNS[:5], COLUMNS[:5]).fold(KEYS, WINDOW)
    assert [isinstance(s, Internal) for s in statements] == [True, False]
    assert "SET _starts" not in statements[1] and "IS DISTINCT FROM LAG" in statements[1]


def test_the_docs_sql_passes_the_analyzer(analyzer: sqlcheck.Analyzer) -> None:
    """docs/users_history.md's SQL (run on the local stack by tests/integration/test_users_history_docs.py) is
    also BigQuery's dialect, as ZetaSQL reads it; users_at, a function the catalog has not, as its body."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "users_history.md").read_text()
    blocks = [b.replace("PROJECT.", f"{P}.") for b in re.findall(r"```sql\n((?:.|\n)*?)```", doc)]
    traits = {"plan": "STRING", "first_time_shopper": "BOOL", "total_revenue_180_days": "FLOAT64"}
    columns = {c.name: c.type for c in spec("users_history").columns} | traits
    catalog = sqlcheck.Catalog({f"{P}.{D}.users_history": columns})
    at = re.compile(rf"`{P}\.{D}\.users_at`\((TIMESTAMP '[^']+')\)")
    for block in blocks:
        if made := at.search(block):
            body = history.users_at_sql(P, D).split(" AS ", 1)[1]
            block = block.replace(made[0], "(" + re.sub(r"\bas_of\b", made[1], body) + ")")
        assert analyzer.analyze(block, {}, catalog) == [], block
    assert len(blocks) == 5


def test_users_at_reads_its_parameter_where_no_trait_column_hides_it(analyzer: sqlcheck.Analyzer) -> None:
    """A trait column named `as_of` (a STRING here) beside the parameter: the function still compares
    timestamps. Written plainly, the same body resolves `as_of` as the column, and the analyzer says so."""
    columns = {c.name: c.type for c in spec("users_history").columns} | {"as_of": "STRING", "plan": "STRING"}
    catalog = sqlcheck.Catalog({f"{P}.{D}.users_history": columns})
    assert analyzer.analyze(history.users_at_sql(P, D), {}, catalog) == []
    plain = (
        f"CREATE OR REPLACE TABLE FUNCTION `{P}.{D}.users_at`(as_of TIMESTAMP) AS "
        f"SELECT * FROM `{P}.{D}.users_history` WHERE valid_from <= as_of AND (valid_to > as_of OR valid_to IS NULL)"
    )
    assert "No matching signature for operator <=" in " ".join(analyzer.analyze(plain, {}, catalog))


class Counting:
    """A warehouse that answers the window query with two partitions and every statement with its own
    DML statistics: 10 rows for an internal one, 1 for the others."""

    project = P

    def __init__(self) -> None:
        self.sent: list[str] = []

    def query(self, text: str, params: list[Any], deadline: Deadline) -> list[dict[str, Any]]:
        return [{"rows_read": 2, "touched": [3, 4]}]

    def run(self, text: str, params: list[Any], deadline: Deadline) -> Any:
        self.sent.append(text)
        n = 10 if isinstance(text, Internal) else 1
        return SimpleNamespace(
            dml_stats=SimpleNamespace(inserted_row_count=n, updated_row_count=n, deleted_row_count=n)
        )


class TwoTables:
    name, table, layout = "users_history", "users_history", 1

    def plan(self, context: frame.Context) -> frame.Plan:
        statements = [Internal("MERGE calls"), "MERGE periods", "MERGE periods, more columns"]
        return frame.Plan([frame.Source("identifies", "user_id")], lambda k, w: statements, lambda k, w: statements)


def test_the_frame_counts_only_the_table_users_query() -> None:
    warehouse = Counting()
    since = datetime(2026, 12, 1, tzinfo=UTC)
    previous = frame.Previous(since, frozenset())
    context = frame.Context(warehouse, Settings(), "default", SpaceConfig(), D, Deadline(10), previous)  # type: ignore[arg-type]
    result = frame.TableResult("default", "users_history", 1)
    frame.run_table(TwoTables(), context, since, result)
    assert warehouse.sent == ["MERGE calls", "MERGE periods", "MERGE periods, more columns"]
    assert (result.statements, result.rows_inserted, result.rows_deleted, result.rows_updated) == (3, 2, 2, 1)
