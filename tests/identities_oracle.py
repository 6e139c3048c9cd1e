"""`identities` by its definition (derived/identities.py, docs/identities.md), from the calls as sent: the
oracle the integration tests hold the sync's SQL to. It reads calls the way ingest stores them only as far
as the tests' calls need (string identifiers; no two keys of one object that name one column)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from personas_warehouse.derived.identities import (
    INVALID_ENTRIES,
    MAX_EXTERNAL_IDS,
    MAX_IDENTIFIER_CHARS,
    MOBILE,
    NO_ENCODING,
    NOT_A_LIST,
    OVER_LIMIT,
    TOO_LONG,
    USERS_COLLECTION,
)

Key = tuple[str | None, str | None, str, str, str, str]  # user_id, anonymous_id, type, value, collection, encoding


@dataclass
class Seen:
    first_seen_at: datetime
    last_seen_at: datetime
    messages: set[str]

    @property
    def calls(self) -> int:
        return len(self.messages)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _fits(*texts: str) -> bool:
    return all(len(t) <= MAX_IDENTIFIER_CHARS for t in texts)


def carried(call: Mapping[str, Any]) -> tuple[list[tuple[str, str, str, str]], Counter[str]]:
    """The identifiers one call carries (type, value, collection, encoding), and what it leaves out."""
    left_out: Counter[str] = Counter()
    found: list[tuple[str, str, str, str]] = []

    def add(kind: str, value: Any, collection: str = USERS_COLLECTION, encoding: str = NO_ENCODING) -> None:
        text = _text(value)
        if text is None:
            return
        if not _fits(kind, text, collection, encoding):
            left_out[TOO_LONG] += 1
            return
        found.append((kind, text, collection, encoding))

    add("user_id", call.get("userId"))
    add("anonymous_id", call.get("anonymousId"))
    traits = call.get("traits") or {}
    context = call.get("context") or {}
    if call["type"] == "identify" and isinstance(traits, dict):
        add("email", traits.get("email"))
    context_traits = context.get("traits")
    if isinstance(context_traits, dict):
        add("email", context_traits.get("email"))
    device = context.get("device")
    if isinstance(device, dict) and isinstance(device.get("type"), str) and device["type"].lower() in MOBILE:
        platform = device["type"].lower()
        add(f"{platform}.id", device.get("id"))
        if device.get("adTrackingEnabled") is True:
            add(f"{platform}.idfa", device.get("advertisingId"))
        add(f"{platform}.push_token", device.get("token"))
    entries = context.get("externalIds")
    flattened = isinstance(entries, dict) and any(v is not None for v in entries.values())  # context_external_ids_*
    if flattened or (entries is not None and not isinstance(entries, (list, dict))):
        left_out[NOT_A_LIST] += 1
    if isinstance(entries, list):
        left_out[OVER_LIMIT] += max(len(entries) - MAX_EXTERNAL_IDS, 0)
        for entry in entries[:MAX_EXTERNAL_IDS]:
            fields = entry if isinstance(entry, dict) else {}
            kind, value = _text(fields.get("type")), _text(fields.get("id"))
            if kind is None or value is None:
                left_out[INVALID_ENTRIES] += 1
                continue
            collection = fields.get("collection") if isinstance(fields.get("collection"), str) else USERS_COLLECTION
            encoding = fields.get("encoding") if isinstance(fields.get("encoding"), str) else NO_ENCODING
            add(kind, value, collection, encoding)
    return found, left_out


def identities(calls: Iterable[tuple[Mapping[str, Any], datetime]]) -> dict[Key, Seen]:
    """Every (call, its timestamp) stored, copies included: the rows of `identities`."""
    rows: dict[Key, Seen] = {}
    for call, at in calls:
        user, anonymous = _text(call.get("userId")), _text(call.get("anonymousId"))
        profile = (user, None) if user else (None, anonymous)
        for kind, value, collection, encoding in carried(call)[0]:
            key = (*profile, kind, value, collection, encoding)
            seen = rows.setdefault(key, Seen(at, at, set()))
            seen.first_seen_at, seen.last_seen_at = min(seen.first_seen_at, at), max(seen.last_seen_at, at)
            seen.messages.add(call["messageId"])
    return rows


def as_rows(rows: Mapping[Key, Seen]) -> dict[Key, tuple[datetime, datetime, int]]:
    """What the table holds per key, for comparison with a query's rows."""
    return {key: (s.first_seen_at, s.last_seen_at, s.calls) for key, s in rows.items()}


def left_out(calls: Iterable[Mapping[str, Any]]) -> Counter[str]:
    """The report's counts over stored rows (a redelivered copy counts again, as the window holds it)."""
    total: Counter[str] = Counter()
    for call in calls:
        total += carried(call)[1]
    return total
