"""`users`: one row per user_id with the newest non-null value of every synced trait and audience.

Kept as `users_state`: per user, every synced column's value and, beside it, the as-of key (sql.KEY)
of the call that value came from, so that new rows are folded in without re-reading history; `users`
is a view of it without those. The rule, which the oracle of tests/integration/test_sync_property.py
restates: per column, the value of the user's newest call (by sql.KEY: timestamp, then a fingerprint of
the messageId) that has one; `received_at` of the user's newest call, of its copies the first
received; identify rows without user_id are never read (anonymous-only profiles stay in identifies).

Each column is a maximum over the user's calls, so a fold is idempotent and order-free: folding any
rows, in any order, any number of times, gives what a rebuild from the whole history gives. The frame
(frame.py) owns the window, the keys and the partition budget; this module the SQL of the three pieces of
work: fold a window, rebuild keys from history (a full run), and fill columns switched back on by
selective sync from history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from personas_warehouse import naming, values
from personas_warehouse.derived.frame import (
    Backfill,
    Context,
    Keys,
    Plan,
    Source,
    Statements,
    Window,
    existing_view,
)
from personas_warehouse.settings import SpaceConfig
from personas_warehouse.sql import BUCKET, IDENTIFIES, KEY, quote, split, table, trait_columns
from schemas.tables import spec

NAME, TABLE = "users", "users_state"
# 2: ties of timestamp broken by the messageId's fingerprint, not by arrival; no rebuild flag.
LAYOUT = 2
ROW_ASOF = "_asof"  # the as-of key of the user's newest call
LEGACY_FLAG = "_rebuild"  # layout 1's flag column: left in upgraded tables, never read, hidden from users


@dataclass(frozen=True)
class Synced:
    """A users column and the as-of column users_state keeps beside it."""

    column: str
    asof: str


ROW = Synced("received_at", ROW_ASOF)  # every call has one: its as-of is the key of the user's newest call


def synced_traits(traits: Mapping[str, str], config: SpaceConfig, *also: str) -> dict[str, str]:
    """The trait columns (name -> type) `users` syncs: those selective sync leaves on for users and, for a
    table kept from the same calls (users_history), for the tables named in `also`."""
    return {n: t for n, t in traits.items() if all(config.column_enabled(table, n) for table in (NAME, *also))}


def clashes(wanted: Mapping[str, str], kept: Mapping[str, str]) -> list[str]:
    """Wanted columns a kept table holds with another type than identifies': they are not synced (the run
    is partial and says which)."""
    return sorted(n for n, t in wanted.items() if kept.get(n) != t)


def synced(columns: Sequence[str]) -> list[Synced]:
    return [Synced(c, naming.asof_column(c)) for c in columns]


class Users:
    name, table, layout = NAME, TABLE, LAYOUT

    def plan(self, context: Context) -> Plan | str:
        warehouse, dataset, deadline, config = context.warehouse, context.dataset, context.deadline, context.config
        identifies = warehouse.existing_schema(dataset, IDENTIFIES, deadline)
        if identifies is None:
            return "no identifies table yet"
        view = existing_view(warehouse, dataset, NAME, TABLE, deadline)
        traits = trait_columns(identifies)
        wanted = synced_traits(traits, config)
        state = warehouse.ensure_table(dataset, TABLE, spec(TABLE), deadline)
        missing = {n: t for n, t in wanted.items() if n not in state}
        base = {c.name: c.type for c in spec(TABLE).columns if c.name not in state}  # an older layout's
        if missing or base:
            hidden = {naming.asof_column(n): values.STRING for n in missing}
            state = warehouse.add_columns(dataset, TABLE, {**base, **missing, **hidden}, deadline)
        clashing = clashes(wanted, state)
        columns = [ROW, *synced([n for n in wanted if n not in clashing])]
        kept = {c.column for c in columns}
        previous = context.previous.skipped_columns if context.previous else frozenset()
        switched_on = [c for c in columns if c is not ROW and c.column in previous]
        hidden_now = [n for n in state if n in (ROW_ASOF, BUCKET, LEGACY_FLAG) or n.startswith(naming.ASOF_PREFIX)]
        project = warehouse.project

        def finish() -> None:
            # `*` is resolved when the view is queried: only a new hidden column needs the view made again.
            shown = view.view_query or "" if view is not None else ""
            if view is None or any(quote(h) not in shown for h in hidden_now):
                warehouse.put_view(dataset, NAME, users_view_query(project, dataset, hidden_now), deadline)

        backfills = [
            Backfill(
                "columns switched back on",
                [Source(IDENTIFIES, "user_id", f"user_id IS NOT NULL AND ({_carrying(group)})")],
                _from_history(project, dataset, group),
            )
            for group in filter_groups(switched_on)
        ]
        return Plan(
            sources=[Source(IDENTIFIES, "user_id", "user_id IS NOT NULL")],
            fold=lambda keys, window: split(lambda g, i: fold_sql(project, dataset, g, keys, window), columns),
            rebuild=lambda keys, window: split(lambda g, i: rebuild_sql(project, dataset, g, i, keys, window), columns),
            backfills=backfills,
            finish=finish,
            partial=f"users has other types for {clashing}: those columns were not synced" if clashing else None,
            skipped_columns=sorted(set(traits) - kept),
        )


USERS = Users()


# -- SQL ---------------------------------------------------------------------------------------------


# The scope query of a backfill names its columns in a filter: at most this many characters of them each.
_MAX_FILTER_CHARS = 200_000


def _carrying(cols: Sequence[Synced]) -> str:
    return " OR ".join(f"{quote(c.column)} IS NOT NULL" for c in cols) or "FALSE"


def filter_groups(cols: Sequence[Synced]) -> list[list[Synced]]:
    """`cols` in runs whose `_carrying` filter stays under _MAX_FILTER_CHARS."""
    groups: list[list[Synced]] = []
    used = _MAX_FILTER_CHARS
    for c in cols:
        cost = len(c.column) + 20
        if used + cost > _MAX_FILTER_CHARS:
            groups.append([])
            used = 0
        groups[-1].append(c)
        used += cost
    return groups


def _from_history(project: str, dataset: str, cols: Sequence[Synced]) -> Statements:
    return lambda keys, window: split(lambda g, i: history_sql(project, dataset, g, keys, window), cols)


def _rows(project: str, dataset: str, cols: Sequence[Synced], keys: Keys, window: Window, where: str = "") -> str:
    """The identify rows of the window with a user_id in `keys`: the columns `cols` need, received_at and
    the call's order key. Columns are named, not `*`: BigQuery bills the columns it reads."""
    needed = "".join(f"{quote(c.column)}, " for c in cols if c is not ROW)
    return (
        f"SELECT user_id, received_at, {needed}{KEY} AS _key FROM {table(project, dataset, IDENTIFIES)} "
        f"WHERE user_id IS NOT NULL AND {window.rows()} AND {keys.rows('user_id')}{where}"
    )


def _newest(rows: str, cols: Sequence[Synced]) -> str:
    """One row per user: per column the value of the newest of `rows` that has one, and that row's key.
    Copies of one call share a key: of them, the first received is the newest (for received_at)."""
    picks = "".join(
        f", LAST_VALUE({quote(c.column)} IGNORE NULLS) OVER _user AS {quote(c.column)}"
        f", LAST_VALUE(IF({quote(c.column)} IS NULL, NULL, _key) IGNORE NULLS) OVER _user AS {quote(c.asof)}"
        for c in cols
    )
    return (
        f"SELECT * FROM (SELECT user_id AS id{picks}, "
        f"ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY _key DESC, received_at) AS _newest FROM ({rows}) "
        f"WINDOW _user AS (PARTITION BY user_id ORDER BY _key, received_at DESC "
        f"ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)) WHERE _newest = 1"
    )


def _insert(cols: Sequence[Synced], keys: Keys) -> str:
    names = [n for c in cols for n in (quote(c.column), quote(c.asof))]
    return (
        f"WHEN NOT MATCHED THEN INSERT (`id`, {''.join(f'{n}, ' for n in names)}{quote(BUCKET)}) "
        f"VALUES (_new.id, {''.join(f'_new.{n}, ' for n in names)}{keys.bucket('_new.id')})"
    )


def _sets(cols: Sequence[Synced]) -> str:
    """Per column, the value of whichever call has the greater key, the new one or the stored one; the
    same key (the same call, read again) changes nothing but received_at, which keeps the first copy's."""
    sets = []
    for c in cols:
        col, asof = quote(c.column), quote(c.asof)
        new, old = f"_new.{asof}", f"_old.{asof}"
        newer = f"{new} IS NOT NULL AND ({old} IS NULL OR {new} > {old})"
        if c is ROW:
            same = f"IF({new} = {old}, LEAST(_new.{col}, _old.{col}), _old.{col})"
            sets.append(f"{col} = IF({newer}, _new.{col}, {same})")
        else:
            sets.append(f"{col} = IF({newer}, _new.{col}, _old.{col})")
        sets.append(f"{asof} = IF({newer}, {new}, {old})")
    return ", ".join(sets) or "`id` = _old.`id`"


def fold_sql(project: str, dataset: str, cols: Sequence[Synced], keys: Keys, window: Window) -> str:
    """Fold the window's identify rows of the users in `keys` into users_state, for `cols`."""
    state = table(project, dataset, TABLE)
    source = _newest(_rows(project, dataset, cols, keys, window), cols)
    partitions = keys.partitions("_old")
    return (
        f"MERGE {state} AS _old\n"
        f"USING ({source}) AS _new\n"
        f"ON _old.id = _new.id AND {partitions}\n"
        f"WHEN MATCHED AND {partitions} THEN UPDATE SET {_sets(cols)}\n"
        f"{_insert(cols, keys)}"
    )


def rebuild_sql(project: str, dataset: str, cols: Sequence[Synced], index: int, keys: Keys, window: Window) -> str:
    """The users in `keys` as the whole identify history up to the window's end says. The first statement
    replaces every row of those partitions (ON FALSE: users_state ends with one row per user there, whatever
    it held, and users with no identify row left are gone); the others, only for very wide tables, fill
    their columns into the rows it wrote."""
    if index:
        return history_sql(project, dataset, cols, keys, window)
    state = table(project, dataset, TABLE)
    source = _newest(_rows(project, dataset, cols, keys, window), cols)
    return (
        f"MERGE {state} AS _old\n"
        f"USING ({source}) AS _new\n"
        f"ON FALSE\n"
        f"WHEN NOT MATCHED BY SOURCE AND {keys.partitions('_old')} THEN DELETE\n"
        f"{_insert(cols, keys)}"
    )


def history_sql(project: str, dataset: str, cols: Sequence[Synced], keys: Keys, window: Window) -> str:
    """Fold `cols` of the users in `keys` from their whole identify history up to the window's end (the
    rows that carry one of them): a column switched back on, or the later statements of a wide rebuild.
    No insert: every user with a call is in users_state, or is inserted by the fold that reads its rows."""
    state = table(project, dataset, TABLE)
    source = _newest(_rows(project, dataset, cols, keys, window, f" AND ({_carrying(cols)})"), cols)
    partitions = keys.partitions("_old")
    return (
        f"MERGE {state} AS _old\n"
        f"USING ({source}) AS _new\n"
        f"ON _old.id = _new.id AND {partitions}\n"
        f"WHEN MATCHED AND {partitions} THEN UPDATE SET {_sets(cols)}"
    )


def users_view_query(project: str, dataset: str, hidden: Sequence[str]) -> str:
    """`users`: users_state without its as-of columns and partition. `*` is resolved when the view is
    queried, so new trait columns appear at once; new hidden columns need the view made again."""
    return f"SELECT * EXCEPT ({', '.join(quote(h) for h in hidden)}) FROM {table(project, dataset, TABLE)}"
