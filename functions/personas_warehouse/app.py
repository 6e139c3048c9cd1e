"""HTTP and CloudEvent adapters: turn what the platform delivers into core calls, nothing more.

Settings are read (and validated) when this module is imported, so a bad configuration fails the
instance at start-up instead of half-processing messages. BigQuery clients are made on first use.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any

from personas_warehouse import values
from personas_warehouse.bigquery import Warehouse, make_client
from personas_warehouse.ingest import Outcome, ingest
from personas_warehouse.messages import PubSubMessage
from personas_warehouse.settings import Settings, load_settings

SETTINGS: Settings = load_settings()


@cache
def warehouse() -> Warehouse:
    return Warehouse(make_client(SETTINGS))


def message_from_event(data: dict[str, Any], source: str = "") -> PubSubMessage:
    """The Pub/Sub message inside a messagePublished CloudEvent (both key spellings are seen)."""
    message = data.get("message") or {}
    published = message.get("publishTime") or message.get("publish_time")
    moment = values.parse_timestamp(published) if isinstance(published, str) else None
    return PubSubMessage(
        message_id=str(message.get("messageId") or message.get("message_id") or ""),
        data_b64=message.get("data") or "",
        publish_time=moment or datetime.now(UTC),
        attributes=message.get("attributes") or {},
        subscription=str(data.get("subscription") or source),
    )


def handle_cloud_event(event: Any) -> Outcome:
    return ingest(message_from_event(event.data or {}, str(event["source"])), warehouse(), SETTINGS)
