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
from personas_warehouse.sync import run_sync

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


def handle_sync_request(request: Any) -> tuple[dict[str, Any], int]:
    """POST (Cloud Scheduler) runs a sync. Body or query: {"full": true, "spaces": ["default"]}.
    Answers 200 when no space failed, else 500 with the same summary (so the scheduler shows it)."""
    if request.method != "POST":  # a crawler or a browser must not start a sync
        return {"error": "use POST"}, 405
    body = request.get_json(silent=True) or {}
    full = bool(body.get("full")) or request.args.get("full") in ("1", "true")
    spaces = body.get("spaces") or request.args.getlist("space") or None
    if spaces is not None and (not isinstance(spaces, list) or not all(isinstance(s, str) for s in spaces)):
        return {"error": "spaces must be a list of space slugs"}, 400
    summary = run_sync(warehouse(), SETTINGS, full=full, spaces=spaces)
    failed = any(space["status"] == "failure" for space in summary["spaces"])
    return summary, 500 if failed else 200
