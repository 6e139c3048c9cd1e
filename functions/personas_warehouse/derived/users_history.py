"""`users_history`: the `users` traits as they changed over time, one row per user and period in which every
synced value stayed the same (a type-2 history): `id`, `valid_from`, `valid_to` (null: the current period)
and every synced trait column.

The rule is users' (derived/users.py) applied to the calls up to each moment t: per column, the value of
the newest call with a timestamp at or before t (by sql.KEY: timestamp, then the messageId's fingerprint)
that has one; identify rows without user_id are never read; copies of a call count once. A user's first
period starts at their first call; a later one at each timestamp where a value differs from the one before
(a call that changes nothing starts no period; calls of one timestamp count as one moment, the state after
all of them, so no period has zero length). `valid_to` is the next period's `valid_from`. Hence the
point-in-time join `valid_from <= t AND (valid_to > t OR valid_to IS NULL)` gives exactly one row per user
for every t at or after their first call, and the rows with `valid_to` null are `users` (without
`received_at`, which changes at every call).

Kept from `users_history_calls`: one row per call with a user_id (copies once), the synced columns only,
partitioned like users_history by a hash of the user id. A late call can change every later period, and
merge or split them, so a fold cannot patch periods in place from the new rows alone; it recomputes the
periods of the users the window touches from their stored calls (reading only their partitions), and
writes only what differs: periods from the user's earliest call in the window on, and the `valid_to` of
the one before. docs/users_history.md compares this with keeping per-period as-of keys, and prices both.

A chunk's statements: store the window's calls (Internal: not counted), then recompute the touched users'
periods. A space too wide for one statement (BigQuery's 1,024K characters) splits by columns: the calls'
columns in groups; which calls start a period (`_starts`) from each group in turn (a period starts where
any group changes); then the periods' values, a group per statement. Columns switched off by selective
sync keep the values stored before (as users keeps its last value); switched back on, they are filled
from history and the periods of the users who carry them recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from personas_warehouse import sql
from personas_warehouse.bigquery import Schema
from personas_warehouse.derived import users
from personas_warehouse.derived.frame import Backfill, Context, Internal, Keys, Plan, Source, Statements, Window
from personas_warehouse.sql import BUCKET, IDENTIFIES, KEY, quote, split, table, trait_columns
from schemas.tables import spec

NAME = TABLE = "users_history"
CALLS = "users_history_calls"
FUNCTION = "users_at"  # users_at(as_of TIMESTAMP): users as it was at as_of
LAYOUT = 1
RESERVED = spec(TABLE).column_names  # a trait named valid_from or valid_to cannot be a column here
_UPTO = "_upto AS (PARTITION BY user_id ORDER BY _key ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
_BEFORE = "_before AS (PARTITION BY user_id, _last ORDER BY timestamp)"  # the moments before, among moments
# Periods before the earliest call of the window cannot change (their values come from earlier calls):
# only those from it on are rewritten (and the valid_to of the one before). NULL _since: every period.
_RECENT = "IFNULL(_new.valid_from >= _new._since, TRUE)"


class UsersHistory:
    name, table, layout = NAME, TABLE, LAYOUT

    def plan(self, context: Context) -> Plan | str:
        warehouse, dataset, deadline, config = context.warehouse, context.dataset, context.deadline, context.config
        identifies = warehouse.existing_schema(dataset, IDENTIFIES, deadline)
        if identifies is None:
            return "no identifies table yet"
        traits = trait_columns(identifies)
        enabled = users.synced_traits(traits, config, NAME)
        reserved = sorted(n for n in enabled if n in RESERVED)
        wanted = {n: t for n, t in enabled.items() if n not in RESERVED}
        kept: dict[str, Schema] = {}
        for name in (CALLS, TABLE):
            schema = warehouse.ensure_table(dataset, name, spec(name), deadline)
            missing = {n: t for n, t in wanted.items() if n not in schema}
            base = {c.name: c.type for c in spec(name).columns if c.name not in schema}
            kept[name] = (
                warehouse.add_columns(dataset, name, {**base, **missing}, deadline) if missing or base else schema
            )
        clashing = sorted(set(users.clashes(wanted, kept[CALLS])) | set(users.clashes(wanted, kept[TABLE])))
        synced = [n for n in wanted if n not in clashing]
        # Every trait column the calls keep with the type the periods have: the synced ones, and those
        # switched off since (their stored values stay in effect, as in users).
        stored = spec(CALLS).column_names
        computed = [n for n, t in kept[CALLS].items() if n not in stored and kept[TABLE].get(n) == t]
        previous = context.previous.skipped_columns if context.previous else frozenset()
        switched_on = [n for n in synced if n in previous]
        project = warehouse.project
        built = Built(project, dataset, synced, computed)

        def finish() -> None:
            if not warehouse.routine_exists(dataset, FUNCTION, deadline):
                warehouse.run(users_at_sql(project, dataset), [], deadline)

        left_out = []
        if clashing:
            left_out.append(f"{NAME} has other types for {clashing}: those columns were not synced")
        if reserved:
            left_out.append(f"{reserved} are {NAME}'s own columns: those traits were not synced")
        return Plan(
            sources=[Source(IDENTIFIES, "user_id", "user_id IS NOT NULL")],
            fold=built.fold,
            rebuild=built.rebuild,
            backfills=[
                Backfill(
                    "columns switched back on",
                    [Source(IDENTIFIES, "user_id", f"user_id IS NOT NULL AND ({_carrying(group)})")],
                    built.backfill(group),
                )
                for group in _groups(switched_on)
            ],
            finish=finish,
            partial="; ".join(left_out) or None,
            skipped_columns=sorted(set(traits) - set(synced)),
        )


USERS_HISTORY = UsersHistory()


class Built:
    """The statements of one space's run: `synced` columns are stored from new calls, `computed` ones (the
    synced and those switched off since) make the periods."""

    def __init__(self, project: str, dataset: str, synced: Sequence[str], computed: Sequence[str]) -> None:
        self.project, self.dataset, self.synced, self.computed = project, dataset, list(synced), list(computed)

    def fold(self, keys: Keys, window: Window) -> list[str]:
        """The window's calls stored; the periods of the users they belong to recomputed."""
        return [*self._store(self.synced, keys, window, FOLD), *self._periods(keys, window, scoped=True)]

    def rebuild(self, keys: Keys, window: Window) -> list[str]:
        """The calls of these partitions stored again from the whole history; every period recomputed."""
        return [*self._store(self.synced, keys, window, REBUILD), *self._periods(keys, window, scoped=False)]

    def backfill(self, cols: Sequence[str]) -> Statements:
        """Columns switched back on: filled into the stored calls from history, every period recomputed."""
        return lambda keys, window: [
            *self._store(cols, keys, window, FILL),
            *self._periods(keys, window, scoped=False),
        ]

    def _store(self, cols: Sequence[str], keys: Keys, window: Window, mode: str) -> list[str]:
        build: Callable[[Sequence[str], int], str] = lambda g, i: calls_sql(  # noqa: E731
            self.project, self.dataset, g, i, keys, window, mode
        )
        return [Internal(text) for text in split(build, cols)]

    def _periods(self, keys: Keys, window: Window, *, scoped: bool) -> list[str]:
        """One statement when every column fits in it; else which calls start a period, a group of columns
        at a time, then the periods' values, a group at a time."""
        p, d, cols = self.project, self.dataset, self.computed
        whole = periods_sql(p, d, cols, 0, keys, window, scoped=scoped, inline=True)
        values = split(lambda g, i: periods_sql(p, d, g, i, keys, window, scoped=scoped, inline=False), cols)
        if len(values) == 1 and len(whole) <= sql.MAX_QUERY_CHARS:
            return [whole]
        starts = split(lambda g, i: starts_sql(p, d, g, i, keys, window, scoped=scoped), cols)
        return [*(Internal(text) for text in starts), *values]


# -- SQL ---------------------------------------------------------------------------------------------

FOLD, REBUILD, FILL = "fold", "rebuild", "fill"


def _carrying(cols: Sequence[str]) -> str:
    return " OR ".join(f"{quote(c)} IS NOT NULL" for c in cols) or "FALSE"


def _groups(cols: Sequence[str]) -> list[list[str]]:
    """`cols` in runs whose `_carrying` filter (in the frame's window query too) stays under users'
    _MAX_FILTER_CHARS."""
    return [[c.column for c in group] for group in users.filter_groups(users.synced(cols))]


def _window_calls(project: str, dataset: str, cols: Sequence[str], keys: Keys, window: Window, where: str) -> str:
    """The identify calls of the window with a user_id in `keys`, each once (copies share a key: the first
    received), with `cols`. Columns are named, not `*`: BigQuery bills the columns it reads."""
    picked = "".join(f", {quote(c)}" for c in cols)
    return (
        f"SELECT * EXCEPT (_copy, received_at) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id, _key "
        f"ORDER BY received_at) AS _copy FROM (SELECT user_id, timestamp, received_at{picked}, {KEY} AS _key "
        f"FROM {table(project, dataset, IDENTIFIES)} WHERE user_id IS NOT NULL AND {window.rows()} "
        f"AND {keys.rows('user_id')}{where})) WHERE _copy = 1"
    )


def calls_sql(
    project: str, dataset: str, cols: Sequence[str], index: int, keys: Keys, window: Window, mode: str
) -> str:
    """Store the window's calls of the users in `keys` in users_history_calls, with `cols`. The first
    statement of a fold inserts the calls not stored yet; of a rebuild, replaces every call of these
    partitions (ON FALSE); the others (a wide space's, or a backfill) set `cols` on the stored calls."""
    calls = table(project, dataset, CALLS)
    source = _window_calls(project, dataset, cols, keys, window, f" AND ({_carrying(cols)})" if mode == FILL else "")
    partitions = keys.partitions("_old")
    on = f"_old.user_id = _new.user_id AND _old._key = _new._key AND {partitions}"
    if index == 0 and mode in (FOLD, REBUILD):
        names = ["user_id", "timestamp", "_key", *cols]
        insert = (
            f"WHEN NOT MATCHED THEN INSERT ({', '.join(map(quote, names))}, {quote(BUCKET)}) "
            f"VALUES ({', '.join(f'_new.{quote(n)}' for n in names)}, {keys.bucket('_new.user_id')})"
        )
        if mode == REBUILD:
            return (
                f"MERGE {calls} AS _old\nUSING ({source}) AS _new\nON FALSE\n"
                f"WHEN NOT MATCHED BY SOURCE AND {partitions} THEN DELETE\n{insert}"
            )
        return f"MERGE {calls} AS _old\nUSING ({source}) AS _new\nON {on}\n{insert}"
    sets = ", ".join(f"{quote(c)} = _new.{quote(c)}" for c in cols) or "_key = _old._key"
    return (
        f"MERGE {calls} AS _old\nUSING ({source}) AS _new\nON {on}\n"
        f"WHEN MATCHED AND {partitions} THEN UPDATE SET {sets}"
    )


def _scope(project: str, dataset: str, keys: Keys, window: Window) -> str:
    """The users of the window in `keys`, each with the timestamp of their earliest call in it."""
    return (
        f"SELECT user_id, MIN(timestamp) AS _since FROM {table(project, dataset, IDENTIFIES)} "
        f"WHERE user_id IS NOT NULL AND {window.rows()} AND {keys.rows('user_id')} GROUP BY user_id"
    )


def _moments(project: str, dataset: str, cols: Sequence[str], keys: Keys, window: Window, scoped: bool) -> str:
    """Every stored call of the users whose periods are recomputed (`scoped`: the window's users in `keys`;
    else every user of those partitions) with, per column, the value of the newest call up to it that has
    one: the user's state after it; `_last` marks the last call of its timestamp (the state at that moment)."""
    calls = table(project, dataset, CALLS)
    picked = "".join(f", _c.{quote(c)}" for c in cols)
    if scoped:
        source = (
            f"SELECT _c.user_id, _c.timestamp, _c._key, _c._starts{picked}, _s._since FROM {calls} AS _c "
            f"JOIN ({_scope(project, dataset, keys, window)}) AS _s ON _c.user_id = _s.user_id "
            f"WHERE {keys.partitions('_c')}"
        )
    else:
        source = (
            f"SELECT _c.user_id, _c.timestamp, _c._key, _c._starts{picked}, CAST(NULL AS TIMESTAMP) AS _since "
            f"FROM {calls} AS _c WHERE {keys.partitions('_c')}"
        )
    # Each call once, should two runs at once have stored it twice (each read the calls before the other's
    # insert): a wide space's statements match their source on the call's key, one row each.
    once = (
        f"SELECT * EXCEPT (_copy) FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id, _key) AS _copy "
        f"FROM ({source})) WHERE _copy = 1"
    )
    running = "".join(f", LAST_VALUE({quote(c)} IGNORE NULLS) OVER _upto AS {quote(c)}" for c in cols)
    return (
        f"SELECT user_id, timestamp, _key, _starts, _since{running}, "
        f"ROW_NUMBER() OVER (PARTITION BY user_id, timestamp ORDER BY _key DESC) = 1 AS _last "
        f"FROM ({once}) WINDOW {_UPTO}"
    )


def _changed(cols: Sequence[str]) -> str:
    """Among a user's moments: the first, or one where a column of `cols` differs from the moment before."""
    return " OR ".join(
        [
            "LAG(timestamp) OVER _before IS NULL",
            *(f"{quote(c)} IS DISTINCT FROM LAG({quote(c)}) OVER _before" for c in cols),
        ]
    )


def starts_sql(
    project: str, dataset: str, cols: Sequence[str], index: int, keys: Keys, window: Window, *, scoped: bool
) -> str:
    """A wide space's `_starts` on the stored calls of the users recomputed: whether the call is the last of
    a moment where a column of `cols` changed (the first statement), or of any group so far (the others)."""
    calls = table(project, dataset, CALLS)
    moments = _moments(project, dataset, cols, keys, window, scoped)
    source = f"SELECT user_id, _key, _last AND ({_changed(cols)}) AS _begins FROM ({moments}) WINDOW {_BEFORE}"
    partitions = keys.partitions("_old")
    starts = "_new._begins" if index == 0 else "(_old._starts OR _new._begins)"
    return (
        f"MERGE {calls} AS _old\nUSING ({source}) AS _new\n"
        f"ON _old.user_id = _new.user_id AND _old._key = _new._key AND {partitions}\n"
        f"WHEN MATCHED AND {partitions} THEN UPDATE SET _starts = {starts}"
    )


def _periods(moments: str, cols: Sequence[str], inline: bool) -> str:
    """A user's periods: the moments that start one (decided here over `cols` when `inline`, else the
    stored `_starts`), each valid to the next one's start."""
    values = "".join(f", {quote(c)}" for c in cols)
    begins = f"_last AND ({_changed(cols)})" if inline else "_starts"
    before = f" WINDOW {_BEFORE}" if inline else ""
    return (
        f"SELECT id, valid_from, LEAD(valid_from) OVER (PARTITION BY id ORDER BY valid_from) AS valid_to, _since"
        f"{values} FROM (SELECT user_id AS id, timestamp AS valid_from, _since{values}, {begins} AS _begins "
        f"FROM ({moments}){before}) WHERE _begins"
    )


def periods_sql(
    project: str,
    dataset: str,
    cols: Sequence[str],
    index: int,
    keys: Keys,
    window: Window,
    *,
    scoped: bool,
    inline: bool,
) -> str:
    """Make users_history's periods of the users recomputed what their stored calls say. The first statement
    deletes the periods that are no longer (a late call merged them), inserts the new ones and rewrites the
    recent ones, with `cols`; the others (a wide space's) set `cols` on the recent periods."""
    history = table(project, dataset, TABLE)
    periods = _periods(_moments(project, dataset, cols, keys, window, scoped), cols, inline)
    partitions = keys.partitions("_old")
    sets = "".join(f", {quote(c)} = _new.{quote(c)}" for c in cols)
    if index:
        return (
            f"MERGE {history} AS _old\nUSING ({periods}) AS _new\n"
            f"ON _old.id = _new.id AND _old.valid_from = _new.valid_from AND {partitions}\n"
            f"WHEN MATCHED AND {partitions} AND {_RECENT} THEN UPDATE SET {sets[2:] or 'id = _old.id'}"
        )
    users_of = f" AND _h.id IN (SELECT user_id FROM ({_scope(project, dataset, keys, window)}))" if scoped else ""
    was = f"SELECT _h.id, _h.valid_from FROM {history} AS _h WHERE {keys.partitions('_h')}{users_of}"
    source = (
        f"SELECT _p.*, _was.id AS _was_id, _was.valid_from AS _was_from FROM ({periods}) AS _p "
        f"FULL JOIN ({was}) AS _was ON _p.id = _was.id AND _p.valid_from = _was.valid_from"
    )
    names = ["id", "valid_from", "valid_to", *cols]
    return (
        f"MERGE {history} AS _old\nUSING ({source}) AS _new\n"
        f"ON _old.id = IFNULL(_new.id, _new._was_id) AND _old.valid_from = IFNULL(_new.valid_from, _new._was_from) "
        f"AND {partitions}\n"
        f"WHEN MATCHED AND {partitions} AND _new.id IS NULL THEN DELETE\n"
        f"WHEN MATCHED AND {partitions} AND ({_RECENT} OR _old.valid_to IS DISTINCT FROM _new.valid_to) "
        f"THEN UPDATE SET valid_to = _new.valid_to{sets}\n"
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(map(quote, names))}, {quote(BUCKET)}) "
        f"VALUES ({', '.join(f'_new.{quote(n)}' for n in names)}, {keys.bucket('_new.id')})"
    )


def users_at_sql(project: str, dataset: str) -> str:
    """`users_at(as_of)`: users_history's rows valid at as_of, without the period and partition: `users` as it
    was then (without received_at). `as_of` is read in a FROM-less subquery, where no trait column named
    `as_of` can hide it (BigQuery resolves a name both a column and a parameter as the column:
    https://cloud.google.com/bigquery/docs/table-functions#parameter_names). `*` is resolved when the
    function is queried (its return type is left to BigQuery:
    https://cloud.google.com/bigquery/docs/reference/rest/v2/routines), so new trait columns appear in it."""
    function = table(project, dataset, FUNCTION)
    return (
        f"CREATE OR REPLACE TABLE FUNCTION {function}(as_of TIMESTAMP) AS "
        f"SELECT _h.* EXCEPT (valid_from, valid_to, {quote(BUCKET)}) FROM (SELECT as_of AS _as_of) AS _at "
        f"JOIN {table(project, dataset, TABLE)} AS _h "
        f"ON _h.valid_from <= _at._as_of AND (_h.valid_to > _at._as_of OR _h.valid_to IS NULL)"
    )
