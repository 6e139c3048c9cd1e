"""`identities`: one row per profile and identifier, with when it was first and last seen and how many
calls carried it. docs/identities.md is the user's page; this is the rule and how it is kept.

The rule (tests/identities_oracle.py restates it in Python):
- A call's profile is its userId, else its anonymousId (no merge of an anonymous profile into a user's:
  a statement writes only its own chunk's partitions, and a merge would move rows between chunks). The
  anonymousId of a call that has both is an identifier of the user's profile, so pre-login devices are
  found from the user (docs/identities.md has the query).
- A call's identifiers (`Identifier.rule`): userId, anonymousId, traits.email (identify) and
  context.traits.email, the mobile ids Segment promotes from context.device (ios.id / android.id from
  `id`, ios.idfa / android.idfa from `advertisingId` when `adTrackingEnabled` is true, ios.push_token /
  android.push_token from `token`, by `type`), and the first MAX_EXTERNAL_IDS entries of
  context.externalIds that have a string `id` and `type` (`collection` and `encoding` kept, 'users' and
  'none' when absent). Empty values are no identifiers; values (or types, collections, encodings) over
  MAX_IDENTIFIER_CHARS are left out. What is left out of a call is counted in the run's history row.
- Per profile and identifier (type, value, collection, encoding): first_seen_at and last_seen_at, the
  earliest and latest `timestamp` of the calls carrying it; `calls`, how many distinct messageIds did.

Kept as `identities_state`, partitioned like every derived table by a hash of its key (the profile),
with two kinds of rows: identifier rows (what `identities`, a view, shows) and one message row per
profile and messageId folded (`_message`, with the profile's user_id or anonymous_id, so that forgetting a
user deletes them too; every other column NULL, so they cost analysts nothing).
The message rows make the fold exactly once: one MERGE per chunk counts only the window's calls that
have no message row yet and inserts their message rows, atomically, so a row read again (the window's
overlap, a failed run's chunks, a redelivered or replayed copy loaded days later) is never counted
twice, and first/last seen are MIN/MAX. Copies of a messageId are one call and carry its identifiers
(what Pub/Sub redelivery and replays give); two different calls sent with one messageId count once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from personas_warehouse import naming, values
from personas_warehouse.bigquery import Schema
from personas_warehouse.derived.frame import Context, Keys, Plan, Source, Window, existing_view
from personas_warehouse.shaping import TRACKS
from personas_warehouse.sql import BUCKET, IDENTIFIES, quote, table
from schemas.tables import spec

NAME, TABLE = "identities", "identities_state"
LAYOUT = 1
SOURCES = (IDENTIFIES, TRACKS)  # a track call carries context too; its traits and properties are not read
MAX_EXTERNAL_IDS = 100  # entries of one call's context.externalIds read; the rest are counted, not kept
MAX_IDENTIFIER_CHARS = 1024  # as messageId, userId and anonymousId (schemas/calls.py MAX_ID_LENGTH)
USERS_COLLECTION, NO_ENCODING = "users", "none"  # Segment's values for a user-level identifier
MOBILE = ("ios", "android")  # context.device.type values Segment promotes identifiers for

# The profile of a call: an expression over a source row, and the frame's key. Prefixed, so a userId and
# an anonymousId that are the same text are two profiles.
PROFILE = "IF(user_id IS NULL, CONCAT('a:', anonymous_id), CONCAT('u:', user_id))"

# Report counts (frame.Source.counts): what the window held that identities left out.
NOT_A_LIST = "external_ids_not_a_list"
INVALID_ENTRIES = "external_id_entries_invalid"
OVER_LIMIT = "external_id_entries_over_limit"
TOO_LONG = "identifiers_too_long"

# Columns read, named by the naming rule (a trait column of identifies; context columns keep `context_`).
EMAIL_TRAIT = naming.column_name(("email",), taken=spec(IDENTIFIES).column_names, taken_prefixes=("context_",))
CONTEXT_EMAIL = naming.column_name(("context", "traits", "email"))
DEVICE_TYPE = naming.column_name(("context", "device", "type"))
DEVICE_ID = naming.column_name(("context", "device", "id"))
ADVERTISING_ID = naming.column_name(("context", "device", "advertisingId"))
AD_TRACKING = naming.column_name(("context", "device", "adTrackingEnabled"))
PUSH_TOKEN = naming.column_name(("context", "device", "token"))
EXTERNAL_IDS = naming.column_name(("context", "externalIds"))
MAX_OBJECT_COLUMNS = 50  # context_external_ids_* columns (externalIds sent as an object) looked at

# The kept table's columns, and those `identities` shows.
SHOWN = ("user_id", "anonymous_id", "type", "value", "collection", "encoding", "first_seen_at", "last_seen_at", "calls")
HIDDEN = ("_profile", "_message", BUCKET)
IDENTIFIER_KEY = ("_profile", "type", "value", "collection", "encoding")


@dataclass(frozen=True)
class Identifier:
    """One place a call carries an identifier: its type and value as SQL expressions over the call's
    columns as `reading` names them (the value NULL when this call has none there). `rule` says where."""

    type: str
    value: str
    rule: str


@dataclass(frozen=True)
class Reading:
    """How one source table is read: per column identities needs, an expression giving it in one type
    (text, the device type in lower case, a flag), a typed NULL when the table has no such column; the
    columns it cannot read (another type: the run is then partial); and context_external_ids_* columns
    (externalIds sent as an object, flattened by ingest: counted as not a list)."""

    columns: dict[str, str]
    unreadable: list[str]
    object_columns: list[str]


# How a column of each type is read (None: not at all). A device id sent as a number first made an INT64
# column: its values are the digits, as text. Other types cannot hold an identifier's text.
_AS_TEXT = {values.STRING: "{}", values.INT64: "CAST({} AS STRING)"}
_WANTED: dict[str, tuple[dict[str, str], str]] = {
    EMAIL_TRAIT: (_AS_TEXT, "STRING"),
    CONTEXT_EMAIL: (_AS_TEXT, "STRING"),
    DEVICE_TYPE: ({values.STRING: "LOWER({})"}, "STRING"),
    DEVICE_ID: (_AS_TEXT, "STRING"),
    ADVERTISING_ID: (_AS_TEXT, "STRING"),
    AD_TRACKING: ({values.BOOL: "{}", values.STRING: "LOWER({}) = 'true'"}, "BOOL"),
    PUSH_TOKEN: (_AS_TEXT, "STRING"),
    EXTERNAL_IDS: ({values.STRING: "{}"}, "STRING"),
}
READ = tuple(_WANTED)  # the columns a call is read from, besides user_id and anonymous_id


def reading(source: str, schema: Mapping[str, str]) -> Reading:
    """The expressions that read identities' columns from `source` (identifies or tracks), by their types.
    tracks has no email trait column: a track call's traits are in its event's own table."""
    columns, unreadable = {}, []
    for column, (forms, kind) in _WANTED.items():
        found = schema.get(column) if (source == IDENTIFIES or column != EMAIL_TRAIT) else None
        form = forms.get(found) if found else None
        if found and form is None:
            unreadable.append(f"{source}.{column} ({found})")
        columns[column] = form.format(quote(column)) if form else f"CAST(NULL AS {kind})"
    objects = sorted(c for c in schema if c.startswith(EXTERNAL_IDS + "_"))[:MAX_OBJECT_COLUMNS]
    return Reading(columns, unreadable, objects)


def identifiers(read: Mapping[str, str]) -> list[Identifier]:
    """The identifiers a call carries outside context.externalIds, over its columns (`read`)."""
    device = read[DEVICE_TYPE]
    mobile = f"{device} IN ({', '.join(repr(m) for m in MOBILE)})"
    when_tracking = f"IFNULL({read[AD_TRACKING]}, FALSE)"

    def on_device(suffix: str, column: str, key: str, when: str = "") -> Identifier:
        rule = f"context.device.{key} when context.device.type is ios or android"
        if when:
            return Identifier(
                f"CONCAT({device}, '.{suffix}')",
                f"IF({mobile} AND {when}, {read[column]}, NULL)",
                f"{rule} and context.device.adTrackingEnabled is true",
            )
        return Identifier(f"CONCAT({device}, '.{suffix}')", f"IF({mobile}, {read[column]}, NULL)", rule)

    return [
        Identifier("'user_id'", "user_id", "userId"),
        Identifier("'anonymous_id'", "anonymous_id", "anonymousId"),
        Identifier("'email'", read[EMAIL_TRAIT], "traits.email (identify)"),
        Identifier("'email'", read[CONTEXT_EMAIL], "context.traits.email"),
        on_device("id", DEVICE_ID, "id"),
        on_device("idfa", ADVERTISING_ID, "advertisingId", when_tracking),
        on_device("push_token", PUSH_TOKEN, "token"),
    ]


# -- context.externalIds --------------------------------------------------------------------------
# Ingest stores a list as JSON text in its column (a string sent there is stored as is). Entries are read
# with BigQuery's JSON functions on that text; SAFE. makes text that is not JSON give NULL, never an error.


def _list(text: str) -> str:
    """The entries of externalIds (JSON text of each), or NULL when it is not a JSON list."""
    return f"SAFE.JSON_QUERY_ARRAY(IF(STARTS_WITH({text}, '['), {text}, NULL))"


def _string(key: str) -> str:
    """`key` of the entry `_e` when it is a JSON string (JSON_QUERY keeps a string's quotes), else NULL."""
    path = f"'$.{key}'"
    return f"IF(STARTS_WITH(JSON_QUERY(_e, {path}), '\"'), JSON_VALUE(_e, {path}), NULL)"


def _entries(text: str) -> str:
    """The first MAX_EXTERNAL_IDS entries of externalIds `text`: type and value (NULL unless strings),
    collection and encoding ('users' and 'none' unless strings)."""
    return (
        f"SELECT {_string('type')} AS type, {_string('id')} AS value, "
        f"IFNULL({_string('collection')}, '{USERS_COLLECTION}') AS collection, "
        f"IFNULL({_string('encoding')}, '{NO_ENCODING}') AS encoding "
        f"FROM UNNEST({_list(text)}) AS _e WITH OFFSET AS _n WHERE _n < {MAX_EXTERNAL_IDS}"
    )


PRESENT = "IFNULL(type != '' AND value != '', FALSE)"  # an identifier: a non-empty type and value


def _fits(*texts: str) -> str:
    return " AND ".join(f"IFNULL(LENGTH({t}), 0) <= {MAX_IDENTIFIER_CHARS}" for t in texts)


FITS = _fits("type", "value", "collection", "encoding")


def external_identifiers(text: str) -> str:
    """ARRAY<STRUCT<type, value, collection, encoding>>: the identifiers in externalIds `text`."""
    fields = "type, value, collection, encoding"
    return f"ARRAY(SELECT AS STRUCT {fields} FROM ({_entries(text)}) WHERE {PRESENT} AND {FITS})"


def counts(read: Reading) -> tuple[tuple[str, str], ...]:
    """What a source row carries that identities leaves out, for the report (frame.Source.counts)."""
    text = read.columns[EXTERNAL_IDS]
    objects = "".join(f" OR {quote(c)} IS NOT NULL" for c in read.object_columns)
    fixed = [i.value for i in identifiers(read.columns) if i.value not in ("user_id", "anonymous_id")]  # bounded
    long_fixed = " + ".join(f"IF(LENGTH({v}) > {MAX_IDENTIFIER_CHARS}, 1, 0)" for v in fixed)
    entries = f"FROM ({_entries(text)})"
    return (
        (NOT_A_LIST, f"IF(({text} IS NOT NULL AND {_list(text)} IS NULL){objects}, 1, 0)"),
        (INVALID_ENTRIES, f"(SELECT COUNTIF(NOT {PRESENT}) {entries})"),
        (OVER_LIMIT, f"GREATEST(IFNULL(ARRAY_LENGTH({_list(text)}), 0) - {MAX_EXTERNAL_IDS}, 0)"),
        (TOO_LONG, f"{long_fixed} + (SELECT COUNTIF({PRESENT} AND NOT ({FITS})) {entries})"),
    )


# -- SQL -------------------------------------------------------------------------------------------

CALLS_WHERE = "user_id IS NOT NULL OR anonymous_id IS NOT NULL"  # every call has one (schemas/calls.py)
_NAMED = {c: quote(c) for c in READ}  # the columns under their own names, once each source is read


def _carried() -> str:
    """ARRAY<STRUCT<type, value, collection, encoding>>: every identifier a call carries (some NULL)."""
    fixed = [
        f"STRUCT({i.type} AS type, {i.value} AS value, '{USERS_COLLECTION}' AS collection, '{NO_ENCODING}' AS encoding)"
        for i in identifiers(_NAMED)
    ]
    return f"ARRAY_CONCAT([{', '.join(fixed)}], {external_identifiers(_NAMED[EXTERNAL_IDS])})"


def _calls(project: str, dataset: str, reads: Mapping[str, Reading], keys: Keys, window: Window) -> str:
    """The window's calls of the profiles in `keys`, from every source: each with its profile and the
    identifiers it carries. Only the columns needed are named: BigQuery bills the columns it reads."""
    parts = [
        f"SELECT id AS _message, timestamp AS _at, user_id, anonymous_id, {PROFILE} AS _profile, "
        + ", ".join(f"{read.columns[c]} AS {_NAMED[c]}" for c in READ)
        + f" FROM {table(project, dataset, source)} WHERE ({CALLS_WHERE}) AND {window.rows()}"
        for source, read in reads.items()
    ]
    return (
        f"SELECT _message, _at, user_id AS _user, IF(user_id IS NULL, anonymous_id, NULL) AS _anonymous, _profile, "
        f"{_carried()} AS _carried FROM ({' UNION ALL '.join(parts)}) WHERE {keys.rows('_profile')}"
    )


def _identified(calls: str) -> str:
    """One row per call (`calls`: a table name or a parenthesized query) and identifier it carries (empty
    and overlong values are none)."""
    present = "i.type IS NOT NULL AND i.value IS NOT NULL AND i.type != '' AND i.value != ''"
    kept = f"{present} AND {_fits('i.type', 'i.value')}"  # the external ones were checked whole
    return (
        f"SELECT c._profile, c._user, c._anonymous, c._message, c._at, i.type, i.value, i.collection, i.encoding "
        f"FROM {calls} AS c, UNNEST(c._carried) AS i WHERE {kept}"
    )


_GROUP = "_profile, _user, _anonymous, type, value, collection, encoding"
_COLUMNS = (*SHOWN, "_profile", "_message")


def _message_rows(calls: str) -> str:
    """A message row per (profile, messageId) of `calls`: it names the profile's user or anonymous id (what
    forget deletes by, tables.json), the rest NULL."""
    nulls = ", ".join(f"NULL AS {c}" for c in SHOWN if c not in ("user_id", "anonymous_id"))
    return f"SELECT _user AS user_id, _anonymous AS anonymous_id, {nulls}, _profile, _message FROM {calls}"


def _identifier_rows(identified: str, counted: str) -> str:
    return (
        f"SELECT _user AS user_id, _anonymous AS anonymous_id, type, value, collection, encoding, "
        f"MIN(_at) AS first_seen_at, MAX(_at) AS last_seen_at, COUNT(DISTINCT {counted}) AS calls, _profile, "
        f"CAST(NULL AS STRING) AS _message FROM {identified} GROUP BY {_GROUP}"
    )


def _insert(keys: Keys) -> str:
    names = ", ".join(quote(c) for c in _COLUMNS)
    return (
        f"WHEN NOT MATCHED THEN INSERT ({names}, {quote(BUCKET)}) "
        f"VALUES ({', '.join(f'_new.{quote(c)}' for c in _COLUMNS)}, {keys.bucket('_new._profile')})"
    )


def fold_sql(project: str, dataset: str, reads: Mapping[str, Reading], keys: Keys, window: Window) -> str:
    """Fold the window's calls of the profiles in `keys` into identities_state, exactly once: calls with a
    message row are not counted again; the new ones get theirs in the same statement."""
    state = table(project, dataset, TABLE)
    partitions = keys.partitions("_old")
    folded = f"SELECT _profile, _message FROM {state} AS _s WHERE {keys.partitions('_s')} AND _s._message IS NOT NULL"
    source = (
        f"WITH _calls AS ({_calls(project, dataset, reads, keys, window)}), "
        f"_fresh AS (SELECT DISTINCT c._profile, c._user, c._anonymous, c._message "
        f"FROM _calls AS c LEFT JOIN ({folded}) AS f "
        f"ON f._profile = c._profile AND f._message = c._message WHERE f._message IS NULL), "
        f"_identified AS (SELECT k.*, f._message AS _counted FROM ({_identified('_calls')}) AS k LEFT JOIN _fresh AS f "
        f"ON f._profile = k._profile AND f._message = k._message) "
        f"{_identifier_rows('_identified', '_counted')} UNION ALL {_message_rows('_fresh')}"
    )
    same = " AND ".join(f"_old.{quote(c)} = _new.{quote(c)}" for c in IDENTIFIER_KEY)
    changed = "_new.calls > 0 OR _new.first_seen_at < _old.first_seen_at OR _new.last_seen_at > _old.last_seen_at"
    return (
        f"MERGE {state} AS _old\n"
        f"USING ({source}) AS _new\n"
        f"ON {same} AND {partitions}\n"
        f"WHEN MATCHED AND {partitions} AND ({changed}) THEN UPDATE SET calls = _old.calls + _new.calls, "
        f"first_seen_at = LEAST(_old.first_seen_at, _new.first_seen_at), "
        f"last_seen_at = GREATEST(_old.last_seen_at, _new.last_seen_at)\n"
        f"{_insert(keys)}"
    )


def rebuild_sql(project: str, dataset: str, reads: Mapping[str, Reading], keys: Keys, window: Window) -> str:
    """The profiles in `keys` as the whole history up to the window's end says: every row of those
    partitions replaced (ON FALSE), so profiles with no call left are gone."""
    state = table(project, dataset, TABLE)
    calls = _calls(project, dataset, reads, keys, window)
    source = (
        f"WITH _calls AS ({calls}), _identified AS ({_identified('_calls')}) "
        f"{_identifier_rows('_identified', '_message')} UNION ALL "
        f"{_message_rows('(SELECT DISTINCT _profile, _user, _anonymous, _message FROM _calls)')}"
    )
    return (
        f"MERGE {state} AS _old\n"
        f"USING ({source}) AS _new\n"
        f"ON FALSE\n"
        f"WHEN NOT MATCHED BY SOURCE AND {keys.partitions('_old')} THEN DELETE\n"
        f"{_insert(keys)}"
    )


def identities_view_query(project: str, dataset: str) -> str:
    """`identities`: the identifier rows of identities_state (message rows have no type)."""
    shown = ", ".join(quote(c) for c in SHOWN)
    return f"SELECT {shown} FROM {table(project, dataset, TABLE)} WHERE type IS NOT NULL"


# -- the module ------------------------------------------------------------------------------------


class Identities:
    name, table, layout = NAME, TABLE, LAYOUT

    def plan(self, context: Context) -> Plan | str:
        warehouse, dataset, deadline = context.warehouse, context.dataset, context.deadline
        schemas: dict[str, Schema | None] = {s: warehouse.existing_schema(dataset, s, deadline) for s in SOURCES}
        reads = {s: reading(s, schema) for s, schema in schemas.items() if schema is not None}
        if not reads:
            return "no identifies or tracks table yet"
        view = existing_view(warehouse, dataset, NAME, TABLE, deadline)
        warehouse.ensure_table(dataset, TABLE, spec(TABLE), deadline)
        project = warehouse.project
        query = identities_view_query(project, dataset)

        def finish() -> None:
            if view is None or view.view_query != query:
                warehouse.put_view(dataset, NAME, query, deadline)

        unreadable = [column for read in reads.values() for column in read.unreadable]
        partial = (
            f"{NAME} cannot read identifiers from columns of these types, and left them out: {unreadable}"
            if unreadable
            else None
        )
        return Plan(
            sources=[Source(s, PROFILE, CALLS_WHERE, counts(read)) for s, read in reads.items()],
            fold=lambda keys, window: [fold_sql(project, dataset, reads, keys, window)],
            rebuild=lambda keys, window: [rebuild_sql(project, dataset, reads, keys, window)],
            finish=finish,
            partial=partial,
        )


IDENTITIES = Identities()
