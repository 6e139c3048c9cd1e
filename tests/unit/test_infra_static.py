"""Static checks of the Google Cloud deployment: infra/terraform/*.tf and cloudbuild.yaml.

Offline and fast. Providers cannot be downloaded here, so `terraform validate` cannot run:
python-hcl2 parses the configuration and these tests check its structure, its references and the
limits that must hold between settings (for every value the variables' validations accept), what a
first apply on an empty project needs (bootstrap steps in infra/terraform/README.md, the deployer's
roles and actAs grants, the build service account), internal-only ingress, the scale arithmetic of
the README and checkov's result. `terraform fmt` and `terraform console` run only where a terraform
binary is on the PATH; checkov only where `make checkov` created .venv-checkov.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import math
import operator
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from personas_warehouse.settings import _ENV, MEMBER, ROW_VISIBLE_MARGIN_SECONDS
from personas_warehouse.sync import run_sync
from schemas.tables import table_specs

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "infra" / "terraform"
TABLES_JSON = ROOT / "schemas" / "tables.json"
CLOUDBUILD = ROOT / "cloudbuild.yaml"
FUNCTIONS_MAIN = ROOT / "functions" / "main.py"

_HCL = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
_TERRAFORM = shutil.which("terraform")
_NO_TERRAFORM = "no terraform binary on the PATH"

PUBSUB_MAX_ACK_DEADLINE = 600
SCHEDULER_MAX_ATTEMPT_DEADLINE = 1800
SYNC_CODE_DEADLINE = inspect.signature(run_sync).parameters["deadline_seconds"].default


# --- reading the configuration ------------------------------------------------------------------


def _tf_files() -> list[Path]:
    return sorted(TF_DIR.glob("*.tf"))


@functools.cache
def _config() -> dict[str, list[Any]]:
    merged: dict[str, list[Any]] = {}
    for path in _tf_files():
        for key, blocks in hcl2.loads(path.read_text(), serialization_options=_HCL).items():
            merged.setdefault(key, []).extend(blocks)
    return merged


def _labelled(kind: str) -> dict[str, dict[str, Any]]:
    """resource/data blocks as {"type.name": body}."""
    found: dict[str, dict[str, Any]] = {}
    for block in _config().get(kind, []):
        for type_, named in block.items():
            for name, body in named.items():
                found[f"{type_}.{name}"] = body
    return found


def _resources(type_: str) -> dict[str, dict[str, Any]]:
    prefix = type_ + "."
    return {key[len(prefix) :]: body for key, body in _labelled("resource").items() if key.startswith(prefix)}


def _resource(type_: str, name: str) -> dict[str, Any]:
    resources = _resources(type_)
    assert name in resources, f"{type_}.{name} is not declared in infra/terraform"
    return resources[name]


def _named(kind: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in _config().get(kind, []):
        merged.update(block)
    return merged


def _variables() -> dict[str, dict[str, Any]]:
    return _named("variable")


def _locals() -> dict[str, Any]:
    return _named("locals")


def _block(body: dict[str, Any], name: str) -> dict[str, Any]:
    blocks = body.get(name)
    assert isinstance(blocks, list) and len(blocks) == 1, f"expected exactly one {name} block, got {blocks!r}"
    return blocks[0]


def _dynamic(body: dict[str, Any], name: str) -> dict[str, Any]:
    """The body of `dynamic "name" { ... }` in a resource."""
    found = [block[name] for block in body.get("dynamic", []) if name in block]
    assert len(found) == 1, f"expected one dynamic {name} block, got {found!r}"
    return found[0]


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _ref(expression: str) -> str:
    """`${a.b}` -> `a.b` (a single interpolation, nothing around it)."""
    assert isinstance(expression, str) and expression.startswith("${") and expression.endswith("}"), expression
    inner = expression[2:-1]
    assert "${" not in inner, expression
    return inner


# --- evaluating the few numeric expressions that must respect limits -----------------------------

_VAR_OR_LOCAL = re.compile(r"\b(var|local)\.([A-Za-z_][A-Za-z0-9_]*)")
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {"min": min, "max": max, "floor": math.floor, "tostring": lambda v: v}


def evaluate(expression: Any, values: dict[str, Any]) -> Any:
    """Value of a simple HCL expression (numbers, + - * /, comparisons, && || !, min/max/floor/tostring).

    var.X comes from `values`, else from the variable's default; local.X is evaluated in turn.
    Anything else raises, so a change that makes an expression too rich for this check is noticed.
    """
    if isinstance(expression, bool | int | float):
        return expression
    names: dict[str, Any] = {}

    def substitute(match: re.Match[str]) -> str:
        kind, name = match.groups()
        key = f"_{kind}_{name}"
        if kind == "var":
            names[key] = values[name] if name in values else _variables()[name]["default"]
        else:
            names[key] = evaluate(_locals()[name], values)
        return key

    text = _VAR_OR_LOCAL.sub(substitute, _ref(expression))
    text = re.sub(r"!(?!=)", " not ", text.replace("&&", " and ").replace("||", " or "))
    return _evaluate_node(ast.parse(text.strip(), mode="eval").body, names)


def _evaluate_node(node: ast.AST, names: dict[str, Any]) -> Any:
    match node:
        case ast.Constant(value=bool() | int() | float() as value):
            return value
        case ast.Name(id=name) if name in names:
            return names[name]
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
            return _BINARY[type(op)](_evaluate_node(left, names), _evaluate_node(right, names))
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            return -_evaluate_node(operand, names)
        case ast.UnaryOp(op=ast.Not(), operand=operand):
            return not _evaluate_node(operand, names)
        case ast.BoolOp(op=ast.And(), values=parts):
            return all(_evaluate_node(part, names) for part in parts)
        case ast.BoolOp(op=ast.Or(), values=parts):
            return any(_evaluate_node(part, names) for part in parts)
        case ast.Compare(left=left, ops=ops, comparators=rights) if all(type(op) in _COMPARE for op in ops):
            values = [_evaluate_node(left, names), *(_evaluate_node(right, names) for right in rights)]
            return all(_COMPARE[type(op)](a, b) for op, a, b in zip(ops, values, values[1:], strict=False))
        case ast.Call(func=ast.Name(id=function), args=args, keywords=[]) if function in _FUNCTIONS:
            return _FUNCTIONS[function](*(_evaluate_node(arg, names) for arg in args))
    raise ValueError(f"not a simple expression: {ast.unparse(node)}")


def _accepted(values: dict[str, Any]) -> bool:
    """Whether every validation of the given variables accepts these values."""
    return all(
        evaluate(rule["condition"], values) for name in values for rule in _variables()[name].get("validation", [])
    )


# --- the files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _tf_files(), ids=lambda p: p.name)
def test_every_tf_file_parses(path: Path) -> None:
    assert hcl2.loads(path.read_text(), serialization_options=_HCL)


def test_expected_files_exist() -> None:
    names = {p.name for p in _tf_files()}
    assert {"versions.tf", "variables.tf", "outputs.tf"} <= names
    assert (TF_DIR / "README.md").is_file()


@pytest.mark.skipif(_TERRAFORM is None, reason=_NO_TERRAFORM)
def test_terraform_fmt_is_clean() -> None:
    result = subprocess.run(
        [str(_TERRAFORM), "fmt", "-check", "-recursive", "-diff", str(TF_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


def test_google_provider_6_and_a_terraform_that_has_cross_variable_validation() -> None:
    terraform = _config()["terraform"][0]
    assert _block(terraform, "required_providers")["google"] == {"source": "hashicorp/google", "version": "~> 6.0"}
    assert terraform["required_version"] == ">= 1.9"
    assert "gcs" in _block(terraform, "backend"), "state must outlive a Cloud Build run"


def test_every_reference_points_at_something_declared() -> None:
    """A stand-in for `terraform validate`, which needs the providers."""
    texts = list(_strings({k: v for k, v in _config().items() if k != "terraform"}))
    used_vars = {m.group(2) for t in texts for m in _VAR_OR_LOCAL.finditer(t) if m.group(1) == "var"}
    used_locals = {m.group(2) for t in texts for m in _VAR_OR_LOCAL.finditer(t) if m.group(1) == "local"}
    assert used_vars - set(_variables()) == set(), "undeclared variables"
    assert set(_variables()) - used_vars == set(), "declared but unused variables"
    assert used_locals - set(_locals()) == set(), "undeclared locals"

    declared = set(_labelled("resource")) | {f"data.{key}" for key in _labelled("data")}
    pattern = re.compile(r"(?<![\w.])((?:data\.)?google_[a-z0-9_]+\.[a-z0-9_]+)")
    used = {m.group(1) for t in texts for m in pattern.finditer(t)}
    assert used, "the pattern finds the references"
    assert used - declared == set(), "references to undeclared resources"


# --- functions --------------------------------------------------------------------------------------


def test_two_gen2_functions_from_one_source() -> None:
    functions = _resources("google_cloudfunctions2_function")
    assert set(functions) == {"ingest", "sync"}
    defined = {node.name for node in ast.parse(FUNCTIONS_MAIN.read_text()).body if isinstance(node, ast.FunctionDef)}
    for name, body in functions.items():
        build = _block(body, "build_config")
        assert build["runtime"] == "python311"
        assert build["entry_point"] == name and name in defined, f"functions/main.py has no {name}()"
        storage = _block(_block(build, "source"), "storage_source")
        assert storage == {"bucket": "${var.source_bucket}", "object": "${var.source_object}"}
        assert build["service_account"] == "${google_service_account.build.id}", "the dedicated build account"
        assert build["docker_repository"] == "${google_artifact_registry_repository.functions.id}"
        service = _block(body, "service_config")
        assert service["service_account_email"] == f"${{google_service_account.{name}.email}}"
        env = "${local.ingest_env}" if name == "ingest" else "${local.function_env}"
        assert service["environment_variables"] == env
        for key in ("available_memory", "timeout_seconds", "max_instance_count", "max_instance_request_concurrency"):
            assert key in service, f"{name}: service_config.{key} missing"


def test_ingest_is_fed_by_the_push_subscription_not_an_event_trigger() -> None:
    ingest = _resource("google_cloudfunctions2_function", "ingest")
    assert "event_trigger" not in ingest
    service = _block(ingest, "service_config")
    assert service["timeout_seconds"] == "${var.ingest_timeout_seconds}"
    assert service["max_instance_count"] == "${var.ingest_max_instances}"
    assert service["max_instance_request_concurrency"] == "${var.ingest_concurrency}"
    if _variables()["ingest_concurrency"]["default"] > 1:  # Cloud Run: concurrency > 1 needs a whole vCPU
        assert service["available_cpu"] == "${var.ingest_cpu}"
        assert float(_variables()["ingest_cpu"]["default"]) >= 1


def test_both_functions_get_the_settings_the_code_reads() -> None:
    local = _locals()
    managed = local["managed_env"]
    assert set(managed) == {
        "BIGQUERY_PROJECT",
        "BIGQUERY_LOCATION",
        "OPS_DATASET",
        "INGEST_DEADLINE_SECONDS",
        "SYNC_OVERLAP_SECONDS",
        "SPACE_DATASET_WRITERS",
    }
    assert set(managed) <= set(_ENV), "every managed variable is one settings.load_settings reads"
    assert managed["OPS_DATASET"] == "${google_bigquery_dataset.ops.dataset_id}"
    assert "PERSONAS_CONFIG" in local["optional_env"]
    # the managed variables come last, so extra_environment_variables cannot override them
    assert re.fullmatch(r"\$\{merge\(.*, local\.managed_env\)\}", local["function_env"]), local["function_env"]


def test_ingest_deadline_stays_below_the_timeout_for_every_accepted_setting() -> None:
    ingest = _block(_resource("google_cloudfunctions2_function", "ingest"), "service_config")
    deadline_expr = _locals()["managed_env"]["INGEST_DEADLINE_SECONDS"]
    timeouts = sorted({*range(0, 701, 5), 14, 15, 16, 569, 570, 571})
    cases = [
        {"ingest_timeout_seconds": t, "ingest_deadline_margin_seconds": m}
        for t in timeouts
        for m in (0, 1, 4, 5, 6, 10, 30, 100)
    ]
    accepted = [case for case in cases if _accepted(case)]
    assert {"ingest_timeout_seconds": 60, "ingest_deadline_margin_seconds": 10} in accepted
    assert len(accepted) < len(cases), "the validations refuse something"
    for case in accepted:
        timeout = evaluate(ingest["timeout_seconds"], case)
        deadline = evaluate(deadline_expr, case)
        assert 1 <= deadline < timeout, case  # settings require INGEST_DEADLINE_SECONDS >= 1


def test_every_accepted_overlap_covers_the_latest_a_row_can_become_visible() -> None:
    """The settings' rule (SYNC_OVERLAP_SECONDS >= INGEST_DEADLINE_SECONDS + ROW_VISIBLE_MARGIN_SECONDS) holds
    for every setting Terraform accepts, so a deployment never starts functions that refuse their settings,
    and Terraform refuses what they would refuse."""
    managed = _locals()["managed_env"]
    cases = [
        {"ingest_timeout_seconds": t, "ingest_deadline_margin_seconds": m, "sync_overlap_seconds": o}
        for t in (15, 60, 120, 570)
        for m in (5, 10, 30)
        for o in (0, 30, 79, 80, 120, 599, 600)
    ]
    accepted = [case for case in cases if _accepted(case)]
    assert {"ingest_timeout_seconds": 60, "ingest_deadline_margin_seconds": 10, "sync_overlap_seconds": 120} in accepted
    for case in cases:
        deadline = float(evaluate(managed["INGEST_DEADLINE_SECONDS"], case))
        overlap = int(evaluate(managed["SYNC_OVERLAP_SECONDS"], case))
        follows = overlap >= deadline + ROW_VISIBLE_MARGIN_SECONDS and deadline >= 1
        assert (case in accepted) == follows, case


# --- Pub/Sub ------------------------------------------------------------------------------------------


def test_push_subscription_delivers_to_ingest_with_oidc_retry_and_dead_letter() -> None:
    sub = _resource("google_pubsub_subscription", "ingest")
    assert sub["topic"] == "${google_pubsub_topic.calls.id}"
    push = _block(sub, "push_config")
    ingest_uri = "${google_cloudfunctions2_function.ingest.service_config[0].uri}"
    # the topic path in the URL names the topic to a CloudEvent ingest; an HTTP ingest ignores the path
    assert push["push_endpoint"] == ingest_uri + "/${google_pubsub_topic.calls.id}"
    oidc = _block(push, "oidc_token")
    assert oidc == {"service_account_email": "${google_service_account.push.email}", "audience": ingest_uri}
    assert "no_wrapper" not in push, "functions-framework needs the Pub/Sub push envelope"

    dead = _block(sub, "dead_letter_policy")
    assert dead["dead_letter_topic"] == "${google_pubsub_topic.dead_letter.id}"
    assert dead["max_delivery_attempts"] == "${var.max_delivery_attempts}"
    assert _variables()["max_delivery_attempts"]["default"] == 10
    assert _block(sub, "retry_policy") == {
        "minimum_backoff": "${var.push_minimum_backoff_seconds}s",
        "maximum_backoff": "${var.push_maximum_backoff_seconds}s",
    }
    assert _variables()["push_minimum_backoff_seconds"]["default"] == 10
    assert _variables()["push_maximum_backoff_seconds"]["default"] == 600
    assert _block(sub, "expiration_policy") == {"ttl": ""}, "an idle subscription must not expire"


def test_ack_deadline_covers_the_ingest_timeout_for_every_accepted_setting() -> None:
    sub = _resource("google_pubsub_subscription", "ingest")
    ingest = _block(_resource("google_cloudfunctions2_function", "ingest"), "service_config")
    cases = [{"ingest_timeout_seconds": t} for t in sorted({*range(0, 1001, 5), 569, 570, 571})]
    accepted = [case for case in cases if _accepted(case)]
    assert {"ingest_timeout_seconds": 60} in accepted
    assert {"ingest_timeout_seconds": 600} not in accepted, "a timeout no ack deadline can cover is refused"
    for case in accepted:
        timeout = evaluate(ingest["timeout_seconds"], case)
        ack = evaluate(sub["ack_deadline_seconds"], case)
        assert timeout <= ack <= PUBSUB_MAX_ACK_DEADLINE, case


def test_dead_letter_topic_has_a_pull_subscription_that_keeps_messages_7_days() -> None:
    hold = _resource("google_pubsub_subscription", "dead_letter")
    assert hold["topic"] == "${google_pubsub_topic.dead_letter.id}"
    assert "push_config" not in hold
    assert hold["message_retention_duration"] == "604800s"
    assert _block(hold, "expiration_policy") == {"ttl": ""}


def test_pubsub_service_agent_can_dead_letter() -> None:
    assert "@gcp-sa-pubsub.iam.gserviceaccount.com" in _locals()["pubsub_service_agent"]
    publisher = _resource("google_pubsub_topic_iam_member", "dead_letter_publisher")
    assert publisher["topic"] == "${google_pubsub_topic.dead_letter.name}"
    assert publisher["role"] == "roles/pubsub.publisher"
    assert publisher["member"] == "${local.pubsub_service_agent}"
    subscriber = _resource("google_pubsub_subscription_iam_member", "dead_letter_subscriber")
    assert subscriber["subscription"] == "${google_pubsub_subscription.ingest.name}"
    assert subscriber["role"] == "roles/pubsub.subscriber"
    assert subscriber["member"] == "${local.pubsub_service_agent}"


# --- BigQuery ---------------------------------------------------------------------------------------


def test_ops_tables_are_derived_from_tables_json() -> None:
    local = _locals()
    reference = 'jsondecode(file("${path.module}/../../schemas/tables.json"))'
    assert reference in local["table_specs"]
    assert (TF_DIR / "../../schemas/tables.json").resolve() == TABLES_JSON.resolve()
    for piece in ('spec.dataset == "ops"', "for column in spec.columns", 'mode = "NULLABLE"'):
        assert piece in local["ops_tables"]

    tables = _resources("google_bigquery_table")
    assert set(tables) == {"ops"}, "every Terraform-managed table comes from tables.json"
    table = tables["ops"]
    assert table["for_each"] == "${local.ops_tables}"
    assert table["dataset_id"] == "${google_bigquery_dataset.ops.dataset_id}"
    assert table["table_id"] == "${each.key}"
    assert table["schema"] == "${each.value.schema}"
    assert "each.value.clustering" in table["clustering"]
    partitioning = _dynamic(table, "time_partitioning")
    assert "each.value.partition_field" in partitioning["for_each"]

    dataset = _resource("google_bigquery_dataset", "ops")
    assert dataset["dataset_id"] == "${var.ops_dataset}"
    assert _variables()["ops_dataset"]["default"] == "personas__ops"
    assert dataset["location"] == "${var.bigquery_location}"


def test_no_schema_is_written_by_hand_in_terraform() -> None:
    for path in _tf_files():
        text = path.read_text()
        for word in ("TIMESTAMP", "INT64", "BOOL", '"mode"'):
            assert word not in text, f"{path.name} spells out a schema ({word}); derive it from tables.json"


FORGET_TABLES = ("forget_suppressions", "forget_pending", "forget_requests")  # docs/forget.md


def test_tables_json_ops_tables_fit_the_terraform_derivation() -> None:
    """Terraform iterates an ops table's columns directly: they must be a list, not a reference."""
    raw = json.loads(TABLES_JSON.read_text())
    ops = {name: body for name, body in raw.items() if not name.startswith("_") and body["dataset"] == "ops"}
    assert set(ops) == {"rejected_messages", "sync_history", "replays", *FORGET_TABLES}
    for name, body in ops.items():
        assert isinstance(body["columns"], list), name
        columns = {column["name"] for column in body["columns"]}
        assert body["partition_field"] in columns, name
        assert set(body["clustering"]) <= columns, name


@pytest.mark.skipif(_TERRAFORM is None, reason=_NO_TERRAFORM)
def test_terraform_evaluates_the_ops_tables_the_code_would_create(tmp_path: Path) -> None:
    """Run bigquery.tf's locals in real Terraform (no provider needed) and compare with schemas/tables.py."""
    text = (TF_DIR / "bigquery.tf").read_text()
    blocks = re.findall(r"^locals \{\n.*?^\}\n", text, flags=re.MULTILINE | re.DOTALL)
    (module := tmp_path / "infra" / "terraform").mkdir(parents=True)
    (module / "locals.tf").write_text("".join(blocks))
    (tmp_path / "schemas").mkdir()
    shutil.copy(TABLES_JSON, tmp_path / "schemas" / "tables.json")
    result = subprocess.run(
        [str(_TERRAFORM), "console"],
        input="jsonencode(local.ops_tables)\n",
        cwd=module,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    derived = json.loads(json.loads(result.stdout))

    specs = {kind: spec for kind, spec in table_specs().items() if spec.dataset == "ops"}
    assert set(derived) == set(specs)
    for kind, spec in specs.items():
        table = derived[kind]
        assert table["description"] == spec.description
        assert table["partition_field"] == spec.partition_field
        assert tuple(table["clustering"]) == spec.clustering
        assert json.loads(table["schema"]) == [
            {"name": c.name, "type": c.type, "mode": "NULLABLE", "description": c.description} for c in spec.columns
        ]


# --- IAM ----------------------------------------------------------------------------------------------

EXPECTED_ROLES = {
    "roles/bigquery.jobUser",
    "roles/run.invoker",
    "roles/pubsub.publisher",
    "roles/pubsub.subscriber",
    "roles/iam.serviceAccountTokenCreator",
    "roles/iam.serviceAccountUser",
    "roles/logging.logWriter",
    "roles/artifactregistry.writer",
    "roles/storage.objectViewer",
    "roles/cloudkms.cryptoKeyEncrypterDecrypter",
    "roles/secretmanager.secretAccessor",
}
SERVICE_ACCOUNTS = {"ingest", "sync", "push", "scheduler", "build"}


def test_no_public_access_and_no_broad_roles() -> None:
    texts = list(_strings(_config()))
    for text in texts:
        assert "allUsers" not in text and "allAuthenticatedUsers" not in text, text
    roles = {role for text in texts for role in re.findall(r"roles/[A-Za-z.]+", text)}
    assert not roles & {"roles/owner", "roles/editor", "roles/viewer"}
    assert roles == EXPECTED_ROLES, "a new role is a least-privilege decision: update EXPECTED_ROLES on purpose"


def test_only_additive_iam_grants() -> None:
    authoritative = [key for key in _labelled("resource") if re.search(r"_iam_(binding|policy)\.", key)]
    assert authoritative == [], "bindings and policies would remove grants made by others"


def test_one_service_account_per_role_with_least_privilege() -> None:
    assert set(_resources("google_service_account")) == SERVICE_ACCOUNTS

    project_roles: dict[str, set[str]] = {}
    for name, grant in _resources("google_project_iam_member").items():
        member = re.fullmatch(r"serviceAccount:\$\{google_service_account\.(\w+)\.email\}", grant["member"])
        assert member, grant["member"]
        roles = set(re.findall(r"roles/[A-Za-z.]+", grant.get("for_each", ""))) or {grant["role"]}
        conditional = "condition" in grant
        project_roles.setdefault(member.group(1) + (" (conditional)" if conditional else ""), set()).update(roles)
        assert name == member.group(1) or (conditional and name.startswith(member.group(1) + "_"))
    # ingest creates space datasets at run time (a custom role: bigquery.datasets.create only) and runs no
    # queries; sync runs queries (jobUser holds no data permission); neither holds a data role on the project
    assert project_roles == {
        "ingest": {"${google_project_iam_custom_role.dataset_creator.name}"},
        "sync": {"roles/bigquery.jobUser"},
        "build": {"roles/logging.logWriter"},
        "build (conditional)": {"roles/storage.objectViewer"},
    }

    invokers = {
        (grant["member"], grant["service"]) for grant in _resources("google_cloud_run_service_iam_member").values()
    }
    assert invokers == {
        (
            "serviceAccount:${google_service_account.push.email}",
            "${google_cloudfunctions2_function.ingest.service_config[0].service}",
        ),
        (
            "serviceAccount:${google_service_account.scheduler.email}",
            "${google_cloudfunctions2_function.sync.service_config[0].service}",
        ),
    }
    for grant in _resources("google_cloud_run_service_iam_member").values():
        assert grant["role"] == "roles/run.invoker"


# --- BigQuery data access: no project-wide data role -----------------------------------------------------


def test_no_project_wide_data_role() -> None:
    """The project grants: none is a BigQuery data role (dataViewer/Editor/Owner, admin, user), and the one
    custom role holds only bigquery.datasets.create (no table, data or dataset update/delete permission)."""
    for grant in _resources("google_project_iam_member").values():
        for role in set(re.findall(r"roles/[A-Za-z.]+", grant.get("for_each", ""))) | {grant.get("role", "")}:
            assert not re.match(r"roles/bigquery\.(data\w*|admin|user|studioAdmin)$", role), role
    [creator] = _resources("google_project_iam_custom_role").values()
    assert creator["permissions"] == ["bigquery.datasets.create"]
    assert (
        _resource("google_project_iam_member", "ingest")["role"]
        == "${google_project_iam_custom_role.dataset_creator.name}"
    )


def test_the_functions_write_the_ops_dataset_and_the_space_datasets_they_create() -> None:
    access = _resource("google_bigquery_dataset_access", "ops_writers")
    assert access["dataset_id"] == "${google_bigquery_dataset.ops.dataset_id}"
    assert access["role"] == "WRITER" and access["user_by_email"] == "${each.value}"  # legacy name: no diff
    assert access["for_each"] == {
        "ingest": "${google_service_account.ingest.email}",
        "sync": "${google_service_account.sync.email}",
    }
    assert "access" not in _resource("google_bigquery_dataset", "ops"), "dataset_access needs no access blocks there"
    writers = _locals()["managed_env"]["SPACE_DATASET_WRITERS"]
    for account in ("ingest", "sync"):
        assert f'"serviceAccount:${{google_service_account.{account}.email}}"' in writers
    optional = _locals()["optional_env"]
    assert 'SPACE_DATASET_KMS_KEY = var.kms_key_name == null ? "" : var.kms_key_name' in optional
    assert 'SPACE_DATASET_READERS = join(",", var.space_dataset_readers)' in optional
    for name in ("SPACE_DATASET_WRITERS", "SPACE_DATASET_READERS", "SPACE_DATASET_KMS_KEY"):
        assert name in _ENV


def test_segments_service_account_may_publish_to_the_calls_topic_only() -> None:
    publishers = _variables()["calls_topic_publishers"]
    assert publishers["default"] == ["serviceAccount:pubsub@segment-integrations.iam.gserviceaccount.com"]
    grant = _resource("google_pubsub_topic_iam_member", "calls_publishers")
    assert grant["for_each"] == "${toset(var.calls_topic_publishers)}"  # []: no grant at all
    assert (grant["topic"], grant["role"], grant["member"]) == (
        "${google_pubsub_topic.calls.name}",
        "roles/pubsub.publisher",
        "${each.value}",
    )
    for type_ in ("google_project_iam_member", "google_pubsub_subscription_iam_member"):
        for other in _resources(type_).values():
            assert "calls_topic_publishers" not in json.dumps(other)


@pytest.mark.skipif(_TERRAFORM is None, reason=_NO_TERRAFORM)
@pytest.mark.parametrize(
    ("variable", "members"),
    [
        ("space_dataset_readers", ["group:analysts@example.com", "domain:example.com", "user:a@b.c"]),
        ("space_dataset_readers", ["analysts@example.com"]),
        ("space_dataset_readers", ["group:a@b.c,group:d@e.f"]),
        ("space_dataset_readers", ["allUsers"]),
        ("calls_topic_publishers", ["serviceAccount:pubsub@segment-integrations.iam.gserviceaccount.com"]),
        ("calls_topic_publishers", []),
        ("calls_topic_publishers", ["allAuthenticatedUsers"]),
        ("calls_topic_publishers", ["domain:example.com"]),
    ],
)
def test_terraform_accepts_only_members_the_functions_accept(tmp_path: Path, variable: str, members: list[str]) -> None:
    """Each variable's validation, run in real Terraform (no provider needed): what it accepts, settings.MEMBER
    accepts too, so an apply that passes validation never stops the functions at start-up."""
    [validation] = _variables()[variable]["validation"]
    condition = validation["condition"][2:-1].replace(f"var.{variable}", "local.members")
    (tmp_path / "main.tf").write_text(f"locals {{\n  members = {json.dumps(members)}\n}}\n")
    result = subprocess.run(
        [str(_TERRAFORM), "console"], input=condition + "\n", cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    accepted = result.stdout.strip() == "true"
    if accepted:
        assert all(MEMBER.match(member) for member in members), members
    assert accepted == (
        members
        in (
            ["group:analysts@example.com", "domain:example.com", "user:a@b.c"],
            ["serviceAccount:pubsub@segment-integrations.iam.gserviceaccount.com"],
            [],
        )
    )


# --- Cloud Scheduler ----------------------------------------------------------------------------------


def test_scheduler_posts_to_sync_with_oidc() -> None:
    job = _resource("google_cloud_scheduler_job", "sync")
    target = _block(job, "http_target")
    sync_uri = "${google_cloudfunctions2_function.sync.service_config[0].uri}"
    assert target["http_method"] == "POST"
    assert target["uri"] == sync_uri
    assert target["body"] == '${base64encode("{}")}'
    assert _block(target, "oidc_token") == {
        "service_account_email": "${google_service_account.scheduler.email}",
        "audience": sync_uri,
    }
    assert job["schedule"] == "${var.sync_schedule}"
    assert _variables()["sync_schedule"]["default"] == "* * * * *"  # users fresh within about a minute
    assert job["time_zone"] == "${var.sync_time_zone}"
    assert _variables()["sync_time_zone"]["default"] == "Etc/UTC"
    assert 0 <= _block(job, "retry_config")["retry_count"] <= 3


def test_sync_timeout_and_attempt_deadline_fit_the_code_for_every_accepted_setting() -> None:
    job = _resource("google_cloud_scheduler_job", "sync")
    sync = _block(_resource("google_cloudfunctions2_function", "sync"), "service_config")
    attempt = job["attempt_deadline"]
    assert attempt.endswith("s")
    cases = [{"sync_timeout_seconds": t} for t in range(0, 4001, 10)]
    accepted = [case for case in cases if _accepted(case)]
    assert {"sync_timeout_seconds": 1800} in accepted
    for case in accepted:
        timeout = evaluate(sync["timeout_seconds"], case)
        seconds = evaluate(attempt[:-1], case)
        assert SYNC_CODE_DEADLINE < timeout <= 3600, case  # the code stops in time to answer
        # the scheduler waits for a normal run (no retry while it still runs), within its own limit
        assert SYNC_CODE_DEADLINE < seconds <= min(timeout, SCHEDULER_MAX_ATTEMPT_DEADLINE), case
    assert sync["max_instance_count"] == 1 and sync["max_instance_request_concurrency"] == 1


# --- outputs ------------------------------------------------------------------------------------------


def test_outputs() -> None:
    outputs = _named("output")
    assert outputs["topic_id"]["value"] == "${google_pubsub_topic.calls.id}"
    # what Segment's destination settings take: "Make sure you use the full topic path!" (segment-docs)
    assert outputs["segment_topic_path"]["value"] == "projects/${var.project}/topics/${google_pubsub_topic.calls.name}"
    assert "google_cloudfunctions2_function.ingest" in outputs["ingest_url"]["value"]
    assert "google_cloudfunctions2_function.sync" in outputs["sync_url"]["value"]
    assert outputs["dead_letter_subscription"]["value"] == "${google_pubsub_subscription.dead_letter.id}"


# --- cloudbuild.yaml ----------------------------------------------------------------------------------


def _cloudbuild() -> dict[str, Any]:
    return yaml.safe_load(CLOUDBUILD.read_text())


def _step_text(step: dict[str, Any]) -> str:
    return "\n".join(str(arg) for arg in step.get("args", []))


def _step_index(steps: list[dict[str, Any]], *needles: str) -> int:
    found = [i for i, step in enumerate(steps) if all(n in _step_text(step) for n in needles)]
    assert len(found) == 1, f"expected one step running {needles}, found {found}"
    return found[0]


def test_cloudbuild_tests_stages_uploads_and_deploys_in_order() -> None:
    build = _cloudbuild()
    steps = build["steps"]
    tests = _step_index(steps, "make venv", ".venv/bin/python -m pytest -q tests/unit", ".venv/bin/ruff check .")
    assert steps[tests]["name"] == "python:3.11", "tests run in the functions' runtime (python311)"
    stage = _step_index(steps, "make stage", "build/function")
    upload = _step_index(steps, "gs://${_SOURCE_BUCKET}/")
    init = _step_index(steps, "init", "-backend-config=bucket=")
    apply = _step_index(steps, "apply", "-var=source_object=")
    assert tests < stage < upload < init < apply

    destination = next(a for a in steps[upload]["args"] if str(a).startswith("gs://"))
    object_name = destination.removeprefix("gs://${_SOURCE_BUCKET}/")
    assert f"-var=source_object={object_name}" in steps[apply]["args"]
    assert "-var=source_bucket=${_SOURCE_BUCKET}" in steps[apply]["args"]
    assert "${BUILD_ID}" in object_name, "a new object per build, so Terraform redeploys"
    for step in (steps[init], steps[apply]):
        assert step["name"].startswith("hashicorp/terraform:")
        assert "-chdir=infra/terraform" in step["args"]


def test_cloudbuild_substitutions_are_defined_and_used() -> None:
    build = _cloudbuild()
    text = "\n".join(_step_text(step) + "\n" + step["name"] for step in build["steps"])
    used = set(re.findall(r"\$\{?(_[A-Z0-9_]+)", text))
    defined = set(build["substitutions"])
    assert used - defined == set(), "substitutions without a default"
    assert defined - used == set(), "unused substitutions"
    if any("${PROJECT_ID}" in str(value) for value in build["substitutions"].values()):
        assert build["options"]["dynamicSubstitutions"] is True


def test_cloudbuild_terraform_satisfies_required_version() -> None:
    version = tuple(int(part) for part in _cloudbuild()["substitutions"]["_TERRAFORM_VERSION"].split("."))
    required = re.fullmatch(r">= (\d+)\.(\d+)", _config()["terraform"][0]["required_version"])
    assert required
    assert version[:2] >= (int(required.group(1)), int(required.group(2)))


# --- a first apply on an empty project ------------------------------------------------------------

README = TF_DIR / "README.md"
MAKEFILE = ROOT / "Makefile"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"

# Every command of the bootstrap, in the order it must run (README, "From an empty project ...").
BOOTSTRAP_STEPS = [
    r"gcloud services enable cloudresourcemanager\.googleapis\.com serviceusage\.googleapis\.com",
    r"gcloud beta services identity create --service=pubsub\.googleapis\.com",
    r"gcloud beta services identity create --service=cloudscheduler\.googleapis\.com",
    r"gcloud storage buckets create gs://\$PROJECT-personas-source",
    r"gcloud storage buckets create gs://\$PROJECT-personas-tfstate",
    r"gcloud iam service-accounts create personas-deployer",
    r"gcloud projects add-iam-policy-binding \$PROJECT --member=serviceAccount:\$DEPLOYER",
    r"gcloud builds submit --config cloudbuild\.yaml",
    r"terraform init -backend-config=bucket=\$PROJECT-personas-tfstate",
    r"terraform apply ",
    r"gcloud pubsub topics publish personas-calls",
    r"bq query .*\n.*personas_default\.identifies",
    r"gcloud scheduler jobs run personas-sync",
]

# The role the deployer needs for each resource type this module manages (README, step 4). A new
# resource type fails here until its role is decided and documented.
DEPLOYER_ROLE_FOR = {
    "google_project_service": "roles/serviceusage.serviceUsageAdmin",
    "google_project_iam_member": "roles/resourcemanager.projectIamAdmin",
    "google_service_account": "roles/iam.serviceAccountAdmin",
    "google_service_account_iam_member": "roles/iam.serviceAccountAdmin",
    "google_cloudfunctions2_function": "roles/cloudfunctions.developer",
    "google_cloud_run_service_iam_member": "roles/run.admin",
    "google_pubsub_topic": "roles/pubsub.admin",
    "google_pubsub_subscription": "roles/pubsub.admin",
    "google_pubsub_topic_iam_member": "roles/pubsub.admin",
    "google_pubsub_subscription_iam_member": "roles/pubsub.admin",
    "google_bigquery_dataset": "roles/bigquery.dataOwner",
    "google_bigquery_dataset_access": "roles/bigquery.dataOwner",
    "google_bigquery_table": "roles/bigquery.dataOwner",
    "google_project_iam_custom_role": "roles/iam.roleAdmin",
    "google_cloud_scheduler_job": "roles/cloudscheduler.admin",
    "google_artifact_registry_repository": "roles/artifactregistry.admin",
    "google_artifact_registry_repository_iam_member": "roles/artifactregistry.admin",
    "google_storage_bucket_iam_member": "roles/storage.admin",
    "google_kms_crypto_key_iam_member": "roles/cloudkms.admin",
    "google_secret_manager_secret_iam_member": "roles/secretmanager.admin",
}


def _readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_bootstrap_runs_every_step_in_order() -> None:
    section = _readme_section("From an empty project to a running system")
    positions = []
    for step in BOOTSTRAP_STEPS:
        found = re.search(step, section)
        assert found, f"README bootstrap lacks: {step}"
        positions.append(found.start())
    assert positions == sorted(positions), "bootstrap steps out of order"
    # every step is explained, not just listed
    assert len(re.findall(r"^\*\*Step \d\. .+\*\*$", section, flags=re.MULTILINE)) == 6


def test_the_apis_that_cannot_enable_themselves_are_bootstrapped_and_terraform_enables_the_rest() -> None:
    apis = set(re.findall(r"[a-z]+\.googleapis\.com", _resource("google_project_service", "apis")["for_each"]))
    assert {"cloudresourcemanager.googleapis.com", "serviceusage.googleapis.com"} <= apis
    bootstrap = _readme_section("From an empty project to a running system")
    enabled = re.search(r"gcloud services enable ((?:[a-z]+\.googleapis\.com[\s\\]*)+)", bootstrap)
    assert enabled
    bootstrapped = set(re.findall(r"[a-z]+\.googleapis\.com", enabled.group(1)))
    assert {"cloudresourcemanager.googleapis.com", "serviceusage.googleapis.com"} <= bootstrapped
    # the service agents Terraform grants roles to are created in the bootstrap
    for agent, api in (("gcp-sa-pubsub", "pubsub"), ("gcp-sa-cloudscheduler", "cloudscheduler")):
        assert any(agent in value for value in _locals().values() if isinstance(value, str))
        assert f"services identity create --service={api}.googleapis.com" in bootstrap
        assert f"{api}.googleapis.com" in bootstrapped


def test_the_forget_key_reaches_both_functions_from_its_secret_only() -> None:
    """FORGET_HASH_KEY comes from Secret Manager (never a plain variable), to both functions, and each function
    may access that one secret (docs/forget.md, "The key")."""
    for name in ("ingest", "sync"):
        service = _block(_resource("google_cloudfunctions2_function", name), "service_config")
        secret = service["dynamic"][0]["secret_environment_variables"]
        assert secret["for_each"] == "${var.forget_hash_key_secret == null ? [] : [var.forget_hash_key_secret]}"
        assert secret["content"][0]["key"] == "FORGET_HASH_KEY" and secret["content"][0]["version"] == "latest"
    grant = _resource("google_secret_manager_secret_iam_member", "functions_read_forget_key")
    assert grant["role"] == "roles/secretmanager.secretAccessor"
    assert grant["secret_id"] == "${var.forget_hash_key_secret}"
    assert "FORGET_HASH_KEY" not in _locals()["managed_env"] and "forget_hash_key" not in _variables()


def test_the_deployer_roles_cover_every_resource_type() -> None:
    types = {key.split(".")[0] for key in _labelled("resource")}
    assert types - set(DEPLOYER_ROLE_FOR) == set(), "a new resource type: which role does the deployer need?"
    step4 = _readme_section("From an empty project to a running system")
    for type_ in types:
        assert DEPLOYER_ROLE_FOR[type_].removeprefix("roles/") in step4, (type_, DEPLOYER_ROLE_FOR[type_])


def test_the_deployer_may_act_as_every_service_account_it_names() -> None:
    assert set(_locals()["deployer_acts_as"]) == SERVICE_ACCOUNTS == set(_resources("google_service_account"))
    for name, account in _locals()["deployer_acts_as"].items():
        assert account == f"${{google_service_account.{name}.name}}"
    grant = _resource("google_service_account_iam_member", "deployer_acts_as")
    assert grant["for_each"] == "${var.deployer_member == null ? {} : local.deployer_acts_as}"
    assert grant["service_account_id"] == "${each.value}"
    assert grant["role"] == "roles/iam.serviceAccountUser"
    assert grant["member"] == "${var.deployer_member}"
    # the resources that name an account wait for the grant
    for type_, name in (
        ("google_cloudfunctions2_function", "ingest"),
        ("google_cloudfunctions2_function", "sync"),
        ("google_pubsub_subscription", "ingest"),
        ("google_cloud_scheduler_job", "sync"),
    ):
        assert "${google_service_account_iam_member.deployer_acts_as}" in _resource(type_, name)["depends_on"]
    apply = next(step for step in _cloudbuild()["steps"] if "apply" in step.get("args", []))
    assert "-var=deployer_member=serviceAccount:${_DEPLOYER_SA}" in apply["args"]
    assert _cloudbuild()["substitutions"]["_DEPLOYER_SA"] == "personas-deployer@${PROJECT_ID}.iam.gserviceaccount.com"


def test_service_agents_can_sign_the_oidc_tokens_of_push_and_scheduler() -> None:
    push = _resource("google_service_account_iam_member", "pubsub_signs_push_tokens")
    assert push == {
        "service_account_id": "${google_service_account.push.name}",
        "role": "roles/iam.serviceAccountTokenCreator",
        "member": "${local.pubsub_service_agent}",
    }
    scheduler = _resource("google_service_account_iam_member", "scheduler_signs_sync_tokens")
    assert scheduler == {
        "service_account_id": "${google_service_account.scheduler.name}",
        "role": "roles/iam.serviceAccountTokenCreator",
        "member": "${local.scheduler_service_agent}",
    }
    assert _locals()["scheduler_service_agent"].endswith("@gcp-sa-cloudscheduler.iam.gserviceaccount.com")


def test_functions_are_built_by_a_dedicated_account_with_what_a_build_needs() -> None:
    member = "serviceAccount:${google_service_account.build.email}"
    logs = _resource("google_project_iam_member", "build")
    assert logs["member"] == member and "roles/logging.logWriter" in logs["for_each"]

    source = _resource("google_storage_bucket_iam_member", "build_reads_source")
    assert source == {"bucket": "${var.source_bucket}", "role": "roles/storage.objectViewer", "member": member}

    copy = _resource("google_project_iam_member", "build_reads_function_sources")
    assert copy["role"] == "roles/storage.objectViewer" and copy["member"] == member
    expression = _block(copy, "condition")["expression"]
    assert expression == (
        'resource.name.startsWith("projects/_/buckets/gcf-v2-sources-${local.project_number}-${var.region}")'
    )

    images = _resource("google_artifact_registry_repository_iam_member", "build_writes_images")
    assert images["role"] == "roles/artifactregistry.writer" and images["member"] == member
    assert images["repository"] == "${google_artifact_registry_repository.functions.name}"
    assert _resource("google_artifact_registry_repository", "functions")["format"] == "DOCKER"

    for name in ("ingest", "sync"):
        depends = _resource("google_cloudfunctions2_function", name)["depends_on"]
        for grant in (
            "google_project_iam_member.build",
            "google_project_iam_member.build_reads_function_sources",
            "google_storage_bucket_iam_member.build_reads_source",
            "google_artifact_registry_repository_iam_member.build_writes_images",
        ):
            assert f"${{{grant}}}" in depends, (name, grant)


def test_both_functions_are_internal_only_and_their_callers_count_as_internal() -> None:
    for name in ("ingest", "sync"):
        service = _block(_resource("google_cloudfunctions2_function", name), "service_config")
        assert service["ingress_settings"] == "ALLOW_INTERNAL_ONLY", name
    # Pub/Sub push and Cloud Scheduler count as internal only from this project, calling the run.app
    # URL (service_config[0].uri), not a custom domain.
    push = _block(_resource("google_pubsub_subscription", "ingest"), "push_config")
    assert push["push_endpoint"].startswith("${google_cloudfunctions2_function.ingest.service_config[0].uri}")
    job = _resource("google_cloud_scheduler_job", "sync")
    assert _block(job, "http_target")["uri"] == "${google_cloudfunctions2_function.sync.service_config[0].uri}"
    for body in (_resource("google_pubsub_subscription", "ingest"), job):
        assert body.get("project", "${var.project}") == "${var.project}"
    assert "https://cloud.google.com/run/docs/securing/ingress" in _readme_section("Network: internal-only ingress")


def test_customer_managed_encryption_covers_dataset_tables_and_topics_when_set() -> None:
    assert _variables()["kms_key_name"]["default"] is None
    uses_key = "${var.kms_key_name == null ? [] : [var.kms_key_name]}"
    dataset = _dynamic(_resource("google_bigquery_dataset", "ops"), "default_encryption_configuration")
    assert dataset["for_each"] == uses_key
    table = _dynamic(_resource("google_bigquery_table", "ops"), "encryption_configuration")
    assert table["for_each"] == uses_key
    for name in ("calls", "dead_letter"):
        topic = _resource("google_pubsub_topic", name)
        assert topic["kms_key_name"] == "${var.kms_key_name}"
        assert "${google_kms_crypto_key_iam_member.cmek}" in topic["depends_on"]
    grant = _resource("google_kms_crypto_key_iam_member", "cmek")
    assert "bigquery = local.bigquery_kms_agent" in grant["for_each"]
    assert "pubsub = local.pubsub_service_agent" in grant["for_each"]
    assert grant["role"] == "roles/cloudkms.cryptoKeyEncrypterDecrypter"


# --- scale: README, "Scale" -------------------------------------------------------------------------

BURST_PER_SECOND = 10_000  # single-call messages, one push request each
BIGQUERY_SECONDS = 0.050  # per request, the upper end of 20-50 ms
SLOW_BIGQUERY_SECONDS = 0.400  # what concurrency must still absorb
CPU_SECONDS_PER_MESSAGE = 0.003
CPU_HEADROOM = 2
CLOUD_RUN_CPU_TARGET = 0.6
SCALE_OUT_WINDOW_SECONDS = 60


def test_scale_defaults_absorb_the_burst() -> None:
    variables = _variables()
    instances = variables["ingest_max_instances"]["default"]
    concurrency = variables["ingest_concurrency"]["default"]
    cpu = float(variables["ingest_cpu"]["default"])
    # concurrency: requests in flight (Little's law), even when BigQuery slows down
    assert instances * concurrency >= BURST_PER_SECOND * BIGQUERY_SECONDS
    assert instances * concurrency >= BURST_PER_SECOND * SLOW_BIGQUERY_SECONDS
    # CPU: one Python process per instance uses one core at most
    usable_cpu = min(cpu, 1.0) * CLOUD_RUN_CPU_TARGET
    assert instances * usable_cpu >= BURST_PER_SECOND * CPU_SECONDS_PER_MESSAGE * CPU_HEADROOM
    # each instance runs as many requests as Cloud Run sends it
    assert _locals()["ingest_env"] == "${merge(local.function_env, {THREADS = tostring(var.ingest_concurrency)})}"


def test_retries_outlast_the_scale_out_window_before_dead_lettering() -> None:
    variables = _variables()
    attempts = variables["max_delivery_attempts"]["default"]
    minimum = variables["push_minimum_backoff_seconds"]["default"]
    maximum = variables["push_maximum_backoff_seconds"]["default"]
    # at least minimum_backoff between two deliveries, whatever the growth of the backoff
    assert (attempts - 1) * minimum >= SCALE_OUT_WINDOW_SECONDS
    doubling = sum(min(maximum, minimum * 2**retry) for retry in range(attempts - 1))
    assert doubling > (attempts - 1) * minimum
    timeout = variables["ingest_timeout_seconds"]["default"]
    assert timeout < evaluate(_resource("google_pubsub_subscription", "ingest")["ack_deadline_seconds"], {})


def test_readme_states_the_numbers_the_scale_tests_use() -> None:
    section = _readme_section("Scale: a burst of 10,000 messages per second")
    for text in (
        "**10,000 single-call messages per second**",
        "**50 ms**",
        "**3 ms of CPU**",
        "**60 %**",
        "**60 s scale-out window**",
        "**200 messages/s**",
        "**50 instances**",
        "`ingest_max_instances = 100`",
        "`ingest_concurrency = 80`",
        "(10 − 1) × 10 s = **90 s ≥ the 60 s window**",
        "400 ms",
    ):
        assert text in section, text
    assert BURST_PER_SECOND == 10_000 and BIGQUERY_SECONDS == 0.050 and SLOW_BIGQUERY_SECONDS == 0.400
    assert CPU_SECONDS_PER_MESSAGE == 0.003 and CLOUD_RUN_CPU_TARGET == 0.6 and SCALE_OUT_WINDOW_SECONDS == 60
    assert _variables()["ingest_max_instances"]["default"] == 100
    assert _variables()["ingest_concurrency"]["default"] == 80
    assert round(CLOUD_RUN_CPU_TARGET / CPU_SECONDS_PER_MESSAGE) == 200


# --- checkov ------------------------------------------------------------------------------------------

EXPECTED_CHECKOV_SKIPS = {"google_artifact_registry_repository.functions": {"CKV_GCP_84"}}


def test_every_checkov_skip_is_justified_on_its_resource() -> None:
    skips: dict[str, set[str]] = {}
    for path in _tf_files():
        resource = None
        for line in path.read_text().splitlines():
            if header := re.match(r'resource "(\w+)" "(\w+)"', line):
                resource = f"{header.group(1)}.{header.group(2)}"
            if "checkov:skip" in line:
                found = re.fullmatch(r"\s*#checkov:skip=(CKV_[A-Z0-9_]+):(.+)", line)
                assert found and len(found.group(2).strip()) >= 40, f"{path.name}: skip without a reason: {line}"
                assert resource, f"{path.name}: skip outside a resource"
                skips.setdefault(resource, set()).add(found.group(1))
    assert skips == EXPECTED_CHECKOV_SKIPS, "a new checkov skip is a security decision: justify it and list it"


def test_make_lint_runs_checkov_offline_from_its_own_venv() -> None:
    makefile = MAKEFILE.read_text()
    lint = re.search(r"^lint: (.*)$", makefile, flags=re.MULTILINE)
    assert lint and "checkov" in lint.group(1).split()
    command = re.search(r"^checkov: .*\n\t(.*)$", makefile, flags=re.MULTILINE)
    assert command
    for flag in ("--skip-download", "-d infra/terraform", "--framework terraform"):
        assert flag in command.group(1)
    assert "--soft-fail" not in makefile
    assert "$(CHECKOV_VENV)/bin/python -m pip install --quiet --no-deps -r infra/checkov/requirements.txt" in makefile
    pins = [line for line in (ROOT / "infra/checkov/requirements.txt").read_text().splitlines() if line[:1].isalnum()]
    assert "checkov==3.3.30" in pins and all("==" in pin for pin in pins)


@pytest.mark.skipif(not CHECKOV.exists(), reason="no .venv-checkov (make checkov creates it)")
def test_checkov_finds_no_failed_check() -> None:
    result = subprocess.run(
        [str(CHECKOV), "--skip-download", "-d", str(TF_DIR), "--framework", "terraform", "--quiet", "--compact"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    counts = re.search(r"Passed checks: (\d+), Failed checks: (\d+), Skipped checks: (\d+)", result.stdout)
    assert counts and int(counts.group(2)) == 0 and int(counts.group(1)) > 0
    assert int(counts.group(3)) == sum(len(ids) for ids in EXPECTED_CHECKOV_SKIPS.values())


_REQUIRED_VARS = ["-var", "project=p", "-var", "source_bucket=b", "-var", "source_object=o"]


@pytest.mark.skipif(_TERRAFORM is None, reason=_NO_TERRAFORM)
@pytest.mark.parametrize(
    ("values", "accepted"),
    [
        ({}, True),
        ({"deployer_member": "serviceAccount:personas-deployer@p.iam.gserviceaccount.com"}, True),
        ({"deployer_member": "personas-deployer@p.iam.gserviceaccount.com"}, False),
        ({"kms_key_name": "projects/p/locations/us/keyRings/r/cryptoKeys/k"}, True),
        ({"kms_key_name": "k"}, False),
        ({"push_minimum_backoff_seconds": "700"}, False),
        ({"push_maximum_backoff_seconds": "601"}, False),
        ({"push_minimum_backoff_seconds": "30", "push_maximum_backoff_seconds": "20"}, False),
        ({"sync_overlap_seconds": "80"}, True),
        ({"sync_overlap_seconds": "79"}, False),
        ({"ingest_timeout_seconds": "300"}, False),  # the overlap must grow with the ingest timeout
        ({"ingest_timeout_seconds": "300", "sync_overlap_seconds": "320"}, True),
    ],
)
def test_terraform_validates_the_new_variables(tmp_path: Path, values: dict[str, str], accepted: bool) -> None:
    """Real Terraform evaluates variables.tf's validations (no provider needed)."""
    shutil.copy(TF_DIR / "variables.tf", tmp_path / "variables.tf")
    options = [part for name, value in values.items() for part in ("-var", f"{name}={value}")]
    result = subprocess.run(
        [str(_TERRAFORM), "console", *_REQUIRED_VARS, *options],
        input="var.push_minimum_backoff_seconds\n",
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # console reports a refused variable on stderr but may still exit 0
    refused = result.returncode != 0 or "Invalid value for variable" in result.stderr
    assert refused != accepted, result.stderr
    if accepted:
        assert result.stdout.strip().splitlines()[-1] == str(values.get("push_minimum_backoff_seconds", 10))
