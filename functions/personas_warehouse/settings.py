"""Configuration: environment variables plus one validated config file. Read once, at start-up.

An invalid value fails start-up with a message naming the variable or config key; nothing is ever
half-applied. README's configuration table lists every setting here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from marshmallow import ValidationError

from personas_warehouse import naming
from schemas.config import ALL_TABLES, CONFIG_SCHEMA

DEFAULT_CONFIG_FILE = Path(__file__).resolve().parent.parent / "personas.yaml"
BIGQUERY_MAX_COLUMNS = 10_000  # columns per table BigQuery allows
# users_state keeps two columns per trait (the value and its as-of key), so a space's traits must fit
# twice in one table: the budget of identifies is at most about half of BigQuery's limit.
MAX_COLUMN_BUDGET = 5_000
# BIGQUERY_WRITER: how rows reach BigQuery (docs/writers.md, "Choosing the default writer").
INSERT_ALL, STORAGE_WRITE = "insert_all", "storage_write"
WRITERS = (INSERT_ALL, STORAGE_WRITE)


class ConfigError(Exception):
    """The environment or the config file is invalid; the function must not start."""


@dataclass(frozen=True)
class SpaceConfig:
    space_ids: tuple[str, ...] = ()
    disabled_tables: frozenset[str] = frozenset()
    disabled_columns: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def table_enabled(self, table: str) -> bool:
        return table not in self.disabled_tables

    def column_enabled(self, table: str, column: str) -> bool:
        return column not in self.disabled_columns.get(ALL_TABLES, ()) and column not in self.disabled_columns.get(
            table, ()
        )


@dataclass(frozen=True)
class Settings:
    project: str | None = None
    location: str = "US"
    bigquery_emulator_host: str | None = None
    bigquery_emulator_grpc_host: str | None = None
    bigquery_writer: str = STORAGE_WRITE
    default_space: str = "default"
    ops_dataset: str = "personas__ops"
    max_message_bytes: int = 1_000_000
    max_rejected_data_bytes: int = 65_536
    max_columns_per_table: int = 5_000
    ingest_deadline_seconds: float = 50.0
    sync_overlap_seconds: int = 120
    write_group_max_wait_ms: float = 50.0
    spaces: Mapping[str, SpaceConfig] = field(default_factory=dict)

    def space(self, slug: str) -> SpaceConfig:
        return self.spaces.get(slug, SpaceConfig())

    def slug_for_space_id(self, space_id: str | None) -> str | None:
        for slug, space in self.spaces.items():
            if space_id in space.space_ids:
                return slug
        return None


# env var -> (Settings field, parser)
_ENV: dict[str, tuple[str, Any]] = {
    "BIGQUERY_PROJECT": ("project", str),
    "BIGQUERY_LOCATION": ("location", str),
    "BIGQUERY_EMULATOR_HOST": ("bigquery_emulator_host", str),
    "BIGQUERY_EMULATOR_GRPC_HOST": ("bigquery_emulator_grpc_host", str),
    "BIGQUERY_WRITER": ("bigquery_writer", str),
    "DEFAULT_SPACE": ("default_space", str),
    "OPS_DATASET": ("ops_dataset", str),
    "MAX_MESSAGE_BYTES": ("max_message_bytes", int),
    "MAX_REJECTED_DATA_BYTES": ("max_rejected_data_bytes", int),
    "MAX_COLUMNS_PER_TABLE": ("max_columns_per_table", int),
    "INGEST_DEADLINE_SECONDS": ("ingest_deadline_seconds", float),
    "SYNC_OVERLAP_SECONDS": ("sync_overlap_seconds", int),
    "WRITE_GROUP_MAX_WAIT_MS": ("write_group_max_wait_ms", float),
}


def load_config_file(path: Path) -> dict[str, SpaceConfig]:
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    try:
        loaded = CONFIG_SCHEMA.load(raw or {})
    except ValidationError as exc:
        raise ConfigError(f"config file {path}: {json.dumps(exc.messages, sort_keys=True)}") from exc
    return {
        slug: SpaceConfig(
            space_ids=tuple(body["space_ids"]),
            disabled_tables=frozenset(body["disabled_tables"]),
            disabled_columns={table: frozenset(names) for table, names in body["disabled_columns"].items()},
        )
        for slug, body in (loaded["spaces"] or {}).items()
    }


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for var, (name, parse) in _ENV.items():
        if env.get(var, "") == "":
            continue
        try:
            values[name] = parse(env[var])
        except ValueError as exc:
            raise ConfigError(f"{var}={env[var]!r}: {exc}") from exc
    config_path = env.get("PERSONAS_CONFIG")
    if config_path:
        values["spaces"] = load_config_file(Path(config_path))
    elif DEFAULT_CONFIG_FILE.exists():
        values["spaces"] = load_config_file(DEFAULT_CONFIG_FILE)
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if not naming.is_space_slug(settings.default_space):
        raise ConfigError(f"DEFAULT_SPACE={settings.default_space!r} is not a safe space slug")
    if settings.bigquery_writer not in WRITERS:
        raise ConfigError(f"BIGQUERY_WRITER={settings.bigquery_writer!r} must be one of {', '.join(WRITERS)}")
    if (
        settings.bigquery_writer == STORAGE_WRITE
        and settings.bigquery_emulator_host
        and not settings.bigquery_emulator_grpc_host
    ):
        # Without it the Write API client would go to Google with no credentials while insertAll goes local.
        raise ConfigError("BIGQUERY_WRITER=storage_write with BIGQUERY_EMULATOR_HOST needs BIGQUERY_EMULATOR_GRPC_HOST")
    ops = settings.ops_dataset
    if not naming.DATASET_NAME.match(ops) or naming.is_space_dataset(ops):
        raise ConfigError(f"OPS_DATASET={ops!r} must be a dataset name that no personas_<space> can take")
    minimums = {
        "max_message_bytes": 1,
        "max_rejected_data_bytes": 0,
        "max_columns_per_table": 50,
        "ingest_deadline_seconds": 1,
        "sync_overlap_seconds": 0,
        "write_group_max_wait_ms": 0,
    }
    for var, minimum in minimums.items():
        value = getattr(settings, var)
        if not math.isfinite(value) or value < minimum:
            raise ConfigError(f"{var.upper()} must be at least {minimum}")
    if settings.max_columns_per_table > MAX_COLUMN_BUDGET:
        raise ConfigError(
            f"MAX_COLUMNS_PER_TABLE must be at most {MAX_COLUMN_BUDGET}: users_state holds two columns per trait "
            f"and BigQuery allows {BIGQUERY_MAX_COLUMNS} per table"
        )
