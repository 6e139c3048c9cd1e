"""README's generated sections (table layouts, naming examples) match the code."""

from __future__ import annotations

from infra.docs import README, render


def test_readme_generated_sections_are_current() -> None:
    text = README.read_text()
    assert render(text) == text, "README.md is stale: run `.venv/bin/python -m infra.docs`"
