"""settings and the config file: start-up refuses anything invalid, naming the variable or key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from personas_warehouse import settings as settings_module
from personas_warehouse.settings import (
    ConfigError,
    ConfigFile,
    PersonasEvents,
    Settings,
    SpaceConfig,
    SpacePolicy,
    load_config_file,
    load_settings,
)
from schemas import config as config_schema_module
from tests.unit._support import FAST

EXAMPLE = {
    "spaces": {
        "marketing": {
            "space_ids": ["spa_9f8d2"],
            "disabled_tables": ["audience_exited"],
            "disabled_columns": {"*": ["email"], "identifies": ["internal_score"]},
        },
        "sales": {"space_ids": ["spa_1", "spa_2"]},
        "bare": {},
    }
}
EXAMPLE_SPACES = {
    "marketing": SpaceConfig(
        space_ids=("spa_9f8d2",),
        disabled_tables=frozenset({"audience_exited"}),
        disabled_columns={"*": frozenset({"email"}), "identifies": frozenset({"internal_score"})},
    ),
    "sales": SpaceConfig(space_ids=("spa_1", "spa_2")),
    "bare": SpaceConfig(),
}


@pytest.fixture(autouse=True)
def no_default_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read a personas.yaml someone left next to the functions."""
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG_FILE", tmp_path / "absent" / "personas.yaml")


def write(tmp_path: Path, content: object, name: str = "personas.yaml") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif name.endswith(".json"):
        path.write_text(json.dumps(content))
    else:
        path.write_text(yaml.safe_dump(content))
    return path


def config_error(tmp_path: Path, content: object, name: str = "personas.yaml") -> str:
    path = write(tmp_path, content, name)
    with pytest.raises(ConfigError) as info:
        load_settings({"PERSONAS_CONFIG": str(path)})
    message = str(info.value)
    assert message.startswith(f"config file {path}: ")
    return message.removeprefix(f"config file {path}: ")


# --- environment -----------------------------------------------------------------------------------


def test_defaults() -> None:
    assert load_settings({}) == Settings()
    assert Settings() == Settings(
        project=None,
        location="US",
        bigquery_emulator_host=None,
        default_space="default",
        ops_dataset="personas__ops",
        max_message_bytes=1_000_000,
        max_rejected_data_bytes=65_536,
        max_columns_per_table=5_000,
        ingest_deadline_seconds=50.0,
        sync_overlap_seconds=120,
        spaces={},
    )


def test_every_variable_is_read() -> None:
    env = {
        "BIGQUERY_PROJECT": "my-project",
        "BIGQUERY_LOCATION": "EU",
        "BIGQUERY_EMULATOR_HOST": "http://localhost:9050",
        "BIGQUERY_EMULATOR_GRPC_HOST": "localhost:9060",
        "DEFAULT_SPACE": "main",
        "OPS_DATASET": "warehouse_ops",
        "MAX_MESSAGE_BYTES": "2048",
        "MAX_REJECTED_DATA_BYTES": "100",
        "MAX_COLUMNS_PER_TABLE": "50",
        "INGEST_DEADLINE_SECONDS": "1.5",
        "SYNC_OVERLAP_SECONDS": "32",
        "UNRELATED": "ignored",
    }
    assert load_settings(env) == Settings(
        project="my-project",
        location="EU",
        bigquery_emulator_host="http://localhost:9050",
        bigquery_emulator_grpc_host="localhost:9060",
        default_space="main",
        ops_dataset="warehouse_ops",
        max_message_bytes=2048,
        max_rejected_data_bytes=100,
        max_columns_per_table=50,
        ingest_deadline_seconds=1.5,
        sync_overlap_seconds=32,
    )


def test_empty_variables_mean_default() -> None:
    names = [
        "BIGQUERY_PROJECT",
        "DEFAULT_SPACE",
        "OPS_DATASET",
        "MAX_MESSAGE_BYTES",
        "INGEST_DEADLINE_SECONDS",
        "PERSONAS_CONFIG",
    ]
    assert load_settings(dict.fromkeys(names, "")) == Settings()


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PERSONAS_CONFIG", raising=False)
    for var in settings_module._ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DEFAULT_SPACE", "from_env")
    assert load_settings().default_space == "from_env"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MAX_MESSAGE_BYTES", "abc"),
        ("MAX_MESSAGE_BYTES", "1.5"),
        ("MAX_MESSAGE_BYTES", "1e6"),
        ("MAX_REJECTED_DATA_BYTES", "64k"),
        ("MAX_COLUMNS_PER_TABLE", "five"),
        ("SYNC_OVERLAP_SECONDS", "10m"),
        ("INGEST_DEADLINE_SECONDS", "soon"),
    ],
)
def test_unparsable_numbers_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{var}={value!r}: "):
        load_settings({var: value})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MAX_MESSAGE_BYTES": "0"}, "MAX_MESSAGE_BYTES must be at least 1"),
        ({"MAX_MESSAGE_BYTES": "-5"}, "MAX_MESSAGE_BYTES must be at least 1"),
        ({"MAX_COLUMNS_PER_TABLE": "49"}, "MAX_COLUMNS_PER_TABLE must be at least 50"),
        (
            {"MAX_COLUMNS_PER_TABLE": "5001"},
            "MAX_COLUMNS_PER_TABLE must be at most 5000: users_state holds two columns per trait and BigQuery "
            "allows 10000 per table",
        ),
        ({"INGEST_DEADLINE_SECONDS": "0.99"}, "INGEST_DEADLINE_SECONDS must be at least 1"),
        ({"INGEST_DEADLINE_SECONDS": "-inf"}, "INGEST_DEADLINE_SECONDS must be at least 1"),
    ],
)
def test_minimums(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        load_settings(env)


@pytest.mark.parametrize(
    "env",
    [
        {"MAX_MESSAGE_BYTES": "1"},
        {"MAX_COLUMNS_PER_TABLE": "50"},
        {"INGEST_DEADLINE_SECONDS": "1"},
        {"MAX_MESSAGE_BYTES": " 7 "},
    ],
)
def test_minimums_are_inclusive(env: dict[str, str]) -> None:
    load_settings(env)


@pytest.mark.parametrize("space", ["Bad", "bad-space", "_x", "a b", "a;drop", "a" * 101, "é"])
def test_unsafe_default_space(space: str) -> None:
    with pytest.raises(ConfigError, match=rf"^DEFAULT_SPACE={re.escape(repr(space))} is not a safe space slug$"):
        load_settings({"DEFAULT_SPACE": space})


@pytest.mark.parametrize(
    "dataset", ["personas_x", "personas_default", "personas_marketing_eu", "ops-x", "a.b", "a" * 1025]
)
def test_bad_ops_dataset(dataset: str) -> None:
    with pytest.raises(ConfigError, match=r"^OPS_DATASET=.* must be a dataset name that no personas_<space> can take$"):
        load_settings({"OPS_DATASET": dataset})


@pytest.mark.parametrize("dataset", ["personas__ops", "ops", "personas_", "Personas_X", "personasx", "a" * 1024])
def test_good_ops_dataset(dataset: str) -> None:
    assert load_settings({"OPS_DATASET": dataset}).ops_dataset == dataset


@pytest.mark.parametrize(
    ("deadline", "overlap", "ok"),
    [
        ("50", "120", True),
        ("50", "80", True),
        ("50", "79", False),
        ("1", "31", True),
        ("1", "30", False),
        ("90", "", True),
        ("91", "", False),
    ],
)
def test_the_overlap_covers_the_latest_a_row_can_become_visible(deadline: str, overlap: str, ok: bool) -> None:
    """A row is stamped loaded_at before its write, which may take the whole ingest deadline: a sync window
    that re-reads less than that (plus a margin) could pass over it for good."""
    env = {"INGEST_DEADLINE_SECONDS": deadline, "SYNC_OVERLAP_SECONDS": overlap}
    if ok:
        assert load_settings(env).sync_overlap_seconds == int(overlap or 120)
    else:
        with pytest.raises(ConfigError, match=r"^SYNC_OVERLAP_SECONDS must be at least INGEST_DEADLINE_SECONDS \+ 30"):
            load_settings(env)


def test_nan_deadline_is_refused() -> None:
    with pytest.raises(ConfigError, match="INGEST_DEADLINE_SECONDS"):
        load_settings({"INGEST_DEADLINE_SECONDS": "nan"})


@pytest.mark.parametrize("var", ["MAX_REJECTED_DATA_BYTES", "SYNC_OVERLAP_SECONDS"])
def test_negative_sizes_and_durations_are_refused(var: str) -> None:
    with pytest.raises(ConfigError, match=var):
        load_settings({var: "-1"})


@pytest.mark.parametrize("env", [{"DEFAULT_SPACE": "main\n"}, {"OPS_DATASET": "ops\n"}])
def test_trailing_newline_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_settings(env)


@FAST
@given(st.text(max_size=12))
def test_default_space_accepted_iff_safe(space: str) -> None:
    if space == "" or space.endswith("\n"):
        return  # "" means the default; trailing newline: see test_trailing_newline_is_refused
    safe = re.fullmatch(r"[a-z0-9][a-z0-9_]{0,99}", space) is not None
    if safe:
        assert load_settings({"DEFAULT_SPACE": space}).default_space == space
    else:
        with pytest.raises(ConfigError, match=r"^DEFAULT_SPACE="):
            load_settings({"DEFAULT_SPACE": space})


@FAST
@given(st.integers(min_value=50, max_value=5_000), st.integers(min_value=1, max_value=10**9))
def test_integer_variables_round_trip(columns: int, size: int) -> None:
    loaded = load_settings({"MAX_COLUMNS_PER_TABLE": str(columns), "MAX_MESSAGE_BYTES": str(size)})
    assert (loaded.max_columns_per_table, loaded.max_message_bytes) == (columns, size)


# --- config file -----------------------------------------------------------------------------------


def test_yaml_example(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    assert load_settings({"PERSONAS_CONFIG": str(path)}).spaces == EXAMPLE_SPACES


def test_json_example(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE, "personas.json")
    assert load_settings({"PERSONAS_CONFIG": str(path)}).spaces == EXAMPLE_SPACES


def test_docstring_example_yaml(tmp_path: Path) -> None:
    """The example of schemas/config.py's docstring is a valid config, read as it says."""
    assert config_schema_module.__doc__ is not None
    example = "\n".join(line[4:] for line in config_schema_module.__doc__.splitlines() if line.startswith("    "))
    config = load_config_file(write(tmp_path, example))
    assert config == ConfigFile({"marketing": EXAMPLE_SPACES["marketing"]}, SpacePolicy("any", 20))


@pytest.mark.parametrize("text", ["", "# nothing\n", "spaces: {}\n", "{}\n", "spaces:\n  # marketing: {}\n"])
def test_empty_config(tmp_path: Path, text: str) -> None:
    assert load_config_file(write(tmp_path, text)) == ConfigFile({}, SpacePolicy())


@pytest.mark.parametrize(
    ("text", "errors"),
    [
        (
            "spaces:\n  a:\n    disabled_tables:\n",
            {"spaces": {"a": {"value": {"disabled_tables": ["Field may not be null."]}}}},
        ),
    ],
)
def test_null_sections_are_refused(tmp_path: Path, text: str, errors: object) -> None:
    assert json.loads(config_error(tmp_path, text)) == errors


def test_default_config_file_is_used_without_personas_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = write(tmp_path, {"spaces": {"x": {"space_ids": ["spa_x"]}}}, "default.yaml")
    monkeypatch.setattr(settings_module, "DEFAULT_CONFIG_FILE", default)
    assert load_settings({}).spaces == {"x": SpaceConfig(space_ids=("spa_x",))}
    other = write(tmp_path, EXAMPLE, "other.yaml")
    assert load_settings({"PERSONAS_CONFIG": str(other)}).spaces == EXAMPLE_SPACES


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"^config file {re.escape(str(path))}: .*No such file"):
        load_settings({"PERSONAS_CONFIG": str(path)})


@pytest.mark.parametrize(
    ("content", "name"),
    [("spaces: [\n", "personas.yaml"), ("{bad json", "personas.json"), ("spaces:\n  a: 1\n :\n", "personas.yaml")],
)
def test_unparsable_config_file(tmp_path: Path, content: str, name: str) -> None:
    config_error(tmp_path, content, name)


@pytest.mark.parametrize(
    ("content", "errors"),
    [
        ({"bogus": 1}, {"bogus": ["Unknown field."]}),
        (
            {"spaces": {"marketing": {"bogus_key": 1}}},
            {"spaces": {"marketing": {"value": {"bogus_key": ["Unknown field."]}}}},
        ),
        (
            {"spaces": {"marketing": {"disabled_column": ["email"]}}},
            {"spaces": {"marketing": {"value": {"disabled_column": ["Unknown field."]}}}},
        ),
        (["a"], {"_schema": ["Invalid input type."]}),
        ({"spaces": ["marketing"]}, {"spaces": ["Not a valid mapping type."]}),
        ({"spaces": {"Bad-Slug": {}}}, {"spaces": {"Bad-Slug": {"key": ["Not a safe space slug: Bad-Slug"]}}}),
        ({"spaces": {"_x": {}}}, {"spaces": {"_x": {"key": ["Not a safe space slug: _x"]}}}),
        (
            {"spaces": {"a": {"space_ids": [""]}}},
            {"spaces": {"a": {"value": {"space_ids": {"0": ["Shorter than minimum length 1."]}}}}},
        ),
        (
            {"spaces": {"a": {"space_ids": "spa_1"}}},
            {"spaces": {"a": {"value": {"space_ids": ["Not a valid list."]}}}},
        ),
        (
            {"spaces": {"a": {"disabled_tables": ["Audience Exited"]}}},
            {"spaces": {"a": {"value": {"disabled_tables": {"0": ["Not a warehouse name: Audience Exited"]}}}}},
        ),
        (
            {"spaces": {"a": {"disabled_columns": {"x": ["Email"]}}}},
            {
                "spaces": {
                    "a": {"value": {"disabled_columns": {"x": {"value": {"0": ["Not a warehouse name: Email"]}}}}}
                }
            },
        ),
        (
            {"spaces": {"a": {"disabled_columns": {"Bad": ["x"]}}}},
            {
                "spaces": {
                    "a": {"value": {"disabled_columns": {"Bad": {"key": ["String does not match expected pattern."]}}}}
                }
            },
        ),
        (
            {"spaces": {"a": {"disabled_tables": ["discards", "users"]}}},
            {"spaces": {"a": {"value": {"disabled_tables": ["These tables cannot be disabled: ['discards']."]}}}},
        ),
        (
            {"spaces": {"a": {"space_ids": ["spa_1"]}, "b": {"space_ids": ["spa_2", "spa_1"]}}},
            {"spaces": ["space_id spa_1 is listed under both a and b."]},
        ),
    ],
)
def test_invalid_config(tmp_path: Path, content: object, errors: object) -> None:
    assert json.loads(config_error(tmp_path, content)) == errors


@pytest.mark.parametrize(
    "column",
    [
        "id",
        "user_id",
        "anonymous_id",
        "received_at",
        "sent_at",
        "original_timestamp",
        "timestamp",
        "loaded_at",
        "event",
        "event_text",
    ],
)
@pytest.mark.parametrize("table", ["*", "identifies", "tracks", "audience_entered", "users"])
def test_base_columns_can_never_be_disabled(tmp_path: Path, table: str, column: str) -> None:
    content = {"spaces": {"a": {"disabled_columns": {table: ["email", column]}}}}
    errors = json.loads(config_error(tmp_path, content))
    assert errors == {
        "spaces": {"a": {"value": {"disabled_columns": [f"{table}: base columns cannot be disabled: ['{column}']."]}}}
    }


def test_error_message_names_the_unknown_key(tmp_path: Path) -> None:
    assert "disabled_colums" in config_error(tmp_path, {"spaces": {"a": {"disabled_colums": {}}}})


@pytest.mark.parametrize(
    "content", [{"spaces": {"a\n": {}}}, {"spaces": {"a": {"disabled_columns": {"x": ["email\n"]}}}}]
)
def test_config_names_with_trailing_newline_are_refused(tmp_path: Path, content: object) -> None:
    config_error(tmp_path, content, "personas.json")


# --- SpaceConfig and Settings lookups --------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "column", "enabled"),
    [
        ("identifies", "email", False),  # "*"
        ("audience_entered", "email", False),  # "*"
        ("identifies", "internal_score", False),
        ("tracks", "internal_score", True),
        ("audience_entered", "internal_score", True),
        ("identifies", "phone", True),
        ("*", "phone", True),
    ],
)
def test_column_enabled(table: str, column: str, enabled: bool) -> None:
    assert EXAMPLE_SPACES["marketing"].column_enabled(table, column) is enabled


@pytest.mark.parametrize(
    ("table", "enabled"), [("audience_exited", False), ("audience_entered", True), ("discards", True)]
)
def test_table_enabled(table: str, enabled: bool) -> None:
    assert EXAMPLE_SPACES["marketing"].table_enabled(table) is enabled


def test_empty_space_config_enables_everything() -> None:
    assert SpaceConfig().column_enabled("identifies", "email")
    assert SpaceConfig().table_enabled("identifies")


def test_settings_lookups() -> None:
    loaded = Settings(spaces=EXAMPLE_SPACES)
    assert loaded.space("marketing") is EXAMPLE_SPACES["marketing"]
    assert loaded.space("unknown") == SpaceConfig()
    assert loaded.slug_for_space_id("spa_9f8d2") == "marketing"
    assert loaded.slug_for_space_id("spa_2") == "sales"
    assert loaded.slug_for_space_id("spa_x") is None
    assert loaded.slug_for_space_id(None) is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "WRITE_GROUP_MAX_WAIT_MS must be at least 0"),
        ("nan", "WRITE_GROUP_MAX_WAIT_MS must be at least 0"),
        ("soon", "WRITE_GROUP_MAX_WAIT_MS='soon': "),
    ],
)
def test_write_group_max_wait_is_a_non_negative_number(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        load_settings({"WRITE_GROUP_MAX_WAIT_MS": value})
    assert load_settings({"WRITE_GROUP_MAX_WAIT_MS": "0"}).write_group_max_wait_ms == 0


# --- space datasets: access entries and key ------------------------------------------------------------

SA = "serviceAccount:personas-ingest@p.iam.gserviceaccount.com"


def test_space_dataset_variables_are_read() -> None:
    env = {
        "SPACE_DATASET_WRITERS": f"{SA}, serviceAccount:personas-sync@p.iam.gserviceaccount.com,",
        "SPACE_DATASET_READERS": "group:analysts@example.com",
        "SPACE_DATASET_KMS_KEY": "projects/p/locations/us/keyRings/r/cryptoKeys/k",
    }
    found = load_settings(env).space_datasets
    assert found.writers == (SA, "serviceAccount:personas-sync@p.iam.gserviceaccount.com")
    assert found.readers == ("group:analysts@example.com",)
    assert found.kms_key_name == "projects/p/locations/us/keyRings/r/cryptoKeys/k"
    assert load_settings({}).space_datasets == settings_module.SpaceDatasets()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SPACE_DATASET_WRITERS": "personas@p.iam.gserviceaccount.com"}, "are not serviceAccount:"),
        ({"SPACE_DATASET_READERS": "allUsers"}, "are not serviceAccount:"),
        ({"SPACE_DATASET_READERS": "user:a@b.c user:d@e.f"}, "are not serviceAccount:"),
        ({"SPACE_DATASET_KMS_KEY": "projects/p/keyRings/r/cryptoKeys/k"}, "SPACE_DATASET_KMS_KEY must be"),
    ],
)
def test_bad_space_dataset_variables_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


# --- space policy and Personas event names -------------------------------------------------------------


def test_space_policy_defaults_to_any_space_up_to_20_datasets(tmp_path: Path) -> None:
    assert Settings().space_policy == SpacePolicy("any", 20)
    path = write(tmp_path, {"space_policy": {"allow": "listed"}, "spaces": {"default": {}, "mkt": {}}})
    assert load_settings({"PERSONAS_CONFIG": str(path)}).space_policy == SpacePolicy("listed", 20)


@pytest.mark.parametrize(
    ("policy", "errors"),
    [
        ({"allow": "some"}, {"space_policy": {"allow": ["Must be one of: any, listed."]}}),
        ({"max_space_datasets": 0}, {"space_policy": {"max_space_datasets": ["Must be greater than or equal to 1."]}}),
        ({"max_space_datasets": "5"}, {"space_policy": {"max_space_datasets": ["Not a valid integer."]}}),
        ({"max": 5}, {"space_policy": {"max": ["Unknown field."]}}),
    ],
)
def test_bad_space_policies_are_refused(tmp_path: Path, policy: object, errors: object) -> None:
    assert json.loads(config_error(tmp_path, {"space_policy": policy})) == errors


def test_listed_spaces_must_list_the_default_space(tmp_path: Path) -> None:
    path = write(tmp_path, {"space_policy": {"allow": "listed"}, "spaces": {"mkt": {}}})
    with pytest.raises(ConfigError, match="DEFAULT_SPACE='default' is not under spaces"):
        load_settings({"PERSONAS_CONFIG": str(path)})
    assert load_settings({"PERSONAS_CONFIG": str(path), "DEFAULT_SPACE": "mkt"}).default_space == "mkt"


def test_personas_event_names_are_configured_per_space(tmp_path: Path) -> None:
    events = {"audience_entered": "Joined Segment", "audience_exited": "Left Segment"}
    path = write(tmp_path, {"spaces": {"mkt": {"personas_events": events}, "other": {}}})
    loaded = load_settings({"PERSONAS_CONFIG": str(path)})
    mkt = loaded.space("mkt").personas_events
    assert mkt == PersonasEvents("Joined Segment", "Left Segment", "Trait Computed")
    assert loaded.space("other").personas_events == loaded.space("unknown").personas_events == PersonasEvents()
    assert [mkt.role_of(e) for e in ("Joined Segment", "Left Segment", "Trait Computed", "Audience Entered")] == [
        "audience_entered",
        "audience_exited",
        "trait_computed",
        None,
    ]


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ({"audience_entered": "Trait Computed"}, "must differ"),
        ({"audience_entered": ""}, "Not a plain event name"),
        ({"audience_entered": " Audience Entered"}, "Not a plain event name"),
        ({"audience_entered": "Audience\nEntered"}, "Not a plain event name"),
        ({"audience_entered": 5}, "Not a valid string"),
        ({"audience_left": "X"}, "Unknown field"),
    ],
)
def test_bad_personas_event_names_are_refused(tmp_path: Path, events: object, message: str) -> None:
    assert message in config_error(tmp_path, {"spaces": {"mkt": {"personas_events": events}}})


def test_personas_event_names_that_make_one_table_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, {"spaces": {"mkt": {"personas_events": {"audience_entered": "audience exited"}}}})
    with pytest.raises(ConfigError, match="same table"):
        load_settings({"PERSONAS_CONFIG": str(path)})
