"""Install DuckDB's spatial extension from the pinned PyPI wheel (bqemulator loads it at start and
would otherwise try to download it, which fails offline)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import duckdb_extension_spatial


def main() -> None:
    version = duckdb.__version__
    package = Path(duckdb_extension_spatial.__file__).parent
    found = sorted(package.glob(f"extensions/v{version}/spatial.duckdb_extension"))
    if not found:
        raise SystemExit(f"no spatial extension for duckdb {version} in {package}: pin matching versions")
    duckdb.connect().execute(f"INSTALL '{found[0]}'")
    print(f"duckdb {version}: spatial extension installed from {found[0]}")


if __name__ == "__main__":
    main()
