"""Shared helpers of the unit tests: sample calls, Pub/Sub messages and hypothesis strategies."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from personas_warehouse.messages import PubSubMessage, RoutedCall
from schemas.call_schema import CALL_SCHEMA

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "calls"
PUBLISHED = datetime(2026, 3, 1, 9, 0, 3, tzinfo=UTC)

# Every property test runs with these: no deadline (CI machines vary), a bounded number of examples.
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THOROUGH = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def message(
    document: Any = None,
    *,
    raw: bytes | None = None,
    data_b64: str | None = None,
    attributes: dict[str, str] | None = None,
    message_id: str = "pubsub-1",
) -> PubSubMessage:
    """A Pub/Sub message carrying `document` as JSON (or `raw` bytes, or `data_b64` as is)."""
    if data_b64 is None:
        data = raw if raw is not None else json.dumps(document).encode()
        data_b64 = base64.b64encode(data).decode()
    return PubSubMessage(message_id, data_b64, PUBLISHED, attributes or {}, "projects/p/subscriptions/s")


def call(**fields: Any) -> dict[str, Any]:
    """A minimal valid identify call with `fields` on top."""
    return {"type": "identify", "messageId": "m-1", "userId": "u-1", **fields}


def routed(document: dict[str, Any], index: int = 0, space: str = "default") -> RoutedCall:
    return RoutedCall(index, CALL_SCHEMA.load(document), space)


# --- hypothesis strategies -------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_leaves = st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()


def json_documents(keys: st.SearchStrategy[str] | None = None, max_leaves: int = 20) -> st.SearchStrategy[Any]:
    key_strategy = keys if keys is not None else st.text(max_size=12)
    return st.recursive(
        json_scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(key_strategy, children, max_size=5),
        max_leaves=max_leaves,
    )


# Keys chosen to provoke snake-case clashes, base-column clashes, prefixes and unnamed columns.
odd_keys = st.sampled_from(
    [
        "a",
        "A",
        "a_b",
        "aB",
        "a.b",
        "a b",
        "firstTimeShopper",
        "first_time_shopper",
        "First Time Shopper",
        "id",
        "ID",
        "user_id",
        "userId",
        "received_at",
        "loaded_at",
        "event",
        "context",
        "context_x",
        "contextX",
        "_TABLE_x",
        "__ROOT__",
        "1st",
        "",
        "!!",
        "🎉",
        "café",
        "x" * 310,
    ]
) | st.text(max_size=8)
