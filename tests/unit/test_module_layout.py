"""The deployed modules form a tree: no two import each other, directly or around a circle, not even under
`if TYPE_CHECKING:` (a circle there still couples them, and hides a layering mistake). Read from the
source with `ast`, every import statement counts, wherever it stands (a function-level import too).

And the Write API's gRPC stack stays out of the import of everything but its own writer, so an instance
writing with insertAll never loads it (cold start)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"personas_warehouse": ROOT / "functions" / "personas_warehouse", "schemas": ROOT / "schemas"}


def module_name(path: Path) -> str:
    for package, folder in PACKAGES.items():
        if path.is_relative_to(folder):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise AssertionError(path)


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in it (`from a import b` counts a.b when b is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    files = [path for folder in PACKAGES.values() for path in folder.rglob("*.py")]
    known = {module_name(path) for path in files}
    edges = {module_name(path): imports(path, known) for path in files}
    for name, targets in edges.items():  # a package's __init__ is imported with any of its modules: not a circle
        targets.discard(name)
        targets.difference_update(pkg for pkg in list(targets) if name.startswith(pkg + "."))
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_no_two_modules_import_each_other() -> None:
    edges = graph()
    assert "personas_warehouse.writers.storage_write" in edges and edges["personas_warehouse.bigquery"]
    assert circles(edges) == []


def test_the_check_finds_a_circle_behind_type_checking(tmp_path: Path) -> None:
    """The check itself: a circle hidden under TYPE_CHECKING is found."""
    edges = {"a": {"b"}, "b": {"c"}, "c": set()}
    assert circles(edges) == []
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a import thing\n"
    (tmp_path / "c.py").write_text(source)
    edges["c"] = imports(tmp_path / "c.py", {"a", "b", "c"})
    assert circles(edges) == [["a", "b", "c", "a"]]


def test_an_insert_all_instance_never_loads_the_write_api_writer() -> None:
    script = (
        "import sys; import personas_warehouse.app as app; from personas_warehouse.settings import Settings; "
        "app.SETTINGS = Settings(project='p', bigquery_emulator_host='http://127.0.0.1:1', "
        "bigquery_writer='insert_all'); app.warehouse(); print(sorted(sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT / 'functions'}:{ROOT}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "personas_warehouse.writers.insert_all" in done.stdout
    assert "personas_warehouse.writers.storage_write" not in done.stdout
