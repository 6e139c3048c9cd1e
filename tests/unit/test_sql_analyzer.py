"""Every SQL statement the project sends to BigQuery passes Google's ZetaSQL analyzer, and fits BigQuery's
query length limit.

Statements are captured from the project's own code, not copied: `run_sync` and
`Warehouse.ensure_table` run against a fake BigQuery client that records every `client.query(...)` (with
its query parameters) and every view `create_table(...)`, each with the tables that existed at that
moment, and answers SELECTs with a plausible row shaped like the analyzer's output columns. The
scenarios walk every branch of the sync over trait columns named by the project's naming rule from
awkward keys (SQL keywords, one-letter keys, the aliases the SQL itself uses, 300-character names).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from google.cloud import bigquery

from personas_warehouse import naming, sql, sync
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.derived import DERIVED, memberships, users
from personas_warehouse.derived.memberships import MEMBERSHIPS
from personas_warehouse.settings import Settings, SpaceConfig
from schemas.tables import spec, table_specs
from tests import sqlcheck
from tests.fakes import FakeBigQuery

PROJECT = "personas-test"
TYPES = ("STRING", "INT64", "FLOAT64", "BOOL", "TIMESTAMP")  # every type ingest gives a column
PLAUSIBLE = {
    "STRING": "x",
    "INT64": 1,
    "FLOAT64": 1.0,
    "BOOL": True,
    "TIMESTAMP": datetime(2026, 3, 1, 9, tzinfo=UTC),
    "ARRAY": [1],  # partitions touched by new rows: every branch of the sync runs
}
# Answers to the window queries the sync sends, by column name.
CANNED = {"rows_read": 1, "touched": [1, 2, 3, 9], "not_read": 1, "missing": 1}
_KEYWORDS = """select from where order by group merge using when matched then update set insert values on as window
partition rows range struct array timestamp current_date current_timestamp all and any asc at between case cast
collate create cross cube default define desc distinct else end enum escape except exclude exists extract false
fetch following for full grouping groups hash having if ignore in inner interval intersect into is join lateral
left like limit lookup natural new no not null nulls of or outer over preceding proto qualify recursive respect
right rollup some tablesample to treesample true unbounded union unnest with within delete target source row"""
KEYWORDS = _KEYWORDS.split()
# Names sql.py uses as aliases, columns or parameters, and one-letter keys.
_SQL_NAMES = """_copy _newest copy newest id user_id anonymous_id received_at loaded_at timestamp sent_at
original_timestamp history latest changed scope picks targets watermark_to rows_read touched ids mark n since
space status event x s S t T a b _old old _new new _key key _user user _asof asof _rebuild rebuild rebuild_users
users_state as_of _as_of _at _h _p _c _s _was _was_id _was_from _since _last _starts _begins _upto _before"""
SQL_NAMES = _SQL_NAMES.split()
ODD = ["1st", "!!", "café", "Ünïcode", "firstTimeShopper"]
LONGEST = [f"{kind.lower()} longest " + "k" * 400 for kind in TYPES]  # cut to 300 characters with a hash
AWKWARD = {key: TYPES[i % len(TYPES)] for i, key in enumerate([*KEYWORDS, *SQL_NAMES, *ODD])} | {
    key: TYPES[i] for i, key in enumerate(LONGEST)
}
TRAITS = sqlcheck.trait_columns(AWKWARD)
CONTEXT = {
    "context_personas_computation_class": "STRING",
    "context_personas_computation_key": "STRING",
    "context_library_version": "STRING",
}
AUDIENCE_EVENTS = ("Audience Entered", "Audience Exited", "Trait Computed")
AUDIENCE_TRACK = {"audience_key": "STRING", **CONTEXT}  # the columns of an audience event's table
GONE = "gone_audience"  # an audience key seen in identify calls with no identifies column
# The context columns identities reads (docs/identities.md), as ingest types them, in identifies and tracks.
MOBILE = {
    "context_traits_email": "STRING",
    "context_device_type": "STRING",
    "context_device_id": "STRING",
    "context_device_advertising_id": "STRING",
    "context_device_ad_tracking_enabled": "BOOL",
    "context_device_token": "STRING",
    "context_external_ids": "STRING",
    "context_external_ids_id": "STRING",  # externalIds once sent as an object
}
# The same columns as a first value of another type would have made them: read as text where they can be.
ODD_MOBILE = {
    "context_traits_email": "INT64",
    "context_device_type": "STRING",
    "context_device_id": "TIMESTAMP",
    "context_device_advertising_id": "INT64",
    "context_device_ad_tracking_enabled": "STRING",
    "context_device_token": "FLOAT64",
    "context_external_ids": "BOOL",
}
# Tables the sync makes (derived tables and their views): a scenario lays out only those it says it has.
MADE_BY_SYNC = {name for d in DERIVED for name in (d.name, d.table)} | {memberships.EVENTS}


@pytest.fixture(scope="session")
def analyzer() -> Iterator[sqlcheck.Analyzer]:
    """One analyzer per pytest process: compiling the wasm module costs a minute when not cached."""
    loaded = sqlcheck.Analyzer.load()
    yield loaded
    loaded.close()


# -- a recording BigQuery client -----------------------------------------------------------------


@dataclass
class Statement:
    sql: str
    params: dict[str, str]  # name -> BigQuery type, exactly as sent
    catalog: sqlcheck.Catalog  # the tables and views that existed when it was sent
    via: str  # "query" or "view"
    analysis: sqlcheck.Analysis | None = None

    def analyze(self, analyzer: sqlcheck.Analyzer) -> sqlcheck.Analysis:
        if self.analysis is None:
            self.analysis = analyzer.analysis(self.sql, self.params, self.catalog)
        return self.analysis


class FakeJob:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.num_dml_affected_rows = 0
        self.dml_stats = SimpleNamespace(inserted_row_count=0, updated_row_count=0, deleted_row_count=0)

    def result(self, **_: Any) -> list[dict[str, Any]]:
        return self.rows


class RecordingBigQuery(FakeBigQuery):
    """FakeBigQuery that keeps every statement sent, so the test does not depend on how sql.py and
    sync.py build them, only on SQL going through `client.query` and views through `create_table`."""

    def __init__(
        self,
        analyzer: sqlcheck.Analyzer,
        project: str = PROJECT,
        *,
        canned: bool = False,
        previous: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(project)
        self.analyzer = analyzer
        self.canned = canned  # answer SELECTs with CANNED instead of analyzing them (huge catalogs are slow)
        self.previous = previous or []  # the answer to the query for the last successful runs
        self.statements: list[Statement] = []

    def catalog(self) -> sqlcheck.Catalog:
        now = sqlcheck.Catalog()
        for path, table in self.tables.items():
            if table.view_query is not None:
                now.views[path] = table.view_query
            else:
                now.tables[path] = {f.name: f.field_type for f in table.schema}
        return now

    def create_table(self, table: bigquery.Table, **kwargs: Any) -> bigquery.Table:
        if table.view_query is not None:
            self.statements.append(Statement(table.view_query, {}, self.catalog(), "view"))
        return super().create_table(table, **kwargs)

    def query(self, sql: str, job_config: bigquery.QueryJobConfig | None = None, **_: Any) -> FakeJob:
        statement = Statement(sql, _params(job_config), self.catalog(), "query")
        self.statements.append(statement)
        self.created_routine(sql)
        rows: list[dict[str, Any]] = []
        if re.match(r"\s*SELECT", sql, re.I) and "sync_history" in sql:
            statement.analyze(self.analyzer)
            rows = self.previous
        elif re.match(r"\s*SELECT", sql, re.I) and " AS fingerprint" in sql:
            if not self.canned:
                statement.analyze(self.analyzer)
            rows = self.audiences(sql)
        elif re.match(r"\s*(SELECT|WITH|\()", sql, re.I) and self.canned:
            rows = [CANNED]
        elif re.match(r"\s*(SELECT|WITH|\()", sql, re.I):  # only queries return rows; DML is analyzed later
            columns = statement.analyze(self.analyzer).columns
            rows = [{name: CANNED.get(name, PLAUSIBLE.get(kind)) for name, kind in columns.items()}] if columns else []
        elif view := CREATE_VIEW.match(sql):  # DDL: the view exists for the statements after it
            made = bigquery.Table(view["path"])
            made.view_query = view["query"]
            self.tables[self._key(made.reference)] = made
        return FakeJob(rows)

    def list_datasets(self, **_: Any) -> list[SimpleNamespace]:
        return [SimpleNamespace(dataset_id=d) for d in sorted(self.datasets)]

    def audiences(self, text: str) -> list[dict[str, Any]]:
        """The audience keys identify calls carry, as BigQuery would answer the memberships sync: every trait
        column of the space's identifies (each type BigQuery can give it), one key with no column, and the
        calls that name no audience."""
        found = re.search(r"`([^`]+)\.identifies`", text)
        table = self.tables.get(f"{found[1]}.identifies") if found else None
        keys = [f.name for f in table.schema if f.name in sql.trait_columns({f.name: f.field_type})] if table else []
        named = [*keys, GONE] if table else []  # only a query that reads identifies finds audience keys
        rows = [{"audience_key": k, "fingerprint": (-1) ** i * (i + 1), "calls": 1} for i, k in enumerate(named)]
        return [*rows, {"audience_key": None, "fingerprint": None, "calls": 2}]


CREATE_VIEW = re.compile(r"^CREATE OR REPLACE VIEW `(?P<path>[^`]+)` AS (?P<query>.*)\Z", re.S)


def _state(traits: Mapping[str, str]) -> dict[str, str]:
    """users_state's columns for these traits: each with its as-of column."""
    return {n: t for c, kind in traits.items() for n, t in ((c, kind), (naming.asof_column(c), "STRING"))}


def _params(config: bigquery.QueryJobConfig | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for param in config.query_parameters if config else []:
        if isinstance(param, bigquery.ScalarQueryParameter):
            found[param.name] = param.type_
        elif isinstance(param, bigquery.ArrayQueryParameter) and isinstance(param.array_type, str):
            found[param.name] = f"ARRAY<{param.array_type}>"
        else:  # teach _params and sqlcheck.type_proto the new kind of parameter
            raise NotImplementedError(f"query parameter {param!r}")
    return found


# -- scenarios: every branch of the users sync ------------------------------------------------------


@dataclass
class Scenario:
    name: str
    spaces: Mapping[str, Mapping[str, str]]  # slug -> trait columns of identifies
    settings: Settings = field(default_factory=Settings)
    full: bool = False
    history: bool = False  # personas__ops.sync_history exists (a previous run)
    users: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # slug -> trait columns users has
    listed: bool = False  # run_sync finds the spaces itself (list_datasets)
    project: str = PROJECT
    expect: Mapping[str, str] = field(default_factory=dict)  # slug -> status other than success
    canned: bool = False  # see RecordingBigQuery
    skipped: Mapping[str, list[str]] = field(default_factory=dict)  # slug -> columns the last run left out
    context: Mapping[str, str] = field(default_factory=lambda: CONTEXT)  # context columns of identifies and tracks

    def __str__(self) -> str:
        return self.name


HALF = dict(list(TRAITS.items())[::2])
SCENARIOS = [
    Scenario("first_run", {"default": TRAITS}),
    Scenario("incremental_new_traits", {"default": TRAITS}, history=True, users={"default": HALF}),
    Scenario(
        "switched_back_on",
        {"default": TRAITS},
        history=True,
        users={"default": TRAITS},
        skipped={"default": list(HALF)},
    ),
    Scenario("full", {"default": TRAITS}, history=True, users={"default": TRAITS}, full=True),
    Scenario(
        "disabled_columns",
        {"default": TRAITS},
        Settings(
            spaces={
                "default": SpaceConfig(disabled_columns={"*": frozenset({"select", "s"}), "users": frozenset({"from"})})
            }
        ),
        history=True,
    ),
    Scenario(
        "users_type_clash",
        {"default": TRAITS},
        history=True,
        users={"default": {"select": "INT64", "s": "STRING", "x": "TIMESTAMP"}},
        expect={"default": sync.PARTIAL},
    ),
    Scenario(
        "several_spaces",
        {"default": TRAITS, "marketing": HALF, "s" * 100: {"u_": "STRING"}, "0": {}},
        history=True,
        listed=True,
    ),
    Scenario("no_trait_columns", {"default": {}}, history=True),
    Scenario(
        "users_disabled",
        {"default": TRAITS, "marketing": TRAITS},
        Settings(
            spaces={
                "marketing": SpaceConfig(disabled_tables=frozenset({"users", "users_history", "audience_memberships"}))
            }
        ),
        history=True,
    ),
    Scenario("domain_scoped_project", {"default": TRAITS}, history=True, project="example.com:personas-test"),
    Scenario("identities_first_run", {"default": {"email": "STRING"}}, context=CONTEXT | MOBILE),
    Scenario("identities_fold", {"default": {"email": "STRING"}}, history=True, context=CONTEXT | MOBILE),
    Scenario(
        "identities_odd_types",
        {"default": {"email": "BOOL"}},
        history=True,
        context=ODD_MOBILE,
        expect={"default": sync.PARTIAL},
    ),
    Scenario(
        "identities_disabled",
        {"default": TRAITS},
        Settings(spaces={"default": SpaceConfig(disabled_tables=frozenset({"identities"}))}),
        history=True,
        context=CONTEXT | MOBILE,
    ),
    Scenario(  # users_history's own columns: those traits are left out of it, and said so
        "history_column_names",
        {"default": {**HALF, "valid_from": "STRING", "valid_to": "INT64"}},
        history=True,
        expect={"default": sync.PARTIAL},
    ),
]


def run(scenario: Scenario, analyzer: sqlcheck.Analyzer) -> tuple[RecordingBigQuery, dict[str, Any]]:
    """Lay out the warehouse through the project's own Warehouse (capturing its views), then sync."""
    previous = [
        {
            "space": slug,
            "table_name": derived.name,
            "layout": derived.layout,
            "watermark_to": PLAUSIBLE["TIMESTAMP"],
            "skipped_columns": json.dumps(scenario.skipped.get(slug, [])),
        }
        for slug in scenario.spaces
        for derived in DERIVED
        if scenario.history
    ]
    client = RecordingBigQuery(analyzer, scenario.project, canned=scenario.canned, previous=previous)
    setup = Warehouse(client)  # type: ignore[arg-type]
    deadline = Deadline(600)
    ops = scenario.settings.ops_dataset
    for slug, traits in scenario.spaces.items():
        laid = sqlcheck.warehouse_catalog(scenario.project, {slug: traits}, ops_dataset=ops, events=AUDIENCE_EVENTS)
        for path, columns in laid.tables.items():
            _, dataset, name = path.rsplit(".", 2)
            if name in MADE_BY_SYNC and (name != "users_state" or slug not in scenario.users):
                continue  # the sync creates them
            if dataset == ops and (name != "sync_history" or not scenario.history):
                continue
            kind = table_specs().get(name, spec("track_event"))
            setup.ensure_table(dataset, name, kind, deadline)
            extra = _state(scenario.users[slug]) if name == "users_state" else columns
            if name in ("identifies", "tracks"):
                extra |= scenario.context
            elif name.startswith("audience_e"):
                extra |= AUDIENCE_TRACK
            extra = {c: t for c, t in extra.items() if c not in kind.column_names}
            if extra:
                setup.add_columns(dataset, name, extra, deadline)
    summary = sync.run_sync(
        Warehouse(client),  # type: ignore[arg-type]
        scenario.settings,
        full=scenario.full,
        spaces=None if scenario.listed else list(scenario.spaces),
    )
    return client, summary


def problems(client: RecordingBigQuery, analyzer: sqlcheck.Analyzer) -> Iterator[str]:
    for i, statement in enumerate(client.statements):
        for error in statement.analyze(analyzer).errors:
            yield f"{statement.via} #{i} ({len(statement.sql)} chars): {error}\n  {_around(statement.sql, error)}"
        if len(statement.sql) > sqlcheck.BIGQUERY_MAX_QUERY_CHARS:
            yield f"{statement.via} #{i}: {len(statement.sql)} characters, over BigQuery's limit"


def _around(sql: str, error: str) -> str:
    """The statement near the error's line:column."""
    where = re.search(r"\[at (\d+):(\d+)\]", error)
    if not where:
        return sql[:200]
    line = sql.split("\n")[int(where[1]) - 1]
    column = int(where[2]) - 1
    return line[max(0, column - 80) : column + 80]


def merges(client: RecordingBigQuery, analyzer: sqlcheck.Analyzer, kept: str = "users_state") -> Counter[str]:
    """Datasets whose `kept` table got a MERGE, by the analyzer's reading of each statement."""
    found: Counter[str] = Counter()
    for statement in client.statements:
        analysis = statement.analyze(analyzer)
        if analysis.kind == "merge_stmt" and analysis.target.endswith(f".{kept}"):
            found[analysis.target.rsplit(".", 2)[1]] += 1
    return found


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_every_statement_passes_the_analyzer(scenario: Scenario, analyzer: sqlcheck.Analyzer) -> None:
    client, summary = run(scenario, analyzer)
    assert list(problems(client, analyzer)) == []
    statuses = {s["space"]: s["status"] for s in summary["spaces"]}
    assert statuses == {slug: scenario.expect.get(slug, sync.SUCCESS) for slug in scenario.spaces}, summary
    for derived in DERIVED:  # the capture saw each table's MERGEs, and only for the spaces that keep it
        kept = {
            naming.space_dataset(s["space"])
            for s in summary["spaces"]
            if s["tables"][derived.name]["status"] != sync.SKIPPED
        }
        assert set(merges(client, analyzer, derived.table)) == kept, derived.name
    kept_by = {s["space"]: s["tables"][MEMBERSHIPS.name]["status"] for s in summary["spaces"]}
    synced = {naming.space_dataset(slug) for slug, status in kept_by.items() if status != sync.SKIPPED}
    assert set(merges(client, analyzer, memberships.EVENTS)) == synced  # its internal table, in the same chunks
    # Views as they are now, with every trait column, still analyze.
    final = client.catalog()
    for path, query in final.views.items():
        assert analyzer.analyze(query, {}, sqlcheck.Catalog(final.tables)) == [], path


def test_statements_fit_bigquery_query_length_at_the_column_budget(analyzer: sqlcheck.Analyzer) -> None:
    """The most trait columns identifies can get (the column budget less its base columns), every name as
    long as the naming rule allows: every statement must stay within BigQuery's 1,024K characters."""
    settings = Settings()
    room = settings.max_columns_per_table - len(spec("identifies").columns)
    traits = sqlcheck.trait_columns({f"trait {i:05d} " + "k" * 400: TYPES[i % len(TYPES)] for i in range(room)})
    assert len(traits) == room and {len(name) for name in traits} == {naming.MAX_COLUMN_LENGTH}
    incremental = Scenario(
        "budget", {"default": traits}, settings, history=True, canned=True, skipped={"default": list(traits)}
    )
    full = Scenario("budget, full", {"default": traits}, settings, history=True, canned=True, full=True)
    kinds: Counter[str] = Counter()
    audience_events: Counter[str] = Counter()
    for scenario in (incremental, full):
        client, _ = run(scenario, analyzer)
        longest = max(len(s.sql) for s in client.statements)
        assert longest <= sqlcheck.BIGQUERY_MAX_QUERY_CHARS, f"longest statement: {longest:,} characters"
        # (Analyzing a 1M-character MERGE takes half a minute; the split ones are analyzed narrow below.)
        kinds.update(
            "rebuild" if "ON FALSE" in s.sql else "fold" if "@since" in s.sql else "columns from history"
            for s in client.statements
            if s.sql.startswith("MERGE") and ".users_state`" in s.sql.split("\n", 1)[0]
        )
        audience_events.update(
            scenario.name
            for s in client.statements
            if s.sql.startswith(f"MERGE `{PROJECT}.personas_default.audience_events`")
        )
    # Fold, the columns switched back on, the full rebuild: each split into several MERGEs.
    assert set(kinds) == {"fold", "columns from history", "rebuild"} and min(kinds.values()) > 1, kinds
    # Every trait an audience: the fold of audience events and its rebuild, split too (a chunk is one
    # statement per group of audiences).
    assert audience_events["budget"] > 1 and audience_events["budget, full"] > 3, audience_events


def test_split_statements_pass_the_analyzer(analyzer: sqlcheck.Analyzer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same query-length split, on a limit small enough that each statement holds a few columns: the
    fold, the full rebuild (a replacing MERGE, then MERGEs filling columns in) and a backfill."""
    monkeypatch.setattr(sql, "MAX_QUERY_CHARS", 8_000)
    narrow = {
        "fold": Scenario("narrow", {"default": HALF}, history=True, users={"default": HALF}),
        "rebuild": Scenario("narrow full", {"default": HALF}, history=True, users={"default": HALF}, full=True),
        "backfill": Scenario(
            "narrow backfill", {"default": HALF}, history=True, users={"default": HALF}, skipped={"default": list(HALF)}
        ),
    }
    for kind, scenario in narrow.items():
        client, summary = run(scenario, analyzer)
        assert [s["status"] for s in summary["spaces"]] == [sync.SUCCESS]
        assert list(problems(client, analyzer)) == []
        assert sum(merges(client, analyzer).values()) > 2 * (2 if kind == "backfill" else 1), kind


# -- the check itself can fail ----------------------------------------------------------------------

USERS = f"`{PROJECT}.personas_default.users`"
BROKEN = {
    "unknown column": (f"SELECT nope FROM {USERS}", {}, "Unrecognized name: nope"),
    "wrong type in a comparison": (f"SELECT id FROM {USERS} WHERE received_at = 1", {}, "No matching signature"),
    "undeclared parameter": (f"SELECT id FROM {USERS} WHERE received_at >= @since", {}, "Query parameter 'since'"),
    "parameter of the wrong type": (
        f"SELECT id FROM {USERS} WHERE received_at >= @since",
        {"since": "INT64"},
        "No matching signature",
    ),
    "missing backticks on a domain-scoped project": (
        "SELECT id FROM example.com:personas-test.personas_default.users",
        {},
        'Syntax error: Expected end of input but got ":"',
    ),
    "missing backticks on a dashed path in an expression": (
        f"SELECT {PROJECT}.personas_default.users.id FROM {USERS}",
        {},
        "Unrecognized name: personas",
    ),
    "keyword as an unquoted column": (f"SELECT select FROM {USERS}", {}, "Syntax error: Unexpected keyword SELECT"),
    "a type BigQuery does not have": (f"SELECT CAST(1 AS INT32) FROM {USERS}", {}, "Type not found: INT32"),
}


@pytest.mark.parametrize("case", BROKEN, ids=str)
def test_broken_sql_is_reported(case: str, analyzer: sqlcheck.Analyzer) -> None:
    sql, params, message = BROKEN[case]
    catalog = sqlcheck.warehouse_catalog(PROJECT, {"default": TRAITS})
    errors = analyzer.analyze(sql, params, catalog)
    assert errors and message in errors[0] and re.search(r"\[at \d+:\d+\]", errors[0]), errors


def test_bigquery_sql_the_project_may_use_is_accepted(analyzer: sqlcheck.Analyzer) -> None:
    """BigQuery's features are on (not only ZetaSQL's defaults): QUALIFY, SELECT * EXCEPT, IGNORE NULLS,
    ARRAY_AGG with ORDER BY and LIMIT, dashed project names, views read through the catalog."""
    identifies = f"`{PROJECT}.personas_default.identifies`"
    catalog = sqlcheck.warehouse_catalog(PROJECT, {"default": TRAITS})
    for statement in [
        f"SELECT * EXCEPT (loaded_at) FROM {identifies} WHERE TRUE QUALIFY ROW_NUMBER() OVER (PARTITION BY id) = 1",
        f"SELECT user_id, ARRAY_AGG(`select` IGNORE NULLS ORDER BY timestamp DESC LIMIT 1)[SAFE_OFFSET(0)] AS v "
        f"FROM {identifies} GROUP BY user_id",
        f"SELECT `from` FROM {PROJECT}.personas_default.identifies_view",
    ]:
        assert analyzer.analyze(statement, {}, catalog) == [], statement


def test_the_capture_reports_a_broken_statement(analyzer: sqlcheck.Analyzer, monkeypatch: pytest.MonkeyPatch) -> None:
    """If sync sent a wrong statement, the scenario test would say so (the capture path is not blind)."""
    broken = "MERGE `{}.{}.users_state` AS _old USING (SELECT 1 AS id) AS _new ON nope WHEN MATCHED THEN DELETE"
    monkeypatch.setattr(users, "fold_sql", lambda project, dataset, *_: broken.format(project, dataset))
    client, _ = run(SCENARIOS[1], analyzer)
    assert any("Unrecognized name: nope" in p for p in problems(client, analyzer))
