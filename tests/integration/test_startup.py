"""An invalid configuration stops the function at start-up, naming the bad key: never half-applied."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infra.local.stack import STAGE

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ("spaces:\n  marketing:\n    disabled_tabels: [users]\n", "disabled_tabels"),
        ("spaces:\n  Bad-Slug: {}\n", "Bad-Slug"),
        ("spaces:\n  x:\n    disabled_columns:\n      identifies: [user_id]\n", "user_id"),
    ],
)
def test_function_refuses_to_start_with_an_invalid_config(tmp_path: Path, config: str, named: str) -> None:
    path = tmp_path / "personas.yaml"
    path.write_text(config)
    started = subprocess.run(
        [
            str(Path(sys.executable).parent / "functions-framework"),
            "--target",
            "sync",
            "--source",
            str(STAGE / "main.py"),
            "--port",
            "18099",
            "--host",
            "127.0.0.1",
        ],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(STAGE), "PERSONAS_CONFIG": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=STAGE,
    )
    assert started.returncode != 0
    assert "ConfigError" in started.stderr and named in started.stderr
