"""Configuration: environment variables plus one validated config file. Read once, at start-up.

An invalid value fails start-up with a message naming the variable or config key; nothing is ever
half-applied. README's configuration table lists every setting here.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from marshmallow import ValidationError

from personas_warehouse import naming
from schemas.config import ALL_TABLES, ANY_SPACE, CONFIG_SCHEMA, DEFAULT_MAX_SPACE_DATASETS, LISTED_SPACES

DEFAULT_CONFIG_FILE = Path(__file__).resolve().parent.parent / "personas.yaml"
BIGQUERY_MAX_COLUMNS = 10_000  # columns per table BigQuery allows
# users_state keeps two columns per trait (the value and its as-of key), so a space's traits must fit
# twice in one table: the budget of identifies is at most about half of BigQuery's limit.
MAX_COLUMN_BUDGET = 5_000
# A row becomes visible to the sync at most INGEST_DEADLINE_SECONDS plus this after its loaded_at: ingest
# stamps loaded_at, then writes within its deadline, and BigQuery shows a written row to queries at once;
# the margin covers a write BigQuery finished as the client gave up on it, and clock skew between machines.
# SYNC_OVERLAP_SECONDS below their sum would let the sync's window pass over rows not visible yet.
ROW_VISIBLE_MARGIN_SECONDS = 30
# BIGQUERY_WRITER: how rows reach BigQuery (docs/writers.md, "Choosing the default writer").
INSERT_ALL, STORAGE_WRITE = "insert_all", "storage_write"
WRITERS = (INSERT_ALL, STORAGE_WRITE)


# IAM members the functions may name in a new dataset's access entries, and the entity type each becomes
# (https://cloud.google.com/bigquery/docs/reference/rest/v2/datasets#Dataset.FIELDS.access).
MEMBER = re.compile(r"^(serviceAccount|user|group|domain):[^\s,:]+\Z")
KMS_KEY = re.compile(r"^projects/[^/\s]+/locations/[^/\s]+/keyRings/[^/\s]+/cryptoKeys/[^/\s]+\Z")


class ConfigError(Exception):
    """The environment or the config file is invalid; the function must not start."""


@dataclass(frozen=True)
class PersonasEvents:
    """The track event names a space's Personas (Engage) sends for audiences and computed traits. Engage's
    defaults are "Audience Entered", "Audience Exited" and "Trait Computed", and each is configurable where
    an audience or trait is connected to a destination ("Enter Event" / "Exit Event", the trait's event
    name), so whatever reads these events (audience membership, trait history) asks this, never the
    literals. Ingest itself stores every track event alike (a table per event name)."""

    audience_entered: str = "Audience Entered"
    audience_exited: str = "Audience Exited"
    trait_computed: str = "Trait Computed"

    ROLES = ("audience_entered", "audience_exited", "trait_computed")

    def names(self) -> dict[str, str]:
        """role -> event name."""
        return {role: getattr(self, role) for role in self.ROLES}

    def role_of(self, event: str) -> str | None:
        """`audience_entered`, `audience_exited` or `trait_computed` for one of these names (exactly as sent,
        as Engage sends them), else None."""
        return next((role for role, name in self.names().items() if name == event), None)


@dataclass(frozen=True)
class SpaceConfig:
    space_ids: tuple[str, ...] = ()
    disabled_tables: frozenset[str] = frozenset()
    disabled_columns: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # The Personas track event names of this space (README, "Configuration"; docs/connect-segment.md).
    personas_events: PersonasEvents = PersonasEvents()

    def table_enabled(self, table: str) -> bool:
        return table not in self.disabled_tables

    def column_enabled(self, table: str, column: str) -> bool:
        return column not in self.disabled_columns.get(ALL_TABLES, ()) and column not in self.disabled_columns.get(
            table, ()
        )


@dataclass(frozen=True)
class SpacePolicy:
    """Which spaces may get a dataset (any publisher to the topic picks the `space` attribute, and every
    space dataset costs the users sync queries every minute). `any`: every safe slug, while fewer than
    `max_space_datasets` space datasets exist (an approximate bound: spaces.py); `listed`: only the spaces
    of the config file. A call for a refused space is a `space_refused` rejection, never a dataset."""

    allow: str = ANY_SPACE
    max_space_datasets: int = DEFAULT_MAX_SPACE_DATASETS


@dataclass(frozen=True)
class SpaceDatasets:
    """How the functions create a space dataset, which holds personal data: the access entries (IAM
    members given WRITER or READER; when any is given, BigQuery's defaults, the creator's OWNER included,
    are replaced, so project owners are kept as OWNER) and the default customer-managed key."""

    writers: tuple[str, ...] = ()
    readers: tuple[str, ...] = ()
    kms_key_name: str | None = None


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
    # Forgetting users (docs/forget.md): the key of the ids' keyed hashes (never printed), and how stale
    # ingest's copy of the forgotten ids may be.
    forget_hash_key: str | None = field(default=None, repr=False)
    forget_refresh_seconds: float = 60.0
    space_dataset_writers: tuple[str, ...] = ()
    space_dataset_readers: tuple[str, ...] = ()
    space_dataset_kms_key: str | None = None
    spaces: Mapping[str, SpaceConfig] = field(default_factory=dict)
    space_policy: SpacePolicy = SpacePolicy()

    @property
    def space_datasets(self) -> SpaceDatasets:
        return SpaceDatasets(self.space_dataset_writers, self.space_dataset_readers, self.space_dataset_kms_key)

    def space(self, slug: str) -> SpaceConfig:
        return self.spaces.get(slug, SpaceConfig())

    def slug_for_space_id(self, space_id: str | None) -> str | None:
        for slug, space in self.spaces.items():
            if space_id in space.space_ids:
                return slug
        return None


def _members(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


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
    "FORGET_HASH_KEY": ("forget_hash_key", str),
    "FORGET_REFRESH_SECONDS": ("forget_refresh_seconds", float),
    "SPACE_DATASET_WRITERS": ("space_dataset_writers", _members),
    "SPACE_DATASET_READERS": ("space_dataset_readers", _members),
    "SPACE_DATASET_KMS_KEY": ("space_dataset_kms_key", str),
}
# A key shorter than this is refused: the hashes of guessable ids (emails) are only as safe as the key.
MIN_FORGET_KEY_CHARS = 32


@dataclass(frozen=True)
class ConfigFile:
    spaces: dict[str, SpaceConfig]
    space_policy: SpacePolicy


def load_config_file(path: Path) -> ConfigFile:
    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    try:
        loaded = CONFIG_SCHEMA.load(raw or {})
    except ValidationError as exc:
        raise ConfigError(f"config file {path}: {json.dumps(exc.messages, sort_keys=True)}") from exc
    spaces = {
        slug: SpaceConfig(
            space_ids=tuple(body["space_ids"]),
            disabled_tables=frozenset(body["disabled_tables"]),
            disabled_columns={table: frozenset(names) for table, names in body["disabled_columns"].items()},
            personas_events=PersonasEvents(**body["personas_events"]),
        )
        for slug, body in (loaded["spaces"] or {}).items()
    }
    return ConfigFile(spaces, SpacePolicy(**loaded["space_policy"]))


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
    path = Path(config_path) if config_path else DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.exists() else None
    if path is not None:
        config = load_config_file(path)
        values["spaces"], values["space_policy"] = config.spaces, config.space_policy
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
        "forget_refresh_seconds": 1,
    }
    for var, minimum in minimums.items():
        value = getattr(settings, var)
        if not math.isfinite(value) or value < minimum:
            raise ConfigError(f"{var.upper()} must be at least {minimum}")
    least = settings.ingest_deadline_seconds + ROW_VISIBLE_MARGIN_SECONDS
    if settings.sync_overlap_seconds < least:
        raise ConfigError(
            f"SYNC_OVERLAP_SECONDS must be at least INGEST_DEADLINE_SECONDS + {ROW_VISIBLE_MARGIN_SECONDS} "
            f"({least:g}): a row can become visible that long after its loaded_at, and the sync must re-read it"
        )
    if settings.forget_hash_key is not None and len(settings.forget_hash_key) < MIN_FORGET_KEY_CHARS:
        raise ConfigError(
            f"FORGET_HASH_KEY must be at least {MIN_FORGET_KEY_CHARS} characters (e.g. 32 random bytes, base64)"
        )
    bad = [m for m in (*settings.space_dataset_writers, *settings.space_dataset_readers) if not MEMBER.match(m)]
    if bad:
        raise ConfigError(
            f"SPACE_DATASET_WRITERS / SPACE_DATASET_READERS: {bad} are not serviceAccount:, user:, group: or domain: "
            "members (comma-separated)"
        )
    if settings.space_dataset_kms_key is not None and not KMS_KEY.match(settings.space_dataset_kms_key):
        raise ConfigError("SPACE_DATASET_KMS_KEY must be projects/P/locations/L/keyRings/R/cryptoKeys/K")
    if settings.space_policy.allow == LISTED_SPACES and settings.default_space not in settings.spaces:
        raise ConfigError(
            f"space_policy.allow is listed but DEFAULT_SPACE={settings.default_space!r} is not under spaces: calls "
            "without a space would all be refused"
        )
    for slug, space in settings.spaces.items():
        tables = {naming.event_table_name(name, taken=frozenset()) for name in space.personas_events.names().values()}
        if len(tables) < 3:
            raise ConfigError(f"spaces.{slug}.personas_events: two of the names make the same table {sorted(tables)}")
    if settings.max_columns_per_table > MAX_COLUMN_BUDGET:
        raise ConfigError(
            f"MAX_COLUMNS_PER_TABLE must be at most {MAX_COLUMN_BUDGET}: users_state holds two columns per trait "
            f"and BigQuery allows {BIGQUERY_MAX_COLUMNS} per table"
        )
