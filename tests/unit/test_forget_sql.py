"""Every statement forget sends (personas_warehouse.forget_sql, through forget.py) passes Google's ZetaSQL
analyzer with BigQuery's language options and exactly the parameters sent, and fits BigQuery's query
length even in a space with thousands of event tables. Statements are captured from forget's own runs
over the strict fake (tests/unit/test_forget.py's world), not copied."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from google.cloud import bigquery

from personas_warehouse import forget, forget_sql, naming
from personas_warehouse.bigquery import Deadline
from personas_warehouse.forget import checked_ids
from schemas.tables import spec
from tests import sqlcheck
from tests.sync_fakes import _BETWEEN, _IN, BIGQUERY_MAX_PARTITIONS_PER_JOB, confined_to
from tests.unit.test_forget import PROJECT, World, populate

EVENTS = ("Audience Entered", "Viewed")


@pytest.fixture(scope="module")
def analyzer() -> Iterator[sqlcheck.Analyzer]:
    loaded = sqlcheck.Analyzer.load()
    yield loaded
    loaded.close()


class Capture:
    """Every query the fake receives, with its parameters' BigQuery types."""

    def __init__(self, world: World) -> None:
        self.statements: list[tuple[str, dict[str, str]]] = []
        original = world.fake.query

        def query(sql: str, job_config: bigquery.QueryJobConfig | None = None, **kw: Any) -> Any:
            self.statements.append((sql, _types(job_config)))
            return original(sql, job_config, **kw)

        world.fake.query = query  # type: ignore[method-assign]


def _types(config: bigquery.QueryJobConfig | None) -> dict[str, str]:
    found = {}
    for p in config.query_parameters if config else []:
        if isinstance(p, bigquery.ArrayQueryParameter):
            found[p.name] = f"ARRAY<{p.array_type}>"
        else:
            found[p.name] = p.type_
    return found


def test_every_forget_statement_passes_the_analyzer(analyzer: sqlcheck.Analyzer) -> None:
    world = World()
    capture = Capture(world)
    populate(world, "alice", "a")
    populate(world, "bob", "b", space="mkt")
    ids = checked_ids(["alice", 'café "quoted"'], ["anon-alice"])
    forget.forget(world.warehouse, world.settings, ids, dry_run=True, now=world.now)
    forget.forget(world.warehouse, world.settings, ids, now=world.now)  # in the buffer: the fallback DELETEs too
    forget.forget(world.warehouse, world.settings, ids, ["mkt"], now=world.now)
    world.advance(31 * 60)
    world.finish()
    forget.unsuppress(world.warehouse, world.settings, ids, now=world.now)

    traits = {"score": "INT64", "plan": "STRING"}
    catalog = sqlcheck.warehouse_catalog(PROJECT, {"default": traits, "mkt": traits}, events=EVENTS)
    kinds: Counter[str] = Counter()
    for sql, params in capture.statements:
        analysis = analyzer.analysis(sql, params, catalog)
        assert analysis.errors == [], f"{sql}\n{params}"
        kinds[analysis.kind] += 1
        assert len(sql) <= sqlcheck.BIGQUERY_MAX_QUERY_CHARS
    assert {"query_stmt", "delete_stmt", "insert_stmt"} <= set(kinds), kinds
    deletes = [sql for sql, _ in capture.statements if sql.startswith("DELETE")]
    assert any("@before" in sql for sql in deletes), "the streaming-buffer fallback was analyzed"
    assert any("forget_pending" in sql for sql in deletes) and any("forget_suppressions" in sql for sql in deletes)
    # A table split into integer ranges is deleted from in chunks of constant partitions, within BigQuery's
    # limit of 4,000 partitions modified per job, and together over every partition.
    state = [sql for sql in deletes if "users_state" in sql and "@before" not in sql]
    confined = [confined_to(sql, _BETWEEN, _IN) for sql in state]
    assert state and all(c is not None and len(c) <= BIGQUERY_MAX_PARTITIONS_PER_JOB for c in confined)
    assert set().union(*(c or set() for c in confined)) >= set(range(spec("users_state").buckets or 0))


def test_the_analyzer_would_see_a_broken_forget_statement(analyzer: sqlcheck.Analyzer) -> None:
    catalog = sqlcheck.warehouse_catalog(PROJECT, {"default": {}}, events=EVENTS)
    broken = f"DELETE FROM `{PROJECT}.personas_default.discards` WHERE row_id IN UNNEST(@user_ids) AND nope"
    assert analyzer.analyze(broken, {"user_ids": "ARRAY<STRING>"}, catalog) != []
    typed = f"DELETE FROM `{PROJECT}.personas_default.identifies` WHERE loaded_at < @before"
    assert analyzer.analyze(typed, {"before": "INT64"}, catalog) != []


def test_a_space_with_thousands_of_event_tables_fits_bigquerys_query_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each event table is a source of discards: the COUNT and the discards DELETE are split in chunks,
    and a discard is counted once (its row is named by table and id, and a track's id is in two tables).
    A limit of 50,000 characters stands in for BigQuery's 1,024K, so that 300 tables need many chunks."""
    limit = 50_000
    monkeypatch.setattr(forget_sql, "MAX_QUERY_CHARS", limit)
    world = World()
    capture = Capture(world)
    world.send({"type": "track", "messageId": "t1", "userId": "alice", "event": "Score", "properties": {"v": 1}})
    world.send({"type": "track", "messageId": "t2", "userId": "alice", "event": "Score", "properties": {"v": "x"}})
    deadline = Deadline(600)
    long_name = "e" * 280  # long names make long statements quickly (sql.IDENTIFIER allows 300)
    for i in range(300):
        name = naming.event_table_name(f"{long_name} {i:04d}", taken=frozenset())
        world.warehouse.ensure_table("personas_default", name, spec("track_event"), deadline)
    world.advance(31 * 60)
    report = world.forget("alice")
    found = {t.table: t.found for t in report.tables if t.found}
    assert found == {"tracks": 2, "score": 2, "discards": 1}
    assert report.left == 0 and world.rows("discards") == []
    longest = max(len(sql) for sql, _ in capture.statements)
    counts = [sql for sql, _ in capture.statements if sql.startswith("SELECT")]
    assert longest <= limit and len(counts) > 2, (longest, len(counts))
    assert sum(sql.startswith("DELETE") and "discards" in sql for sql, _ in capture.statements) > 1
