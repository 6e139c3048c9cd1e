"""Generate docs/tables.md's table layouts (from schemas/tables.json) and naming examples (from the naming
rule itself), so the docs cannot drift from the code. `python -m infra.docs` (`make docs`) rewrites
docs/tables.md between the markers; tests/unit/test_readme.py fails when it is stale."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from personas_warehouse import naming
from personas_warehouse.shaping import FIXED_TABLES
from schemas.tables import spec, table_specs

TABLES_DOC = Path(__file__).resolve().parents[1] / "docs" / "tables.md"
IDENTIFIES_BASE = spec("identifies").column_names

# (what was sent, where it came from) -> the name the warehouse gets
NAMING_EXAMPLES: list[tuple[str, str]] = [
    ("first_time_shopper", "trait"),
    ("totalRevenue180Days", "trait"),
    ("userID", "trait"),
    ("HTTPServerName", "trait"),
    ("Audience Entered", "event"),
    ("Trait Computed", "event"),
    ("Identifies", "event"),
    ("Page View", "event"),
    ("  e-mail address! ", "trait"),
    ("Café Crème", "trait"),
    ("180_day_value", "trait"),
    ("id", "trait"),
    ("user_id", "trait"),
    ("context_ip", "trait"),
    ("_PARTITIONTIME", "trait"),
    ("__ROOT__x", "trait"),
    ("Robert'); DROP TABLE users;--", "trait"),
    ("🎉", "trait"),
    ("address.city (nested {address: {city}})", "nested"),
]


def _name(key: str, source: str) -> str:
    if source == "event":
        return naming.event_table_name(key, taken=FIXED_TABLES)
    if source == "nested":
        return naming.column_name(("address", "city"), taken=IDENTIFIES_BASE, taken_prefixes=("context_",))
    return naming.column_name((key,), taken=IDENTIFIES_BASE, taken_prefixes=("context_",))


def naming_section() -> str:
    lines = ["| sent | as | warehouse name |", "|---|---|---|"]
    for key, source in NAMING_EXAMPLES:
        shown = key.replace("|", "\\|")
        lines.append(f"| `{shown}` | {source} | `{_name(key, source)}` |")
    return "\n".join(lines)


def tables_section() -> str:
    out = []
    for kind, table in table_specs().items():
        where = "each space dataset `personas_<space>`" if table.dataset == "space" else "the operations dataset"
        extra = []
        if table.partition_field:
            extra.append(f"partitioned by day on `{table.partition_field}`")
        if table.buckets:
            extra.append(f"partitioned by integer range on `_bucket` ({table.buckets:,} partitions)")
        if table.clustering:
            extra.append("clustered by " + ", ".join(f"`{c}`" for c in table.clustering))
        if table.dynamic:
            extra.append("plus one column per trait / property / `context_*` field")
        if table.dedup_view:
            view = "<event>_view" if kind == "track_event" else f"{kind}_view"
            extra.append(f"the view `{view}` keeps one row per `id`")
        layout = f" {'; '.join(extra).capitalize()}." if extra else ""
        out.append(f"#### `{kind}` ({where})\n\n{table.description}{layout}\n")
        out.append("| column | type | meaning |\n|---|---|---|")
        out.extend(f"| `{c.name}` | {c.type} | {c.description} |" for c in table.columns)
        out.append("")
    return "\n".join(out).rstrip()


SECTIONS = {"naming": naming_section, "tables": tables_section}


def render(text: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- /generated:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"docs/tables.md lacks the markers of section {name}")
        text = pattern.sub(lambda m, make=make: m.group(1) + make() + "\n" + m.group(2), text)
    return text


def main() -> int:
    TABLES_DOC.write_text(render(TABLES_DOC.read_text()))
    print(f"rewrote generated sections of {TABLES_DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
