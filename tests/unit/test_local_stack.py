"""The local stack's one factory for stacks on spare ports (infra/local/stack.py `StackConfig.spare`), what
it gives the functions, and the import graph of the tooling (no two modules import each other)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from infra.local.stack import PORT_OFFSET_VAR, ROOT, STAGE, StackConfig


@pytest.mark.parametrize("offset", [None, "0", "1000", "6000"])
@pytest.mark.parametrize("base", [18_000, 18_100, 24_000, 28_400])
def test_spare_stack_takes_its_hundred_shifted_by_the_offset(
    monkeypatch: pytest.MonkeyPatch, base: int, offset: str | None
) -> None:
    if offset is None:
        monkeypatch.delenv(PORT_OFFSET_VAR, raising=False)
    else:
        monkeypatch.setenv(PORT_OFFSET_VAR, offset)
    c = StackConfig.spare(base, "suite")
    start = base + int(offset or 0)
    ports = [c.pubsub_port, c.bigquery_port, c.bigquery_grpc_port, c.ingest_port, c.sync_port]
    assert ports == [start + 85, start + 50, start + 60, start + 80, start + 81]
    assert not {start + 70, start + 90} & set(ports)  # left for a suite's extras (fault proxy, bare function)
    assert c.sync_every_seconds == 0
    assert c.state_dir == str(ROOT / "build" / "stacks" / "suite")


def test_spare_stack_fields_override_the_defaults() -> None:
    c = StackConfig.spare(18_000, "suite", topic="t-x", state_dir="/tmp/x", function_env={"A": "1"})
    assert (c.topic, c.state_dir, c.function_env) == ("t-x", "/tmp/x", {"A": "1"})


def test_functions_get_the_emulators_but_not_pubsub_and_their_own_env_last() -> None:
    env = StackConfig(bigquery_port=1234, function_env={"THREADS": "2", "X": "y"}).function_environment()
    assert env["BIGQUERY_EMULATOR_HOST"] == "http://127.0.0.1:1234"
    assert env["PYTHONPATH"] == str(STAGE)
    assert (env["THREADS"], env["X"]) == ("2", "y")
    assert "PUBSUB_EMULATOR_HOST" not in env  # the functions publish nothing
    assert StackConfig().function_environment()["THREADS"] == "80"


def _imports(packages: dict[str, list[str]]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (at any depth of its code, TYPE_CHECKING included)."""
    modules: dict[str, Path] = {}
    for base, names in packages.items():
        for package in names:
            for path in Path(ROOT, base, package).glob("**/*.py"):
                parts = path.relative_to(ROOT / base).with_suffix("").parts
                modules[".".join(parts).removesuffix(".__init__")] = path
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    found = next((m for m in (f"{node.module}.{alias.name}", node.module) if m in modules), None)
                    if found and found != name:
                        deps.add(found)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules and a.name != name)
        edges[name] = deps
    return edges


def test_no_two_modules_of_the_tooling_import_each_other() -> None:
    # functions/personas_warehouse joins this list once its own pair (bigquery, storage_write) is untangled.
    edges = _imports({".": ["infra", "schemas"]})
    assert len(edges) > 20  # the walk found the modules
    circles = sorted({tuple(sorted((a, b))) for a, deps in edges.items() for b in deps if a in edges.get(b, set())})
    assert circles == []
