"""Operator commands: reconcile (is every published call accounted for?), replay (put refused or
dead-lettered messages back), status (the pipeline's health on one screen).

They read the same tables the functions write and reuse the core's identifier rules
(`personas_warehouse.sql`), so `functions/` goes on the import path when run as `python -m infra.ops.X`
from the repository root (tests and `make` already put it there).
"""

from __future__ import annotations

import sys
from pathlib import Path

_FUNCTIONS = str(Path(__file__).resolve().parents[2] / "functions")
if _FUNCTIONS not in sys.path:
    sys.path.append(_FUNCTIONS)
