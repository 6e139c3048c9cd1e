"""HTTP adapters: turn what the platform delivers into core calls, nothing more.

Settings are read (and validated) when this module is imported, so a bad configuration fails the
instance at start-up instead of half-processing messages. BigQuery clients are made on first use.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from typing import Any

from google.cloud import bigquery

from personas_warehouse import values
from personas_warehouse.bigquery import Deadline, Warehouse, make_client
from personas_warehouse.errors import TransientError
from personas_warehouse.ingest import Outcome, ingest, record_rejections
from personas_warehouse.logs import log
from personas_warehouse.messages import PushDelivery, parse_push
from personas_warehouse.settings import STORAGE_WRITE, Settings, load_settings
from personas_warehouse.sync import run_sync
from personas_warehouse.writers.contract import Writer
from personas_warehouse.writers.insert_all import InsertAllWriter

# (body, status, headers): what functions-framework's Flask accepts from an HTTP function.
Response = tuple[str, int, dict[str, str]]

SETTINGS: Settings = load_settings()


@cache
def warehouse() -> Warehouse:
    client = make_client(SETTINGS)
    return Warehouse(
        client,
        writers=writers(client),
        write_group_max_wait=SETTINGS.write_group_max_wait_ms / 1000,
        space_datasets=SETTINGS.space_datasets,
    )


def writers(client: bigquery.Client) -> list[Writer]:
    """BIGQUERY_WRITER's writer, then insertAll for the rows it defers (a column the Write API does not see yet)."""
    insert_all = InsertAllWriter(client)
    if SETTINGS.bigquery_writer != STORAGE_WRITE:
        return [insert_all]
    # Imported here: the Write API client (gRPC, protobuf) costs cold-start time only where it is used.
    from personas_warehouse.writers.storage_write import StorageWriteWriter, make_write_client

    return [StorageWriteWriter(make_write_client(SETTINGS), str(client.project)), insert_all]


def handle_push_request(request: Any) -> Response:
    # From the first byte read: this request's rows are coming, so shared writes wait for them (group_commit.py).
    with warehouse().serving():
        return handle_push(request.method, request.get_data(cache=False), warehouse)


def handle_push(
    method: str,
    body: bytes,
    warehouse_of: Callable[[], Warehouse],
    settings: Settings = SETTINGS,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Response:
    """A Pub/Sub push request. 204 (Pub/Sub acks) once every row, discard and rejection is written,
    malformed bodies included; 500 (Pub/Sub redelivers with backoff, then dead-letters) when anything
    failed. One log line per request, whatever happens."""
    if method != "POST":  # a crawler or a health check: nothing to record
        return "use POST\n", 405, {"Allow": "POST"}
    started = time.monotonic()
    received_at = now()
    delivery = parse_push(body, received_at)
    message = delivery.message
    fields: dict[str, Any] = {
        "pubsub_message_id": message.message_id,
        "delivery_attempt": message.delivery_attempt,
        "subscription": message.subscription or None,
        "notes": delivery.notes or None,
    }
    try:
        outcome = _handle(delivery, warehouse_of, settings, received_at)
    except Exception as exc:  # TransientError or a bug: either way not acked, so nothing is lost
        transient = isinstance(exc, TransientError)
        log(
            "WARNING" if transient else "ERROR",
            f"push not acked (Pub/Sub redelivers): {exc!r}"[:2000],
            outcome="retry",
            status=500,
            latency_ms=round((time.monotonic() - started) * 1000),
            stack_trace=None if transient else traceback.format_exc(),  # Error Reporting reads this field
            **fields,
        )
        return "not stored, retry\n", 500, {}
    classes = sorted({str(r.error_class) for r in outcome.rejections})
    log(
        "WARNING" if outcome.rejections or delivery.notes else "INFO",
        "push acked",
        outcome=_label(outcome),
        status=204,
        latency_ms=round((time.monotonic() - started) * 1000),
        rows=sum(outcome.rows.values()),
        tables=sorted(table for table, count in outcome.rows.items() if count) or None,
        discards=outcome.discards,
        rejections=len(outcome.rejections),
        error_classes=classes or None,
        suppressed=outcome.suppressed or None,
        **fields,
    )
    return "", 204, {}


def _label(outcome: Outcome) -> str:
    written = sum(outcome.rows.values())
    if outcome.rejections:
        return "partial" if written else "rejected"
    return "written" if written else "skipped"


def _handle(
    delivery: PushDelivery, warehouse_of: Callable[[], Warehouse], settings: Settings, received_at: datetime
) -> Outcome:
    if delivery.rejection is None:
        return ingest(delivery.message, warehouse_of(), settings)
    # Not even a message to decode: recorded as is (ingest's own path records everything else).
    deadline = Deadline(settings.ingest_deadline_seconds)
    stamp = values.format_timestamp(received_at)
    rejections = [delivery.rejection]
    record_rejections(delivery.message, delivery.stored_data, rejections, warehouse_of(), settings, deadline, stamp)
    return Outcome(rejections=rejections)


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
