"""`audience_memberships`: one row per stay of a profile in an audience, from the calls Personas sends.

The rule (docs/audience_memberships.md says it for analysts; the oracle of
tests/integration/test_memberships_property.py restates it):

- Events. An audience event is a call that enters or exits a profile from an audience:
  - an identify call whose `context.personas.computation_class` is `audience` or `journey_step` (the
    classes Segment's own destinations read as audience membership: `engageAudienceMembership` in
    https://github.com/segmentio/action-destinations/blob/main/packages/core/src/audience-membership.ts);
    its audience is
    `context.personas.computation_key`, and the trait of that name says in (true) or out (false);
  - a track call of the space's "Audience Entered" or "Audience Exited" event (the names its config sets,
    `SpaceConfig.personas_events`; in or out, whatever its boolean property says, as destinations
    subscribed to those event names read them); its audience is
    its `audience_key` property (or trait), else `context.personas.computation_key`.
- Values. A boolean is read as sent. The string "true" is an entry: Journeys sends it when a user
  enters a step (https://segment.com/docs/engage/journeys/v1/send-data/) and Segment reads a journey step's
  non-boolean value as an add (`legacyJourneysAudienceMembership`). Any other value (1, "yes", a
  number, a timestamp) is not read (`engageAudienceMembership` answers undefined for it): it is
  skipped and counted in the run's history row. The value is read as stored: from its identifies
  column, or, when ingest could not store it there (a type clash, the column budget), from `discards`,
  which keeps it as sent. A STRING column cannot tell the boolean false from the string "false" (ingest
  writes a boolean into a string column as "true"/"false"): there "false" is an exit.
- Profiles. A profile is its user_id, else (anonymous-only calls) its anonymous_id; anonymous_id is
  kept only for anonymous-only profiles.
- Copies. Calls are events once per message id (redeliveries, resends): of copies that differ, the one
  first by (timestamp, exit before entry) is kept.
- Stays. Per profile and audience, events are ordered by sql.KEY (timestamp, then a fingerprint of the
  messageId: ties of timestamp are broken by a property of the call alone, so every run orders them
  the same way). An entry while out opens a stay; an exit while in closes it; an entry while in and an
  exit while out change nothing (the same change sent by both sources, or sent twice); an exit before
  any known event of the pair is kept as a stay with no entry (entered_at null).

Kept in two tables, both partitioned into `_bucket` ranges by a hash of the profile key: audience_events
(internal: one row per distinct event, folded in from the window idempotently and order-free, as a set
with a minimum per message id) and audience_memberships (recomputed from audience_events for every
profile of the chunk's partitions, then merged so that only stays that changed are written). Stays depend
on the whole ordered sequence of a pair (a late exit splits a stay, a late entry turns an exit without
entry into a stay), so they are never folded from the window alone; and no statement re-reads the raw
history after the first run. `audience_daily` is a view over audience_memberships.

The frame (frame.py) owns the window, the keys and the partition budget. Per chunk of partitions, the
statements are: fold the window's events into audience_events (more than one statement only for very
many audiences, split by query length), then recompute the chunk's stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from personas_warehouse import naming, sql, values
from personas_warehouse.derived.frame import SINCE, Context, Keys, Plan, Source, Window
from personas_warehouse.settings import SpaceConfig
from personas_warehouse.shaping import CONTEXT_PREFIX, DISCARDS, FIXED_TABLES, IDENTIFIES
from schemas.tables import spec

NAME = TABLE = "audience_memberships"
EVENTS = "audience_events"
DAILY = "audience_daily"
LAYOUT = 1
# The computation classes whose identify calls carry a membership (engageAudienceMembership's list).
AUDIENCE_CLASSES = ("audience", "journey_step")
CLASS_COLUMN = "context_personas_computation_class"
KEY_COLUMN = "context_personas_computation_key"
AUDIENCE_KEY = "audience_key"  # the track property naming the audience
PROFILE = "COALESCE(user_id, anonymous_id)"  # the key of a source row: what its partition is a hash of
NEW_PROFILE = "COALESCE(_new.user_id, _new.anonymous_id)"  # the same, of a row a MERGE inserts
# Report keys (the history row's `report`): calls the module could not read.
NOT_READ = "values_not_read"  # an audience value that is neither a boolean nor "true"
NO_VALUE = "values_missing"  # an identify call of an audience class without the audience's value
NO_KEY = "calls_without_audience_key"  # an audience call that names no audience
# The event tables and discards are partitioned by day on received_at (the Pub/Sub publish time), not on
# loaded_at: a bound on loaded_at alone prunes none of their partitions. Pub/Sub keeps a message at most
# 31 days after it is published ("Maximum value = 31 days",
# https://cloud.google.com/pubsub/docs/subscription-properties#message_retention_duration, and the same for a
# topic's retention), so a row loaded at or after @since was received at most that long before: statements
# that read rows loaded since @since also bound received_at, with a day to spare, and read about a month of
# those tables instead of their whole history.
RECEIVED_BEFORE_LOADED_DAYS = 32


def audience_event_tables(config: SpaceConfig) -> tuple[str, str]:
    """The tables of the track events that enter and exit a profile from an audience in this space: the
    event names its config sets (`personas_events`, Segment's defaults unless renamed), named as ingest
    names an event's table."""
    events = config.personas_events
    entered, exited = (
        naming.event_table_name(e, taken=FIXED_TABLES) for e in (events.audience_entered, events.audience_exited)
    )
    return entered, exited


@dataclass(frozen=True)
class Audience:
    """An audience key seen in identify calls, the identifies column its value lands in (named by the
    naming rule, as ingest names the trait; `kind` None when identifies has no such column), and the
    key's FARM_FINGERPRINT as BigQuery computed it: statements pick a row's audience by comparing
    fingerprints, so no key (a value sent by a client) is ever written into SQL text."""

    key: str
    fingerprint: int
    column: str
    kind: str | None


@dataclass(frozen=True)
class Inputs:
    """Where a space's audience events come from: the tables and column types found at plan time, and the
    audiences the window's identify calls name (found when the first statements are built)."""

    project: str
    dataset: str
    identifies: bool  # identifies has the computation class and key columns
    class_kind: str  # type of context_personas_computation_class
    key_kind: str  # type of context_personas_computation_key
    audiences: tuple[Audience, ...]
    discards: bool  # the discards table exists
    tracks: tuple[tuple[str, bool, str], ...]  # (event table, entered, SQL of its audience key)


class Memberships:
    name, table, layout = NAME, TABLE, LAYOUT

    def plan(self, context: Context) -> Plan | str:
        warehouse, dataset, deadline, config = context.warehouse, context.dataset, context.deadline, context.config
        identifies = warehouse.existing_schema(dataset, IDENTIFIES, deadline) or {}
        has_identifies = CLASS_COLUMN in identifies and KEY_COLUMN in identifies
        tracks, keyless = [], []  # event tables with a column naming the audience, and without one
        entered, exited = audience_event_tables(config)
        if entered == exited:
            return f"the entered and exited events share the table {entered}"
        for event_table, enters in ((entered, True), (exited, False)):
            schema = warehouse.existing_schema(dataset, event_table, deadline)
            key = _track_key(schema) if schema is not None else None
            if key is not None:
                tracks.append((event_table, enters, key))
            elif schema is not None:
                keyless.append(event_table)
        if not has_identifies and not tracks and not keyless:
            return "no audience calls in this space yet"
        for kept in (EVENTS, TABLE):
            schema = warehouse.ensure_table(dataset, kept, spec(kept), deadline)
            lacking = {c.name: c.type for c in spec(kept).columns if c.name not in schema}
            if lacking:  # an older layout's table
                warehouse.add_columns(dataset, kept, lacking, deadline)
        discards = warehouse.existing_schema(dataset, DISCARDS, deadline) is not None
        inputs = Inputs(
            warehouse.project,
            dataset,
            has_identifies,
            identifies.get(CLASS_COLUMN, values.STRING),
            identifies.get(KEY_COLUMN, values.STRING),
            (),
            discards,
            tuple(tracks),
        )
        # The frame's window has a lower bound (@since) exactly when there was a previous run.
        recent = _received(context.previous is not None)
        # Event tables with no audience column are read too: their calls are counted as naming none.
        events = [t for t, _, _ in tracks] + keyless
        sources = [Source(t, PROFILE, f"{recent} AND {PROFILE} IS NOT NULL") for t in events]
        if has_identifies:
            where = f"{_classes(inputs.class_kind)} AND {PROFILE} IS NOT NULL"
            sources.insert(0, Source(IDENTIFIES, PROFILE, where))
        view = warehouse.describe(dataset, DAILY, deadline)
        daily = daily_view_query(inputs.project, dataset)

        def finish() -> None:
            if view is None or view.view_query != daily:
                warehouse.put_view(dataset, DAILY, daily, deadline)

        run = _Run(context, inputs, dict(identifies), tuple(keyless))
        return Plan(sources=sources, fold=run.fold, rebuild=run.rebuild, finish=finish, report=run.report)


class _Run:
    """One run's statements. The audiences the window's identify calls name are asked when the first chunk's
    statements are built, over the window itself (so a run with nothing new asks nothing), and the calls
    not read are counted then, into the report the frame writes to the history row."""

    def __init__(self, context: Context, base: Inputs, identifies: dict[str, str], keyless: tuple[str, ...]) -> None:
        self.context, self.base, self.identifies, self.keyless = context, base, identifies, keyless
        self.report: dict[str, Any] = {}
        self.inputs: Inputs | None = None

    def of(self, window: Window) -> Inputs:
        if self.inputs is None:
            found, counts = _discover(self.context, self.base, self.identifies, self.keyless, window)
            self.inputs = replace(self.base, audiences=tuple(found))
            if self.inputs.identifies and self.inputs.audiences:  # values are read from identifies only
                counts |= _count_unread(self.context, self.inputs, window)
            self.report.update({k: v for k, v in counts.items() if v})
        return self.inputs

    def fold(self, keys: Keys, window: Window) -> list[str]:
        inputs = self.of(window)
        return [*events_sql(inputs, keys, window, replace=False), stays_sql(inputs, keys)]

    def rebuild(self, keys: Keys, window: Window) -> list[str]:
        inputs = self.of(window)
        return [*events_sql(inputs, keys, window, replace=True), stays_sql(inputs, keys)]


MEMBERSHIPS = Memberships()


# -- what the space holds ------------------------------------------------------------------------------


def _classes(kind: str = values.STRING) -> str:
    """Identify rows of an audience class (`kind`: the type of identifies' computation class column)."""
    listed = ", ".join(f"'{c}'" for c in AUDIENCE_CLASSES)  # the project's own constants
    return f"{_string(CLASS_COLUMN, kind)} IN ({listed})"


def _string(column: str, kind: str | None) -> str:
    """A column as STRING (a key column someone filled with numbers first is INT64)."""
    return sql.quote(column) if kind == values.STRING else f"CAST({sql.quote(column)} AS STRING)"


def _name(column: str) -> str:
    """A column's name as a string literal: validated as an identifier first, so it needs no escaping."""
    return f"'{sql.quote(column)[1:-1]}'"


def _track_key(schema: dict[str, str]) -> str | None:
    """SQL of a track row's audience: its audience_key property, else the computation key; None when the
    table has neither column (no row of it names an audience)."""
    parts = [_string(c, schema[c]) for c in (AUDIENCE_KEY, KEY_COLUMN) if c in schema]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else f"COALESCE({', '.join(parts)})"


def _received(bounded: bool) -> str:
    """Rows of a table partitioned on received_at that a statement reading rows loaded since @since can
    need (see RECEIVED_BEFORE_LOADED_DAYS); `bounded` False (a full run, no @since): every row."""
    return f"received_at >= TIMESTAMP_SUB(@{SINCE}, INTERVAL {RECEIVED_BEFORE_LOADED_DAYS} DAY)" if bounded else "TRUE"


def _discover(
    context: Context, inputs: Inputs, identifies: dict[str, str], keyless: Sequence[str], window: Window
) -> tuple[list[Audience], dict[str, int]]:
    """The audience keys of the window's identify calls (each with the identifies column its value lands
    in, named as ingest names the trait), and the window's audience calls that name no audience. One query,
    reading the computation columns of identifies and the audience columns of the event tables."""
    project, dataset, bounded = inputs.project, inputs.dataset, window.since is not None
    parts = []
    if inputs.identifies:
        key = _string(KEY_COLUMN, inputs.key_kind)
        parts.append(
            f"SELECT {key} AS audience_key, FARM_FINGERPRINT({key}) AS fingerprint, COUNT(*) AS calls "
            f"FROM {sql.table(project, dataset, IDENTIFIES)} WHERE {_classes(inputs.class_kind)} "
            f"AND {window.rows()} GROUP BY audience_key"
        )
    unnamed_calls = [(t, k) for t, _, k in inputs.tracks] + [(t, "CAST(NULL AS STRING)") for t in keyless]
    for event_table, key in unnamed_calls:
        parts.append(
            f"SELECT CAST(NULL AS STRING) AS audience_key, CAST(NULL AS INT64) AS fingerprint, COUNT(*) AS calls "
            f"FROM {sql.table(project, dataset, event_table)} WHERE {key} IS NULL AND {window.rows()} "
            f"AND {_received(bounded)}"
        )
    rows = context.warehouse.query(" UNION ALL ".join(parts), window.params, context.deadline)
    taken = spec(IDENTIFIES).column_names
    found, unnamed = [], 0
    for row in rows:
        if row["audience_key"] is None:
            unnamed += int(row["calls"] or 0)
            continue
        column = naming.column_name((row["audience_key"],), taken=taken, taken_prefixes=(CONTEXT_PREFIX,))
        found.append(Audience(row["audience_key"], int(row["fingerprint"]), column, identifies.get(column)))
    return sorted(found, key=lambda a: a.key), {NO_KEY: unnamed}


def _count_unread(context: Context, inputs: Inputs, window: Window) -> dict[str, int]:
    """Identify calls of the window whose audience value is not read: present but neither a boolean nor
    "true", or absent. As many queries as the query length needs (one, short of thousands of audiences)."""
    bounded = window.since is not None
    texts = sql.split(lambda group, _: _count_sql(inputs, group, window.rows(), bounded), inputs.audiences)
    counts = {NOT_READ: 0, NO_VALUE: 0}
    for text in texts:
        [row] = context.warehouse.query(text, window.params, context.deadline)
        counts[NOT_READ] += int(row["not_read"] or 0)
        counts[NO_VALUE] += int(row["missing"] or 0)
    return counts


def _count_sql(inputs: Inputs, group: Sequence[Audience], loaded: str, bounded: bool) -> str:
    rows = _identify_rows(inputs, group, "TRUE", loaded, bounded)
    return f"SELECT COUNTIF(_present AND entered IS NULL) AS not_read, COUNTIF(NOT _present) AS missing FROM ({rows})"


# -- SQL -------------------------------------------------------------------------------------------


_EVENT_COLUMNS = ("id", "user_id", "anonymous_id", "audience_key", "timestamp", "entered", "_key")
_ANONYMOUS = "IF(user_id IS NULL, anonymous_id, NULL) AS anonymous_id"  # kept for anonymous-only profiles


def _fingerprint(inputs: Inputs) -> str:
    return f"FARM_FINGERPRINT({_string(KEY_COLUMN, inputs.key_kind)})"


def _read_column(a: Audience) -> str:
    """The membership an identifies column holds: a BOOL as is; in a STRING column "true" and "false"
    (a boolean written into a string column becomes one of them); any other type holds no membership."""
    col = sql.quote(a.column)
    if a.kind == values.BOOL:
        return col
    if a.kind == values.STRING:
        return f"CASE {col} WHEN 'true' THEN TRUE WHEN 'false' THEN FALSE END"
    return "CAST(NULL AS BOOL)"


# A discarded value as sent (JSON text): the booleans, and the string "true".
_READ_DISCARD = "CASE _discard.column_value WHEN 'true' THEN TRUE WHEN 'false' THEN FALSE WHEN '\"true\"' THEN TRUE END"


def _case(of: str, arms: Sequence[tuple[int, str]], otherwise: str) -> str:
    """`of` looked up among `arms` (value, result), else `otherwise` (a CASE needs at least one WHEN)."""
    if not arms:
        return otherwise
    return f"CASE {of}{''.join(f' WHEN {v} THEN {r}' for v, r in arms)} ELSE {otherwise} END"


def _identify_rows(inputs: Inputs, group: Sequence[Audience], where: str, loaded: str, bounded: bool) -> str:
    """Identify rows of the audiences in `group` loaded as `loaded` says (a condition on loaded_at, with
    @since when `bounded`) and matching `where`, each with its membership (`entered`, null when not read)
    and whether it carried a value at all (`_present`)."""
    project, dataset = inputs.project, inputs.dataset
    fingerprint = _fingerprint(inputs)
    column = _case(fingerprint, [(a.fingerprint, _name(a.column)) for a in group], "CAST(NULL AS STRING)")
    value = _case(fingerprint, [(a.fingerprint, _read_column(a)) for a in group], "CAST(NULL AS BOOL)")
    stored = [(a.fingerprint, f"{sql.quote(a.column)} IS NOT NULL") for a in group if a.kind]
    listed = ", ".join(str(a.fingerprint) for a in group) or "0"
    inner = (
        f"SELECT id, user_id, {_ANONYMOUS}, {_string(KEY_COLUMN, inputs.key_kind)} AS audience_key, timestamp, "
        f"{sql.KEY} AS _key, loaded_at, {column} AS _column, {value} AS _value, "
        f"{_case(fingerprint, stored, 'FALSE')} AS _stored "
        f"FROM {sql.table(project, dataset, IDENTIFIES)} "
        f"WHERE {loaded} AND {where} AND {_classes(inputs.class_kind)} AND {fingerprint} IN ({listed}) "
        f"AND {PROFILE} IS NOT NULL"
    )
    if not inputs.discards:
        return (
            f"SELECT id, user_id, anonymous_id, audience_key, timestamp, _value AS entered, _key, "
            f"_stored AS _present FROM ({inner})"
        )
    names = ", ".join(_name(a.column) for a in group) or "''"
    # Values ingest could not store in their column, as sent: the discard of the same copy of the call
    # (ingest stamps a call's rows and its discards with one loaded_at).
    discarded = (
        f"SELECT row_id, column_name, loaded_at, MIN(column_value) AS column_value "
        f"FROM {sql.table(project, dataset, DISCARDS)} WHERE {loaded} AND {_received(bounded)} "
        f"AND table_name = '{IDENTIFIES}' "
        f"AND column_name IN ({names}) GROUP BY row_id, column_name, loaded_at"
    )
    return (
        f"SELECT _call.id, _call.user_id, _call.anonymous_id, _call.audience_key, _call.timestamp, "
        f"COALESCE(_call._value, {_READ_DISCARD}) AS entered, _call._key, "
        f"_call._stored OR _discard.column_value IS NOT NULL AS _present "
        f"FROM ({inner}) AS _call LEFT JOIN ({discarded}) AS _discard "
        f"ON _discard.row_id = _call.id AND _discard.column_name = _call._column "
        f"AND _discard.loaded_at = _call.loaded_at"
    )


def _track_rows(inputs: Inputs, event_table: str, enters: bool, key: str, where: str) -> str:
    return (
        f"SELECT id, user_id, {_ANONYMOUS}, {key} AS audience_key, timestamp, {'TRUE' if enters else 'FALSE'} "
        f"AS entered, {sql.KEY} AS _key FROM {sql.table(inputs.project, inputs.dataset, event_table)} "
        f"WHERE {where} AND {key} IS NOT NULL AND {PROFILE} IS NOT NULL"
    )


def _window_events(inputs: Inputs, group: Sequence[Audience], index: int, keys: Keys, window: Window) -> str:
    """The distinct events of the window for the profiles in `keys`: identify calls of the audiences in
    `group`, and (in the first statement) the track calls. One row per message id, audience and profile:
    of copies that differ, the first by (order key, exit before entry)."""
    bounded = window.since is not None
    where = f"{window.rows()} AND {_received(bounded)} AND {keys.rows(PROFILE)}"
    parts = []
    if inputs.identifies and group:
        identify = _identify_rows(inputs, group, keys.rows(PROFILE), window.rows(), bounded)
        parts.append(f"SELECT {', '.join(_EVENT_COLUMNS)} FROM ({identify}) WHERE entered IS NOT NULL")
    if index == 0:
        parts.extend(_track_rows(inputs, t, enters, key, where) for t, enters, key in inputs.tracks)
    if not parts:  # nothing to read: an empty source of the same shape
        events = sql.table(inputs.project, inputs.dataset, EVENTS)
        parts.append(f"SELECT {', '.join(_EVENT_COLUMNS)} FROM {events} WHERE FALSE")
    union = " UNION ALL ".join(parts)
    return (
        f"SELECT {', '.join(_EVENT_COLUMNS)} FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY id, audience_key, "
        f"user_id, anonymous_id ORDER BY _key, entered) AS _copy FROM ({union})) WHERE _copy = 1"
    )


_SAME_EVENT = (
    "_old.id = _new.id AND _old.audience_key = _new.audience_key AND _old.user_id IS NOT DISTINCT FROM "
    "_new.user_id AND _old.anonymous_id IS NOT DISTINCT FROM _new.anonymous_id"
)


def _insert_event(keys: Keys) -> str:
    columns = ", ".join(_EVENT_COLUMNS)
    return (
        f"WHEN NOT MATCHED THEN INSERT ({columns}, {sql.quote(sql.BUCKET)}) "
        f"VALUES ({', '.join(f'_new.{c}' for c in _EVENT_COLUMNS)}, {keys.bucket(NEW_PROFILE)})"
    )


def events_sql(inputs: Inputs, keys: Keys, window: Window, *, replace: bool) -> list[str]:
    """Fold the window's events of the profiles in `keys` into audience_events: a set keyed by message id,
    audience and profile, with the first copy kept (an update only to a copy that comes first), so any rows
    in any order any number of times give the same table. `replace` (a full run): the first statement
    makes the partitions hold exactly what it reads, so events gone from history are gone."""
    table = sql.table(inputs.project, inputs.dataset, EVENTS)
    partitions = keys.partitions("_old")

    def build(group: Sequence[Audience], index: int) -> str:
        source = _window_events(inputs, group, index, keys, window)
        if replace and index == 0:
            return (
                f"MERGE {table} AS _old\nUSING ({source}) AS _new\nON FALSE\n"
                f"WHEN NOT MATCHED BY SOURCE AND {partitions} THEN DELETE\n{_insert_event(keys)}"
            )
        first = "_new._key < _old._key OR (_new._key = _old._key AND _old.entered AND NOT _new.entered)"
        return (
            f"MERGE {table} AS _old\nUSING ({source}) AS _new\nON {_SAME_EVENT} AND {partitions}\n"
            f"WHEN MATCHED AND {partitions} AND ({first}) THEN UPDATE SET timestamp = _new.timestamp, "
            f"_key = _new._key, entered = _new.entered\n{_insert_event(keys)}"
        )

    return sql.split(build, inputs.audiences if inputs.identifies else ())


_STAY_COLUMNS = (
    "user_id",
    "anonymous_id",
    "audience_key",
    "entered_at",
    "exited_at",
    "entered_message_id",
    "exited_message_id",
)
_PAIR = "WINDOW _pair AS (PARTITION BY user_id, anonymous_id, audience_key ORDER BY _key)"


def stays_sql(inputs: Inputs, keys: Keys) -> str:
    """Make audience_memberships hold, for every profile in `keys`, the stays audience_events says: events
    that change nothing (an entry while in, an exit while out) dropped, each entry opens a stay that the
    next event closes, and an exit with nothing before it is a stay with no entry. Stays are matched by
    the message that opened them (or, with no entry, closed them): only changed stays are written."""
    table = sql.table(inputs.project, inputs.dataset, TABLE)
    events = sql.table(inputs.project, inputs.dataset, EVENTS)
    partitions = keys.partitions("_old")
    changes = (
        f"SELECT {', '.join(_EVENT_COLUMNS)}, LAG(entered) OVER _pair AS _before "
        f"FROM {events} AS _event WHERE {keys.partitions('_event')} {_PAIR}"
    )
    effective = (
        f"SELECT *, LAG(entered) OVER _pair AS _prev, LEAD(timestamp) OVER _pair AS _next_at, "
        f"LEAD(id) OVER _pair AS _next_id FROM ({changes}) WHERE _before IS NULL OR _before != entered {_PAIR}"
    )
    source = (
        f"SELECT user_id, anonymous_id, audience_key, IF(entered, timestamp, NULL) AS entered_at, "
        f"IF(entered, _next_at, timestamp) AS exited_at, IF(entered, id, NULL) AS entered_message_id, "
        f"IF(entered, _next_id, id) AS exited_message_id FROM ({effective}) WHERE entered OR _prev IS NULL"
    )
    same = (
        "_old.audience_key = _new.audience_key AND _old.user_id IS NOT DISTINCT FROM _new.user_id "
        "AND _old.anonymous_id IS NOT DISTINCT FROM _new.anonymous_id "
        "AND COALESCE(_old.entered_message_id, _old.exited_message_id) "
        "= COALESCE(_new.entered_message_id, _new.exited_message_id)"
    )
    changed = " OR ".join(
        f"_old.{c} IS DISTINCT FROM _new.{c}" for c in ("entered_at", "exited_at", "exited_message_id")
    )
    sets = ", ".join(f"{c} = _new.{c}" for c in ("entered_at", "exited_at", "exited_message_id"))
    columns = ", ".join(_STAY_COLUMNS)
    bucket = keys.bucket(NEW_PROFILE)
    return (
        f"MERGE {table} AS _old\nUSING ({source}) AS _new\nON {same} AND {partitions}\n"
        f"WHEN MATCHED AND {partitions} AND ({changed}) THEN UPDATE SET {sets}\n"
        f"WHEN NOT MATCHED BY TARGET THEN INSERT ({columns}, {sql.quote(sql.BUCKET)}) "
        f"VALUES ({', '.join(f'_new.{c}' for c in _STAY_COLUMNS)}, {bucket})\n"
        f"WHEN NOT MATCHED BY SOURCE AND {partitions} THEN DELETE"
    )


def daily_view_query(project: str, dataset: str) -> str:
    """`audience_daily`: per audience and UTC day from its first event to today, the members at the end of
    the day, the stays entered and the stays exited that day. A stay with no entry counts as a member
    from the audience's first day until its exit (it was in before it exited; since when is unknown)."""
    stays = sql.table(project, dataset, TABLE)
    return (
        "SELECT day, audience_key, "
        "unknown_entries + SUM(entries - exits) OVER (PARTITION BY audience_key ORDER BY day) AS members, "
        "entries, exits FROM ("
        "SELECT span.audience_key, _day AS day, span.unknown_entries, "
        "IFNULL(_in.n, 0) AS entries, IFNULL(_out.n, 0) AS exits FROM ("
        "SELECT audience_key, MIN(DATE(COALESCE(entered_at, exited_at))) AS first_day, "
        "MAX(DATE(COALESCE(exited_at, entered_at))) AS last_day, COUNTIF(entered_at IS NULL) AS unknown_entries "
        f"FROM {stays} GROUP BY audience_key) AS span "
        "CROSS JOIN UNNEST(GENERATE_DATE_ARRAY(span.first_day, GREATEST(span.last_day, CURRENT_DATE()))) AS _day "
        "LEFT JOIN (SELECT audience_key, DATE(entered_at) AS day, COUNT(*) AS n "
        f"FROM {stays} WHERE entered_at IS NOT NULL GROUP BY audience_key, day) AS _in "
        "ON _in.audience_key = span.audience_key AND _in.day = _day "
        "LEFT JOIN (SELECT audience_key, DATE(exited_at) AS day, COUNT(*) AS n "
        f"FROM {stays} WHERE exited_at IS NOT NULL GROUP BY audience_key, day) AS _out "
        "ON _out.audience_key = span.audience_key AND _out.day = _day)"
    )
