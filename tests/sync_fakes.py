"""A BigQuery stand-in for the sync at a scale the emulator cannot reach, as strict as BigQuery about the
limit that matters at that scale: a DML job may modify at most 4,000 partitions ("Number of partitions
modified by a single job", https://cloud.google.com/bigquery/quotas#partitioned_tables).

It does not execute SQL. It models what the sync asks of it: source tables as (partition of the row's
key, loaded_at) pairs, from which it answers the frame's window queries; sync_history from the rows the
sync wrote. A DML statement on a table partitioned into integer ranges may modify only the partitions
its text confines it to, by constant filters on the partitioning column (`_old`.`_bucket` ...): those
are counted, and a statement with no such filter counts as modifying every partition. Over 4,000, it is
refused with BigQuery's error (a 400, as the job's result), as BigQuery refuses it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import bigquery

from tests.fakes import FakeBigQuery

BIGQUERY_MAX_PARTITIONS_PER_JOB = 4_000
_TARGET = re.compile(r"(?:MERGE|UPDATE|DELETE(?: FROM)?|INSERT(?: INTO)?) `([^`]+)`")
# A kept table's partitions, under whatever alias the statement gives it (frame.Keys.partitions).
_BETWEEN = re.compile(r"\b\w+\.`_bucket` BETWEEN (\d+) AND (\d+)")
_IN = re.compile(r"\b\w+\.`_bucket` IN \(([\d, ]+)\)")
# A source row's partition: the fingerprint of its key, an expression with at most one level of parentheses
# (`user_id`, `COALESCE(user_id, anonymous_id)`).
_FINGERPRINT = r"ABS\(MOD\(FARM_FINGERPRINT\((?:[^()]|\([^()]*\))*\), \d+\)\)"
_SOURCE_BETWEEN = re.compile(_FINGERPRINT + r" BETWEEN (\d+) AND (\d+)")
_SOURCE_IN = re.compile(_FINGERPRINT + r" IN \(([\d, ]+)\)")
_FROM = re.compile(r"FROM `[^`.]+(?:\.[^`.]+)?\.([^`.]+)\.([^`]+)` WHERE")


def confined_to(text: str, pattern_between: re.Pattern[str], pattern_in: re.Pattern[str]) -> set[int] | None:
    """The partitions a statement's constant filters name (None: it names none)."""
    found: set[int] = set()
    named = False
    for low, high in pattern_between.findall(text):
        found.update(range(int(low), int(high) + 1))
        named = True
    for listed in pattern_in.findall(text):
        found.update(int(n) for n in listed.split(","))
        named = True
    return found if named else None


@dataclass
class Job:
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: Exception | None = None
    dml_stats: Any = None
    num_dml_affected_rows: int = 0

    def result(self, **_: Any) -> list[dict[str, Any]]:
        if self.error is not None:
            raise self.error
        return self.rows


class ModelBigQuery(FakeBigQuery):
    """See the module docstring. `sources[(dataset, table)]` holds (partition, loaded_at) per row; `dml`
    every DML statement sent with the partitions it could modify; `refused` those refused."""

    def __init__(self, project: str = "personas-test", *, every_source_like: str | None = None) -> None:
        super().__init__(project)
        self.sources: dict[tuple[str, str], list[tuple[int, datetime]]] = {}
        # A source table with no rows of its own answers as this one does (so a derived table reading
        # other tables than identifies is driven by the same rows).
        self.every_source_like = every_source_like
        self.dml: list[tuple[str, int]] = []
        self.refused: list[str] = []
        self.queries: list[str] = []
        self.fail: Callable[[str], Exception | None] = lambda text: None  # a DML statement's injected failure

    def add_rows(self, dataset: str, table: str, rows: Iterable[tuple[int, datetime]]) -> None:
        self.sources.setdefault((dataset, table), []).extend(rows)

    def partitions_of(self, target: str) -> int | None:
        found = self.tables.get(target)
        spec = found.range_partitioning if found is not None else None
        return None if spec is None else int(spec.range_.end) - int(spec.range_.start)

    def query(self, text: str, job_config: bigquery.QueryJobConfig | None = None, **_: Any) -> Job:
        params = {
            p.name: getattr(p, "value", getattr(p, "values", None))
            for p in (job_config.query_parameters if job_config else [])
        }
        self.queries.append(text)
        self.created_routine(text)
        target = _TARGET.match(text)
        if target:
            return self._dml(text, target[1])
        if "sync_history" in text:
            return Job(self._last_successes(params))
        if "AS rows_read" in text:
            return Job([self._window(text, params)])
        return Job([])

    def _dml(self, text: str, target: str) -> Job:
        total = self.partitions_of(target)
        confined = confined_to(text, _BETWEEN, _IN)
        modified = (len(confined) if confined is not None else total) if total else 1
        source = confined_to(text, _SOURCE_BETWEEN, _SOURCE_IN)
        if confined is not None and source is not None and not source <= confined:
            raise AssertionError(f"the statement reads keys of partitions it does not confine itself to: {text[:300]}")
        self.dml.append((text, modified))
        injected = self.fail(text)
        if injected is not None:
            return Job(error=injected)
        if modified > BIGQUERY_MAX_PARTITIONS_PER_JOB:
            self.refused.append(text)
            error = gexc.BadRequest(
                f"Too many partitions produced by query, allowed {BIGQUERY_MAX_PARTITIONS_PER_JOB}, query produces at "
                f"least {modified} partitions"
            )
            return Job(error=error)
        stats = SimpleNamespace(inserted_row_count=0, updated_row_count=0, deleted_row_count=0)
        return Job(dml_stats=stats)

    def _window(self, text: str, params: dict[str, Any]) -> dict[str, Any]:
        since, until = params.get("since"), params["until"]
        rows: set[int] = set()
        count = 0
        for dataset, table in _FROM.findall(text):
            fallback = self.sources.get((dataset, self.every_source_like or ""), [])
            for partition, loaded_at in self.sources.get((dataset, table), fallback):
                if loaded_at <= until and (since is None or loaded_at >= since):
                    rows.add(partition)
                    count += 1
        return {"rows_read": count, "touched": sorted(rows) if "touched" in text else None}

    def _last_successes(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        newest: dict[tuple[str, str, int], dict[str, Any]] = {}
        for key, rows in self.rows.items():
            if not key.endswith(".sync_history"):
                continue
            for row in rows:
                if row["space"] not in params["spaces"] or row["status"] not in ("success", "partial"):
                    continue
                mark = datetime.fromisoformat(row["watermark_to"].replace("Z", "+00:00"))
                started = datetime.fromisoformat(row["started_at"].replace("Z", "+00:00"))
                if started < params["started"]:
                    continue
                key = (row["space"], row["table_name"], int(row["layout"]))  # stored as sent: INT64 as text
                typed = {**row, "layout": key[2], "watermark_to": mark}
                if key not in newest or mark > newest[key]["watermark_to"]:
                    newest[key] = typed
        return list(newest.values())

    def list_datasets(self, **_: Any) -> list[SimpleNamespace]:
        return [SimpleNamespace(dataset_id=d) for d in sorted(self.datasets)]
