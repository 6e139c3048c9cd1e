"""Start bqemulator with its schema-patch gap closed. Local stack only: product code never knows.

bqemulator's tables.patch/update changes its catalog but not its DuckDB storage, so the next insertAll
after adding a column fails with HTTP 500 (see shared/notes/local-stack-facts.md). Real BigQuery
applies both. Here every schema update that adds top-level columns also runs ALTER TABLE ADD COLUMN on
the storage, which keeps the two consistent, then calls bqemulator's own update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bqemulator.catalog.duckdb_repository import DuckDBCatalogRepository
from bqemulator.catalog.memory_repository import MemoryCatalogRepository
from bqemulator.cli import main
from bqemulator.storage.sql_identifiers import quoted_table_ref
from bqemulator.storage.type_map import bq_schema_to_duckdb_columns


def _also_alter_storage(original: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def update_table(self: Any, table: Any) -> Any:
        existing = self.get_table(table.project_id, table.dataset_id, table.table_id)
        engine = getattr(self, "_engine", None)
        if existing is not None and engine is not None and existing.table_type == "TABLE":
            known = {f.name.lower() for f in existing.schema_.fields}
            ref = quoted_table_ref(table.project_id, table.dataset_id, table.table_id)
            for field in table.schema_.fields:
                if field.name.lower() in known:
                    continue
                raw = {"name": field.name, "type": field.type, "mode": field.mode or "NULLABLE"}
                [(name, dtype)] = bq_schema_to_duckdb_columns([raw])
                engine.execute(f'ALTER TABLE {ref} ADD COLUMN IF NOT EXISTS "{name}" {dtype}')
        return original(self, table)

    return update_table


for cls in (MemoryCatalogRepository, DuckDBCatalogRepository):
    cls.update_table = _also_alter_storage(cls.update_table)

if __name__ == "__main__":
    main()
