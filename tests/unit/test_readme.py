"""The generated sections of docs/tables.md (table layouts, naming examples) match the code, and README
stays the short page a newcomer reads: every docs/ page it links exists, and every docs/ page is linked."""

from __future__ import annotations

import re
from pathlib import Path

from infra.docs import TABLES_DOC, render

ROOT = Path(__file__).resolve().parents[2]


def test_generated_sections_are_current() -> None:
    text = TABLES_DOC.read_text()
    assert render(text) == text, "docs/tables.md is stale: run `make docs`"


def test_readme_links_every_doc_and_only_docs_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\(docs/([\w.-]+\.md)\)", readme))
    present = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert linked <= present, sorted(linked - present)
    assert present <= linked, f"docs/ pages README does not link: {sorted(present - linked)}"


def test_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
