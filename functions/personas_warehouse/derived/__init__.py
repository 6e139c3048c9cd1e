"""The tables the scheduled sync derives from the calls, each a module here on one frame (frame.py).

Adding one means a module with a `plan` (its SQL), an entry in schemas/tables.json (with "buckets"),
and a line below; the frame's guarantees (window, keys, partition budget, history) and the tests that
hold every derived table to them then cover it.
"""

from __future__ import annotations

from personas_warehouse.derived.frame import Derived
from personas_warehouse.derived.identities import IDENTITIES
from personas_warehouse.derived.memberships import MEMBERSHIPS
from personas_warehouse.derived.users import USERS
from personas_warehouse.derived.users_history import USERS_HISTORY

DERIVED: tuple[Derived, ...] = (USERS, USERS_HISTORY, IDENTITIES, MEMBERSHIPS)
