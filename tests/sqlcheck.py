"""Google's ZetaSQL analyzer as a stand-in for BigQuery's strictness in tests.

The emulator runs SQL BigQuery refuses (and refuses SQL BigQuery runs), so the project's SQL is also
checked by ZetaSQL, the GoogleSQL front end BigQuery's dialect is defined by: PyPI `zetasql`, ZetaSQL
compiled to WebAssembly and run by wasmtime. Three things make it usable in a test suite:

- Compiling the 28 MB module takes 20-70 s; the compiled code is cached with wasmtime's
  `Module.serialize()` under `.cache/zetasql/` (or `$ZETASQL_CACHE_DIR`) and mapped back in ~1 s.
- The package's `Analyzer` converts every resolved tree to Python objects (slow) and copies memory a
  byte at a time; here the local service is called at the protobuf level with bulk memory copies.
- BigQuery splits a quoted `project.dataset.table` into three names, ZetaSQL does not: every table is
  registered under its dotted name, under nested project and dataset catalogs, and under a catalog
  named `project.dataset`, so each way BigQuery accepts to write the name resolves.

Language options are BigQuery's: product mode external, named parameters, and the features BigQuery
has (the list Google's zetasql-toolkit uses for BigQuery), not every feature ZetaSQL knows.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import os
import platform
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import wasmtime
from google.protobuf.message import Message
from zetasql.core.wasm_client import get_tzinfo_dir
from zetasql.wasi import get_wasm_path
from zetasql.wasi._pb2.zetasql.local_service import local_service_pb2 as service
from zetasql.wasi._pb2.zetasql.proto import options_pb2 as options
from zetasql.wasi._pb2.zetasql.proto import simple_catalog_pb2 as catalogs
from zetasql.wasi._pb2.zetasql.public import options_pb2 as public_options
from zetasql.wasi._pb2.zetasql.public import simple_table_pb2 as tables
from zetasql.wasi._pb2.zetasql.public import type_pb2 as types
from zetasql.wasi._pb2.zetasql.resolved_ast import resolved_node_kind_pb2 as node_kinds

from personas_warehouse import naming, sql
from personas_warehouse.settings import Settings
from schemas.tables import table_specs

BIGQUERY_MAX_QUERY_CHARS = 1_048_576  # "1,024K characters" per query text (BigQuery quotas page)
VERSIONS = f"zetasql-{importlib.metadata.version('zetasql')}-wasmtime-{importlib.metadata.version('wasmtime')}"
CACHE_DIR = Path(os.environ.get("ZETASQL_CACHE_DIR") or Path(__file__).resolve().parent.parent / ".cache" / "zetasql")

# BigQuery's language features, after GoogleCloudPlatform/zetasql-toolkit's BigQueryLanguageOptions
# (Google's own mapping of BigQuery onto ZetaSQL), minus DDL-only ones no statement here needs (the
# table function users_history keeps is one it needs).
_FEATURES = """
ANALYTIC_FUNCTIONS BIGNUMERIC_TYPE CBRT_FUNCTIONS CREATE_VIEW_WITH_COLUMN_LIST DML_UPDATE_WITH_JOIN
GEOGRAPHY GROUP_BY_ROLLUP INTERVAL_TYPE INVERSE_TRIG_FUNCTIONS JSON_ARRAY_FUNCTIONS JSON_TYPE
JSON_VALUE_EXTRACTION_FUNCTIONS NAMED_ARGUMENTS NUMERIC_TYPE PARAMETERIZED_TYPES ROUND_WITH_ROUNDING_MODE
TABLESAMPLE TABLE_VALUED_FUNCTIONS TIMESTAMP_NANOS V_1_1_HAVING_IN_AGGREGATE V_1_1_LIMIT_IN_AGGREGATE
V_1_1_NULL_HANDLING_MODIFIER_IN_AGGREGATE V_1_1_NULL_HANDLING_MODIFIER_IN_ANALYTIC V_1_1_ORDER_BY_IN_AGGREGATE
V_1_1_SELECT_STAR_EXCEPT_REPLACE V_1_1_WITH_ON_SUBQUERY V_1_2_CIVIL_TIME V_1_2_SAFE_FUNCTION_CALL
V_1_2_WEEK_WITH_WEEKDAY V_1_3_ADDITIONAL_STRING_FUNCTIONS V_1_3_ALLOW_DASHES_IN_TABLE_NAME
V_1_3_ALLOW_REGEXP_EXTRACT_OPTIONALS V_1_3_CASE_STMT V_1_3_CONCAT_MIXED_TYPES V_1_3_DATE_ARITHMETICS
V_1_3_DATE_TIME_CONSTRUCTORS V_1_3_DECIMAL_ALIAS V_1_3_EXTENDED_DATE_TIME_SIGNATURES V_1_3_FORMAT_IN_CAST
V_1_3_IS_DISTINCT V_1_3_LIKE_ANY_SOME_ALL V_1_3_NULLS_FIRST_LAST_IN_ORDER_BY V_1_3_OMIT_INSERT_COLUMN_LIST
V_1_3_PIVOT V_1_3_QUALIFY V_1_3_REPEAT V_1_3_UNNEST_AND_FLATTEN_ARRAYS V_1_3_UNPIVOT V_1_3_WITH_GROUP_ROWS
V_1_3_WITH_RECURSIVE V_1_4_ARRAY_AGGREGATION_FUNCTIONS V_1_4_GROUPING_BUILTIN V_1_4_GROUPING_SETS
V_1_4_GROUP_BY_ALL CREATE_TABLE_FUNCTION
"""
BIGQUERY_FEATURES = _FEATURES.split()
STATEMENT_KINDS = (
    "QUERY_STMT",
    "MERGE_STMT",
    "INSERT_STMT",
    "UPDATE_STMT",
    "DELETE_STMT",
    "CREATE_VIEW_STMT",
    "CREATE_TABLE_FUNCTION_STMT",  # users_at (derived/users_history.py)
)

# BigQuery type names (standard and legacy) -> ZetaSQL type kinds.
TYPE_KINDS = {
    "STRING": "STRING",
    "BYTES": "BYTES",
    "INT64": "INT64",
    "INTEGER": "INT64",
    "FLOAT64": "DOUBLE",
    "FLOAT": "DOUBLE",
    "BOOL": "BOOL",
    "BOOLEAN": "BOOL",
    "TIMESTAMP": "TIMESTAMP",
    "DATE": "DATE",
    "DATETIME": "DATETIME",
    "TIME": "TIME",
    "NUMERIC": "NUMERIC",
    "BIGNUMERIC": "BIGNUMERIC",
    "JSON": "JSON",
    "GEOGRAPHY": "GEOGRAPHY",
}
BIGQUERY_NAMES = {"DOUBLE": "FLOAT64"}  # ZetaSQL kinds whose BigQuery name differs
_ARRAY = re.compile(r"^ARRAY<(\w+)>\Z")
_ERROR = re.compile(r"^Code: (\d+), Message: (.*)\Z", re.S)


def type_proto(bigquery_type: str) -> types.TypeProto:
    """`STRING`, `FLOAT64`, `ARRAY<INT64>` ... as a ZetaSQL type."""
    upper = bigquery_type.upper()
    if match := _ARRAY.match(upper):
        return types.TypeProto(type_kind=types.TYPE_ARRAY, array_type={"element_type": type_proto(match[1])})
    return types.TypeProto(type_kind=types.TypeKind.Value("TYPE_" + TYPE_KINDS[upper]))


def language_options() -> options.LanguageOptionsProto:
    return options.LanguageOptionsProto(
        product_mode=public_options.PRODUCT_EXTERNAL,
        name_resolution_mode=public_options.NAME_RESOLUTION_DEFAULT,
        enabled_language_features=[public_options.LanguageFeature.Value("FEATURE_" + f) for f in BIGQUERY_FEATURES],
        supported_statement_kinds=[node_kinds.ResolvedNodeKind.Value("RESOLVED_" + k) for k in STATEMENT_KINDS],
        reserved_keywords=["QUALIFY"],  # reserved in BigQuery
    )


@dataclass
class Catalog:
    """What the statement may see: tables by full path `project.dataset.table` -> {column: BigQuery type},
    and views by full path -> their query (their columns are what that query yields at analysis time)."""

    tables: dict[str, dict[str, str]] = field(default_factory=dict)
    views: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Analysis:
    errors: list[str]
    kind: str = ""  # e.g. "query_stmt", "merge_stmt"
    target: str = ""  # the table a DML statement writes, `project.dataset.table`
    columns: dict[str, str] = field(default_factory=dict)  # output columns of a query: name -> BigQuery type
    scans: dict[str, set[str]] = field(default_factory=dict)  # table read -> the columns read of it (pruned)


def _scans(tree: Message) -> dict[str, set[str]]:
    """Every table scan in a resolved tree and the columns it reads. The analyzer ran with
    prune_unused_columns, so a `SELECT *` whose columns are not used further does not count them:
    as BigQuery bills, by the columns a query reads."""
    found: dict[str, set[str]] = {}
    stack = [tree]
    while stack:
        node = stack.pop()
        if node.DESCRIPTOR.name == "ResolvedTableScanProto":
            columns = found.setdefault(node.table.full_name, set())
            columns.update(c.name for c in node.parent.column_list)
        for described, value in node.ListFields():
            if described.message_type is None:
                continue
            stack.extend(value if described.is_repeated else [value])
    return found


def warehouse_catalog(
    project: str,
    spaces: Mapping[str, Mapping[str, str]],
    *,
    ops_dataset: str = Settings().ops_dataset,
    events: Iterable[str] = ("Audience Entered", "Trait Computed"),
) -> Catalog:
    """Every table tables.json declares, as the project creates them: for each space (slug -> trait
    columns) `identifies` and `users` with the traits, `tracks`, one table per event, `discards`, the
    `<table>_view`s; and the operations tables. Trait names are passed through unchanged."""
    specs = table_specs()
    fixed = frozenset(k for k, s in specs.items() if s.dataset == "space" and k != "track_event")
    found = Catalog()
    for slug, traits in spaces.items():
        dataset = naming.space_dataset(slug)
        kinds = {k: k for k in fixed} | {naming.event_table_name(e, taken=fixed): "track_event" for e in events}
        for name, kind in kinds.items():
            spec = specs[kind]
            columns = {c.name: c.type for c in spec.columns}
            if kind in ("identifies", "users", "track_event"):
                columns |= traits
            found.tables[f"{project}.{dataset}.{name}"] = columns
            if spec.dedup_view:
                found.views[f"{project}.{dataset}.{naming.view_name(name)}"] = sql.dedup_view_sql(
                    project, dataset, name
                )
    for kind, spec in specs.items():
        if spec.dataset == "ops":
            found.tables[f"{project}.{ops_dataset}.{kind}"] = {c.name: c.type for c in spec.columns}
    return found


def trait_columns(keys: Mapping[str, str]) -> dict[str, str]:
    """Trait keys (key -> BigQuery type) named as ingest names identifies' trait columns."""
    taken = table_specs()["identifies"].column_names
    return {naming.column_name((key,), taken=taken, taken_prefixes=("context_",)): kind for key, kind in keys.items()}


class Analyzer:
    """One instance of ZetaSQL's local service in wasm; `load()` once per process (a session fixture)."""

    def __init__(self, module: wasmtime.Module, engine: wasmtime.Engine) -> None:
        self._engine, self._module = engine, module
        self.store = wasmtime.Store(engine)
        wasi = wasmtime.WasiConfig()
        wasi.inherit_stderr()
        if zoneinfo := get_tzinfo_dir():  # TIMESTAMP functions need time zones
            wasi.preopen_dir(zoneinfo, "/usr/share/zoneinfo")
        self.store.set_wasi(wasi)
        linker = wasmtime.Linker(engine)
        linker.define_wasi()
        self._exports = linker.instantiate(self.store, module).exports(self.store)
        if "_initialize" in self._exports:
            self._exports["_initialize"](self.store)
        self._memory = self._exports["memory"]
        self.language = language_options()
        self.compile_seconds = 0.0
        self.load_seconds = 0.0

    @classmethod
    def load(cls, cache_dir: Path = CACHE_DIR) -> Analyzer:
        """Map the compiled module from the cache, compiling and caching it first if it is not there."""
        started = time.perf_counter()
        config = wasmtime.Config()
        with contextlib.suppress(AttributeError):
            config.shared_memory = True  # as zetasql's own client: the module imports shared memory
        engine = wasmtime.Engine(config)
        cached = cache_dir / f"{VERSIONS}-{platform.machine()}.cwasm"
        compile_seconds = 0.0
        try:
            module = wasmtime.Module.deserialize_file(engine, str(cached))
        except Exception:  # absent, or from another wasmtime build: compile again
            module = wasmtime.Module.from_file(engine, str(get_wasm_path()))
            compile_seconds = time.perf_counter() - started
            cache_dir.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(f".{os.getpid()}.tmp")
            partial.write_bytes(module.serialize())
            partial.replace(cached)  # atomic: a concurrent run sees the whole file or none
        analyzer = cls(module, engine)
        analyzer.compile_seconds = compile_seconds
        analyzer.load_seconds = time.perf_counter() - started
        return analyzer

    def analyze(self, sql: str, params: Mapping[str, str], catalog: Catalog) -> list[str]:
        """Errors ("message [at line:column]") BigQuery's analyzer reports for `sql`; [] when it is valid.
        `params` are the named query parameters sent with it (name -> BigQuery type), no others."""
        return self.analysis(sql, params, catalog).errors

    def analysis(self, sql: str, params: Mapping[str, str], catalog: Catalog) -> Analysis:
        """`analyze`, plus what the analyzer read: the statement's kind, the table it writes, the
        columns it returns (the recording fake answers queries with rows of that shape)."""
        request = service.AnalyzeRequest(
            options=options.AnalyzerOptionsProto(
                language_options=self.language,
                error_message_mode=public_options.ERROR_MESSAGE_ONE_LINE,
                parameter_mode=public_options.PARAMETER_NAMED,
                prune_unused_columns=True,  # smaller resolved trees to send back
                query_parameters=[
                    options.AnalyzerOptionsProto.QueryParameterProto(name=n, type=type_proto(t))
                    for n, t in params.items()
                ],
            ),
            simple_catalog=self._catalog_proto(catalog, sql),
            sql_statement=sql,
        )
        try:
            response = service.AnalyzeResponse.FromString(self._call("ZetaSqlLocalService_Analyze", request))
        except _ServiceError as exc:
            return Analysis([str(exc)])
        statement = response.resolved_statement
        kind = statement.WhichOneof("node") or ""
        columns: dict[str, str] = {}
        node = getattr(statement, kind) if kind else None
        target = (
            node.table_scan.table.full_name
            if node is not None and "table_scan" in node.DESCRIPTOR.fields_by_name
            else ""
        )
        if kind == "resolved_query_stmt_node":
            for out in statement.resolved_query_stmt_node.output_column_list:
                zeta = types.TypeKind.Name(out.column.type.type_kind).removeprefix("TYPE_")
                columns[out.name] = BIGQUERY_NAMES.get(zeta, zeta)
        return Analysis([], kind.removeprefix("resolved_").removesuffix("_node"), target, columns, _scans(statement))

    def close(self) -> None:
        """Release the wasm instance now, not in finalizers at interpreter exit (they then fail noisily)."""
        self._exports = {}
        for resource in (self._memory, self.store, self._module, self._engine):
            resource.close()

    # -- internals ------------------------------------------------------------------------------

    def _catalog_proto(self, catalog: Catalog, sql: str) -> catalogs.SimpleCatalogProto:
        """The tables and views the statement names (sending all of them costs seconds with thousands of
        columns), tables under each name BigQuery accepts, views with the columns their query yields
        now (BigQuery resolves a view's `*` when it is queried)."""
        found = {path: columns for path, columns in catalog.tables.items() if path.rsplit(".", 1)[-1] in sql}
        for path, query in catalog.views.items():
            if path.rsplit(".", 1)[-1] in sql:
                view = self.analysis(query, {}, Catalog(catalog.tables))
                if view.errors:
                    raise AssertionError(f"view {path} does not analyze: {view.errors}")
                found[path] = view.columns
        root = catalogs.SimpleCatalogProto(
            name="bigquery",
            builtin_function_options=options.ZetaSQLBuiltinFunctionOptionsProto(language_options=self.language),
        )
        projects: dict[str, catalogs.SimpleCatalogProto] = {}
        datasets: dict[str, catalogs.SimpleCatalogProto] = {}  # project -> dataset catalogs, by "p.d"
        qualified: dict[str, catalogs.SimpleCatalogProto] = {}  # catalogs named "p.d", by "p.d"
        for path, columns in found.items():
            project, dataset, name = path.rsplit(".", 2)  # a project may be `example.com:name`
            prefix = f"{project}.{dataset}"
            if prefix not in datasets:
                if project not in projects:
                    projects[project] = root.catalog.add(name=project)
                datasets[prefix] = projects[project].catalog.add(name=dataset)
                qualified[prefix] = root.catalog.add(name=prefix)
            root.table.append(_table(path, path, columns))  # `p.d.t`
            datasets[prefix].table.append(_table(name, path, columns))  # p.d.t, `p`.`d`.`t`
            qualified[prefix].table.append(_table(name, path, columns))  # `p.d`.t
        return root

    def _call(self, method: str, request: service.AnalyzeRequest) -> bytes:
        """One local-service call: the request's bytes into wasm memory, the response's bytes out."""
        ex, store = self._exports, self.store
        data = request.SerializeToString()
        request_at, size_at = ex["wasm_malloc"](store, len(data)), ex["wasm_malloc"](store, 4)
        try:
            ctypes.memmove(self._base() + request_at, data, len(data))
            response_at = ex[method](store, request_at, len(data), size_at)
            if response_at == 0:
                error = ctypes.string_at(
                    self._base() + ex["wasm_get_last_error"](store), ex["wasm_get_last_error_size"](store)
                )
                match = _ERROR.match(error.decode("utf-8", "replace"))
                raise _ServiceError(match[2] if match else error.decode("utf-8", "replace"))
            size = int.from_bytes(ctypes.string_at(self._base() + size_at, 4), "little")
            response = ctypes.string_at(self._base() + response_at, size)
            ex["wasm_free"](store, response_at)
            return response
        finally:
            ex["wasm_free"](store, request_at)
            ex["wasm_free"](store, size_at)

    def _base(self) -> int:
        """Address of wasm memory now (it moves when the module grows its memory)."""
        return ctypes.addressof(self._memory.data_ptr().contents)


class _ServiceError(Exception):
    pass


def _table(name: str, path: str, columns: Mapping[str, str]) -> tables.SimpleTableProto:
    return tables.SimpleTableProto(
        name=name,
        full_name=path,
        column=[tables.SimpleColumnProto(name=c, type=type_proto(t)) for c, t in columns.items()],
    )
