"""The space policy at ingest: which routed calls may land, given the space datasets that exist.

Any publisher to the topic picks the `space` attribute, and every space dataset is visited by the users
sync every minute, so personas.yaml's `space_policy` bounds them (settings.SpacePolicy, the rule itself
in messages.space_refusal). `listed` needs nothing but the config. `any` needs the number of space
datasets, which costs a datasets.list call (paged); so each instance keeps the names it has seen:

- a call for a space already known costs nothing;
- a space not known makes the instance list the datasets again, at most once per `min_refresh_seconds`
  (a stream of made-up spaces costs one listing per 10 s per instance, not one per message), and is then
  admitted while fewer than the maximum are known; an admitted space counts at once, before its dataset
  is made, so one instance never goes past the maximum;
- names are only ever added (a dataset an operator deleted keeps counting until the instance restarts).

The bound is approximate across instances: instances near the maximum that each admit a different new
space at the same moment each see the count below the maximum, so the project can end with up to
(instances admitting at once - 1) space datasets more than the maximum; BigQuery offers nothing to
reserve a slot atomically short of a lock of our own. It only ever errs by those few; a refused call
never creates anything. The listing shows the datasets the function may read (datasets.list lists those
the caller has READER on: https://cloud.google.com/bigquery/docs/reference/rest/v2/datasets/list), which,
with Terraform's grants, are the space datasets the functions made.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from personas_warehouse.bigquery import Deadline, PerWarehouse
from personas_warehouse.messages import space_refusal
from personas_warehouse.settings import Settings
from schemas.config import LISTED_SPACES

MIN_REFRESH_SECONDS = 10.0


class SpaceCatalog:
    """The space datasets one instance knows to exist, and the admissions it made; thread-safe."""

    def __init__(
        self,
        list_spaces: Callable[[Deadline], Iterable[str]],
        *,
        clock: Callable[[], float] = time.monotonic,
        min_refresh_seconds: float = MIN_REFRESH_SECONDS,
    ) -> None:
        self._list = list_spaces
        self._clock = clock
        self._min_refresh = min_refresh_seconds
        self._known: set[str] = set()
        self._listed_at: float | None = None
        self._lock = threading.Lock()  # guards _known and _listed_at
        self._listing = threading.Lock()  # one listing at a time; others wait for it rather than list too
        self.listings = 0

    def refusal(self, space: str, settings: Settings, deadline: Deadline) -> str | None:
        """Why the policy refuses a call for `space`, or None (then the space counts as existing)."""
        policy = settings.space_policy
        if policy.allow == LISTED_SPACES:
            return space_refusal(space, policy, settings.spaces, ())
        with self._lock:
            if space in self._known:
                return None
        with self._listing:
            with self._lock:
                stale = self._listed_at is None or self._clock() - self._listed_at >= self._min_refresh
            if stale and space not in self._known:
                found = set(self._list(deadline))
                with self._lock:
                    self._known |= found
                    self._listed_at = self._clock()
                    self.listings += 1
            with self._lock:
                reason = space_refusal(space, policy, settings.spaces, self._known)
                if reason is None:
                    self._known.add(space)
                return reason


# One catalog per Warehouse, that is per instance.
catalog_of: PerWarehouse[SpaceCatalog] = PerWarehouse(lambda warehouse: SpaceCatalog(warehouse.space_slugs))
