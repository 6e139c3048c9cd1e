"""Cloud Functions (gen2) entry points. `ingest`: Pub/Sub push (CloudEvent). `sync`: Cloud Scheduler (HTTP)."""

from __future__ import annotations

from typing import Any

import functions_framework
from cloudevents.http import CloudEvent

from personas_warehouse import app


@functions_framework.cloud_event
def ingest(event: CloudEvent) -> None:
    """Returns (HTTP 2xx, Pub/Sub acks) only once every row is written; raises to get a redelivery."""
    app.handle_cloud_event(event)


@functions_framework.http
def sync(request: Any) -> tuple[dict[str, Any], int]:
    return app.handle_sync_request(request)
