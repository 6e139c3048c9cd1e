"""A derived table's own counts of what a window holds (frame.Source.counts) are summed by the window
query the frame sends anyway, and land in the run's history row (`report`)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from personas_warehouse import naming
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.derived.frame import Context, Plan, Source, TableResult, run_table
from personas_warehouse.settings import Settings
from tests.sync_fakes import Job, ModelBigQuery

DATASET = naming.space_dataset("default")
UNTIL = datetime(2026, 12, 1, tzinfo=UTC)


class Counting(ModelBigQuery):
    """Answers the window query with the sums it asks for: `_count_<i>` = 10 * (i + 1)."""

    def query(self, text: str, job_config: Any = None, **kw: Any) -> Job:
        if "AS rows_read" not in text:
            return super().query(text, job_config, **kw)
        self.queries.append(text)
        sums = {f"_count_{i}": 10 * (int(i) + 1) for i in re.findall(r"SUM\(_count_(\d+)\)", text)}
        return Job([{"rows_read": 3, "touched": [1], **sums}])


class Counted:
    name, table, layout = "counted", "users_state", 1

    def plan(self, context: Context) -> Plan:
        sources = [
            Source("identifies", "user_id", counts=(("too_long", "IF(LENGTH(id) > 9, 1, 0)"), ("odd", "1"))),
            Source("tracks", "user_id", counts=(("odd", "2"),)),
        ]
        nothing = lambda keys, window: []  # noqa: E731
        return Plan(sources=sources, fold=nothing, rebuild=nothing, report={"kept": 1})


def run(client: Counting) -> TableResult:
    settings = Settings(project="personas-test")
    context = Context(Warehouse(client), settings, "default", settings.space("default"), DATASET, Deadline(60), None)  # type: ignore[arg-type]
    result = TableResult("default", "counted", 1)
    run_table(Counted(), context, UNTIL, result)
    return result


def test_counts_are_summed_by_the_window_query_and_reported() -> None:
    client = Counting()
    result = run(client)
    [window] = [q for q in client.queries if "AS rows_read" in q]
    # Every part of the UNION ALL yields every count (0 where its source has none), in name order.
    assert "IF(LENGTH(id) > 9, 1, 0) AS _count_1" in window and "1 AS _count_0" in window
    assert "2 AS _count_0" in window and "0 AS _count_1" in window
    assert "SUM(_count_0) AS _count_0, SUM(_count_1) AS _count_1" in window
    assert json.loads(result.report or "{}") == {"kept": 1, "odd": 10, "too_long": 20}


def test_zero_counts_are_left_out_of_the_report() -> None:
    class Zero(Counting):
        def query(self, text: str, job_config: Any = None, **kw: Any) -> Job:
            job = super().query(text, job_config, **kw)
            return Job([{k: 0 if k.startswith("_count_") else v for k, v in r.items()} for r in job.rows])

    assert json.loads(run(Zero()).report or "{}") == {"kept": 1}


def test_a_source_without_counts_sends_the_window_query_as_before() -> None:
    client = ModelBigQuery()
    settings = Settings(project="personas-test")
    context = Context(Warehouse(client), settings, "default", settings.space("default"), DATASET, Deadline(60), None)  # type: ignore[arg-type]

    class Plain(Counted):
        def plan(self, context: Context) -> Plan:
            return Plan(sources=[Source("identifies", "user_id")], fold=lambda k, w: [], rebuild=lambda k, w: [])

    result = TableResult("default", "plain", 1)
    run_table(Plain(), context, UNTIL, result)
    [window_query] = [q for q in client.queries if "AS rows_read" in q]
    assert "_count_" not in window_query and result.report is None
