"""Segment's Google Cloud Pub/Sub destination, end to end: each message exactly as the destination
publishes it (tests/fixtures/segment: the whole event as data, no attributes, one event per message)
goes through Google's Pub/Sub emulator and the push subscription to the ingest function, and lands in
the space its context.personas.space_id names, under the event names that space configured."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from google.cloud import bigquery

from infra.local.stack import Stack
from tests.integration.conftest import wait_rows

pytestmark = pytest.mark.integration
P = "personas-local"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "segment"


def fixture(name: str, run: str) -> dict[str, Any]:
    """The fixture with a messageId of this run (the stack lives for the whole session)."""
    found: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    found["data"]["messageId"] += f"-{run}"
    return found


@pytest.mark.both_writers
def test_the_destinations_messages_land_in_their_space_under_its_event_names(
    stack: Stack, bq: bigquery.Client, publish: Callable[..., str]
) -> None:
    run = uuid.uuid4().hex[:8]
    names = [p.stem for p in sorted(FIXTURES.glob("*.json"))]
    sent = {name: fixture(name, run) for name in names}
    for body in sent.values():
        publish(json.dumps(body["data"]).encode(), **body["attributes"])  # the bytes the destination sends
    ids = {name: body["data"]["messageId"] for name, body in sent.items()}

    def rows(dataset: str, table: str, *names: str) -> dict[str, dict[str, Any]]:
        """The rows of these fixtures, once they are all there (the ids are the fixtures' own, no input)."""
        wanted = ", ".join(f"'{ids[n]}'" for n in names)
        found = wait_rows(bq, f"SELECT * FROM `{P}.{dataset}.{table}` WHERE id IN ({wanted})", len(names))
        return {r["id"]: r for r in found}

    identifies = rows("personas_engage", "identifies", "identify_audience", "identify_computed_trait")
    audience, trait = identifies[ids["identify_audience"]], identifies[ids["identify_computed_trait"]]
    assert (audience["user_id"], audience["first_time_shopper"], audience["email"]) == (
        "u-1001",
        True,
        "ada@example.com",
    )
    assert trait["total_revenue_180_days"] == 450.0
    assert audience["context_personas_computation_class"] == "audience"
    assert audience["context_personas_space_id"] == "spa_2eSNmPZqSXXHZfhyLNdVaSsZaWe"
    assert audience["timestamp"].isoformat() == "2026-11-30T09:15:02.118000+00:00"  # the event's own
    assert audience["sent_at"] is None  # sentAt: null is a valid value, not a rejection

    [entered] = rows("personas_engage", "joined_audience", "track_audience_entered").values()
    assert (entered["audience_key"], entered["first_time_shopper"]) == ("first_time_shopper", True)
    assert entered["event_text"] == "Joined Audience" and entered["context_traits_email"] == "ada@example.com"
    [exited] = rows("personas_engage", "left_audience", "track_audience_exited").values()
    assert (exited["audience_key"], exited["first_time_shopper"]) == ("first_time_shopper", False)
    [computed] = rows("personas_engage", "trait_computed", "track_trait_computed").values()
    assert (computed["trait_key"], computed["total_revenue_180_days"]) == ("total_revenue_180_days", 450.0)
    tracks = rows(
        "personas_engage", "tracks", "track_audience_entered", "track_audience_exited", "track_trait_computed"
    )
    assert sorted(r["event_text"] for r in tracks.values()) == ["Joined Audience", "Left Audience", "Trait Computed"]

    [elsewhere] = rows("personas_default", "audience_entered", "track_audience_entered_unmapped_space").values()
    assert (elsewhere["audience_key"], elsewhere["vip"]) == ("vip", True)
