"""Cloud Functions (gen2) entry points, both HTTP. `ingest`: Pub/Sub push. `sync`: Cloud Scheduler."""

from __future__ import annotations

from typing import Any

import functions_framework

from personas_warehouse import app


@functions_framework.http
def ingest(request: Any) -> tuple[str, int, dict[str, str]]:
    """The raw push body is parsed here, not by functions-framework's CloudEvent conversion, which drops
    `subscription` and `deliveryAttempt` and answers 400 (a redelivery loop) to a message without data.
    204 (Pub/Sub acks) only once every row or rejection is written; 500 to get a redelivery."""
    return app.handle_push_request(request)


@functions_framework.http
def sync(request: Any) -> tuple[dict[str, Any], int]:
    return app.handle_sync_request(request)
