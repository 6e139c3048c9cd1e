"""The one naming rule: every dataset, table and column name this project makes comes from here.

Keys are snake-cased the way Segment's loader does (segmentio/go-snakecase): camelCase splits, lower
case, runs of anything but a-z0-9 collapse to one `_`, leading and trailing `_` go. Then the result is
made a legal, unambiguous BigQuery name: a leading digit gets a `_` prefix, a name a table already
uses for a base column (or a reserved prefix) gets a `_` prefix, a name with no letters or digits
left becomes `_` plus a hash of the key, a key whose letters have no ASCII form gets its hash
appended (two Cyrillic keys ending in 1 must not both be `_1`), and names over the length limit are cut and
suffixed with a hash of the full name so two long names never share a column.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache

MAX_COLUMN_LENGTH = 300
MAX_TABLE_LENGTH = 1024
# BigQuery refuses column names starting with these (case-insensitive).
BIGQUERY_RESERVED_PREFIXES = ("_table_", "_file_", "_partition", "_row_timestamp", "__root__", "_colon_")
SPACE_PREFIX = "personas_"
VIEW_SUFFIX = "_view"  # <table>_view: the table with one row per id
ASOF_PREFIX = "_asof_"  # users_state: per users column, the order key of the call its value came from
SPACE_SLUG = re.compile(r"^[a-z0-9][a-z0-9_]{0,99}\Z")
SPACE_SLUG_RULE = "Not a safe space slug: 1 to 100 of a-z, 0-9 and _, not starting with _."
DATASET_NAME = re.compile(r"^[A-Za-z0-9_]{1,1024}\Z")
_ACRONYM_THEN_WORD = re.compile(r"([A-Z]+)([A-Z][a-z])")
_LOWER_THEN_UPPER = re.compile(r"([a-z0-9])([A-Z])")
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")
_HASH_LENGTH = 8


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LENGTH]


def snake_case(key: str) -> str:
    """go-snakecase: `totalRevenue180Days` -> `total_revenue180_days`, `Audience Entered` -> `audience_entered`."""
    ascii_text = unicodedata.normalize("NFKD", key).encode("ascii", "ignore").decode("ascii")
    split = _LOWER_THEN_UPPER.sub(r"\1_\2", _ACRONYM_THEN_WORD.sub(r"\1_\2", ascii_text))
    return _NOT_ALNUM.sub("_", split.lower()).strip("_")


@lru_cache(maxsize=65_536)  # Personas repeats the same keys in every call: name each once per instance
def safe_name(
    path: tuple[str, ...],
    *,
    taken: frozenset[str] = frozenset(),
    taken_prefixes: tuple[str, ...] = (),
    max_length: int = MAX_COLUMN_LENGTH,
) -> str:
    """Name for a key path (nested keys are joined with `_`).

    `taken` are names the table reserves for its base columns and `taken_prefixes` whole families of
    them (`context_` for trait columns): a key landing there gets a `_` prefix instead.
    """
    key_hash = _digest("\x1f".join(path))
    name = "_".join(p for p in (snake_case(part) for part in path) if p)
    if not name:
        name = "_" + key_hash
    elif _lost_letters(path):
        name = f"{name}_{key_hash}"
    if name[0].isdigit():
        name = "_" + name
    while name in taken or name.startswith(taken_prefixes) or name.startswith(BIGQUERY_RESERVED_PREFIXES):
        name = "_" + name
    if len(name) > max_length:
        name = f"{name[: max_length - _HASH_LENGTH - 1].rstrip('_')}_{_digest(name)}"
    return name


def _lost_letters(parts: tuple[str, ...]) -> bool:
    """True when a letter or digit has no ASCII form (Cyrillic, CJK): without the key hash such keys
    could share one column."""
    return any(
        ch.isalnum() and not unicodedata.normalize("NFKD", ch).encode("ascii", "ignore")
        for part in parts
        for ch in part
        if not ch.isascii()
    )


def column_name(
    path: tuple[str, ...], *, taken: frozenset[str] = frozenset(), taken_prefixes: tuple[str, ...] = ()
) -> str:
    return safe_name(path, taken=taken, taken_prefixes=taken_prefixes, max_length=MAX_COLUMN_LENGTH)


def event_table_name(event: str, *, taken: frozenset[str]) -> str:
    """Table of a track event: "Audience Entered" -> `audience_entered`; `taken` holds the fixed tables.
    A name ending in `_view` gets a `_` prefix (`tracks_view` is the view of `tracks`), and names
    leave room for the view suffix."""
    name = safe_name((event,), taken=taken, max_length=MAX_TABLE_LENGTH - len(VIEW_SUFFIX))
    return "_" + name if name.endswith(VIEW_SUFFIX) else name


def view_name(table: str) -> str:
    return table + VIEW_SUFFIX


def asof_column(column: str) -> str:
    """The hidden as-of column users_state keeps beside a users column. A hash, so that every
    300-character name has one; trait names never start with `_asof_` (the rule strips leading `_`)."""
    return ASOF_PREFIX + hashlib.sha256(column.encode("utf-8")).hexdigest()[:16]


@lru_cache(maxsize=1024)  # asked once per call, of the few slugs a deployment has
def is_space_slug(slug: str) -> bool:
    return bool(SPACE_SLUG.match(slug))


def space_dataset(slug: str) -> str:
    """`personas_<slug>`; the caller has checked the slug (a bad one must be rejected, never used)."""
    if not is_space_slug(slug):
        raise ValueError(f"{slug!r}: {SPACE_SLUG_RULE}")
    return SPACE_PREFIX + slug


def is_space_dataset(dataset: str) -> bool:
    return dataset.startswith(SPACE_PREFIX) and is_space_slug(dataset[len(SPACE_PREFIX) :])


def space_of_dataset(dataset: str) -> str:
    return dataset[len(SPACE_PREFIX) :]
