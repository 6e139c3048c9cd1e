"""Every SQL statement the operator commands (infra.ops: reconcile, replay, status) send passes Google's
ZetaSQL analyzer with BigQuery's language options: the statements the sync and the views send are
covered by test_sql_analyzer.py, these by this file, so every statement the project can send is.

The statements are captured from the commands themselves, run over a reader that analyzes each query
it is asked to run (with exactly the query parameters sent) against the warehouse as the project
creates it (tables.json: two spaces, the operations tables), and answers it with a row shaped like the
analyzer's output columns. A test proves each query builder of infra/ops/queries.py was exercised, so
a new one cannot slip past unanalyzed. The emulator accepts SQL BigQuery refuses: `COUNT(*) AS rows`
ran on bqemulator, while GoogleSQL reserves ROWS ("Syntax error: Unexpected keyword ROWS").
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infra.ops import queries, reconcile, replay, status
from infra.ops.queries import Param, Query
from tests import sqlcheck
from tests.unit._ops_fakes import FakePublisher, FakeSubscriber

PROJECT = "personas-test"
OPS = "personas__ops"
SPACES = ("mkt", "sales")
NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
# A value of each type the commands read back (spaces and classes are strings, counts integers, ...).
PLAUSIBLE: dict[str, Any] = {"STRING": "mkt", "INT64": 1, "BOOL": False, "TIMESTAMP": NOW, "FLOAT64": 1.0}


@pytest.fixture(scope="module")
def analyzer() -> Iterator[sqlcheck.Analyzer]:
    loaded = sqlcheck.Analyzer.load()
    yield loaded
    loaded.close()


def param_types(params: tuple[Param, ...]) -> dict[str, str]:
    """Query parameters as BigQuery receives them: a list value is an ARRAY of its type (common.Warehouse)."""
    return {p.name: f"ARRAY<{p.type}>" if isinstance(p.value, list) else p.type for p in params}


@dataclass
class AnalyzingReader:
    """The commands' Reader: every query is analyzed when run, and answered with one row of its shape."""

    analyzer: sqlcheck.Analyzer
    project: str = PROJECT
    ops_dataset: str = OPS
    catalog: sqlcheck.Catalog = field(
        default_factory=lambda: sqlcheck.warehouse_catalog(PROJECT, {s: {} for s in SPACES})
    )
    ran: list[tuple[Query, sqlcheck.Analysis]] = field(default_factory=list)

    def run(self, query: Query) -> list[dict[str, Any]]:
        analysis = self.analyzer.analysis(query.sql, param_types(query.params), self.catalog)
        self.ran.append((query, analysis))
        return [{name: PLAUSIBLE[kind] for name, kind in analysis.columns.items()}] if not analysis.errors else []

    def space_tables(self) -> dict[str, frozenset[str]]:
        return {space: frozenset({"identifies", "tracks", "discards", "users", "users_state"}) for space in SPACES}

    def ops_tables(self) -> frozenset[str]:
        return frozenset({"rejected_messages", "sync_history", "replays"})

    def ensure_ops_table(self, kind: str) -> None:
        pass

    def insert_ops(self, kind: str, rows: list[dict[str, Any]], row_ids: list[str]) -> None:
        pass


def every_command(reader: AnalyzingReader) -> None:
    """Each operator command over every path that sends SQL."""
    calls = [reconcile.Call(f"p{i}", 0, f"c{i}", space, NOW - timedelta(hours=1)) for i, space in enumerate(SPACES)]
    reconcile.reconcile_ids(reader, calls)
    reconcile.reconcile_ids(reader, [reconcile.Call("p9", 0, "c9", None, NOW)])  # no space: every space is read
    reconcile.reconcile_window(reader, NOW - timedelta(days=1), NOW)
    filters = replay.Filters(
        space="mkt", error_class="schema_violation", message_ids=("m1",), start=NOW - timedelta(days=1), end=NOW
    )
    replay.replay_rejected(reader, FakePublisher(), "projects/p/topics/t", filters)
    replay.replay_rejected(reader, FakePublisher(), "projects/p/topics/t", replay.Filters())
    subscriber = FakeSubscriber([FakeSubscriber.message("d1", space="mkt")])
    replay.replay_dead_letters(reader, FakePublisher(), "projects/p/topics/t", subscriber, "s", replay.Filters())
    status.collect(reader, now=lambda: NOW)


def test_every_operator_statement_passes_the_analyzer(analyzer: sqlcheck.Analyzer) -> None:
    reader = AnalyzingReader(analyzer)
    every_command(reader)
    problems = [f"{query.kind}: {analysis.errors}\n{query.sql}" for query, analysis in reader.ran if analysis.errors]
    assert not problems, "\n\n".join(problems)
    assert all(analysis.kind == "query_stmt" for _, analysis in reader.ran)


def test_every_query_builder_of_the_operator_commands_is_analyzed(analyzer: sqlcheck.Analyzer) -> None:
    builders = {
        name
        for name, function in inspect.getmembers(queries, inspect.isfunction)
        if function.__module__ == queries.__name__ and inspect.signature(function).return_annotation == "Query"
    }
    reader = AnalyzingReader(analyzer)
    every_command(reader)
    assert builders == {query.kind for query, _ in reader.ran}, "a query builder no command path sends here"


def test_the_reconcile_scans_read_only_partitions_from_their_bound(analyzer: sqlcheck.Analyzer) -> None:
    """Each table of a bounded statement is read with a filter on its own partition column: what BigQuery
    prunes by. Checked on the resolved statement: the analyzer reports the partition column among the
    columns each table scan reads."""
    reader = AnalyzingReader(analyzer)
    every_command(reader)
    bounded = {"raw_id_counts", "raw_window", "rejections_by_message", "rejections_window"}
    seen = set()
    for query, analysis in reader.ran:
        if query.kind not in bounded:
            continue
        seen.add(query.kind)
        assert "since" in param_types(query.params)
        for path, columns in analysis.scans.items():
            kind = path.rsplit(".", 1)[-1]
            assert queries.partition_field(kind) in columns, (query.kind, path)
    assert seen == bounded


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        (
            f"SELECT COUNT(*) AS rows FROM `{PROJECT}.personas_mkt.identifies`",
            "Unexpected keyword ROWS",
        ),  # what raw_window sent before; bqemulator ran it
        (f"SELECT COUNT(*) AS n_rows FROM `{PROJECT}.personas_mkt.identifiez`", "not found"),
    ],
)
def test_the_analyzer_refuses_what_bigquery_refuses(analyzer: sqlcheck.Analyzer, sql: str, error: str) -> None:
    catalog = sqlcheck.warehouse_catalog(PROJECT, {"mkt": {}})
    errors = analyzer.analyze(sql, {}, catalog)
    assert errors and error in errors[0], errors
