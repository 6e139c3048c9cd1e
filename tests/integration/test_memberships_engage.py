"""audience_memberships from Segment's own messages (tests/fixtures/segment) in a space whose Engage renamed
its audience events ("Joined Audience" / "Left Audience"): the space's personas_events says which event
tables hold its entries and exits. The same calls in a space left at Segment's default names are an
entry only (its Left Audience is just another event)."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.cloud import bigquery

from infra.local.stack import Stack
from personas_warehouse.bigquery import Warehouse
from personas_warehouse.ingest import ingest
from personas_warehouse.messages import PubSubMessage
from personas_warehouse.settings import PersonasEvents, Settings, SpaceConfig
from personas_warehouse.sync import run_sync
from tests.integration.conftest import WIDE_OPEN, query

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "segment"
SENT = ("identify_audience", "track_audience_entered", "track_audience_exited")
RENAMED = PersonasEvents("Joined Audience", "Left Audience", "Trait Computed")


def stays(stack: Stack, bq: bigquery.Client, space: str, config: SpaceConfig) -> list[dict[str, Any]]:
    """The fixtures' calls ingested into `space` (routed by the attribute: the test config maps their
    space_id to no space here), one sync run, and the stays it keeps."""
    project = stack.config.project
    settings = Settings(
        space_policy=WIDE_OPEN,
        bigquery_emulator_host=stack.config.bigquery_url,
        project=project,
        spaces={space: config},
    )
    warehouse = Warehouse(bq)
    for name in SENT:
        call = json.loads((FIXTURES / f"{name}.json").read_text())["data"]
        data = base64.b64encode(json.dumps(call).encode()).decode()
        ingest(PubSubMessage(f"{space}-{name}", data, datetime.now(UTC), {"space": space}), warehouse, settings)
    [result] = run_sync(warehouse, settings, spaces=[space])["spaces"]
    assert result["tables"]["audience_memberships"]["status"] == "success", result
    return query(bq, f"SELECT * EXCEPT (_bucket) FROM `{project}.personas_{space}.audience_memberships`")


def test_a_space_that_renamed_its_audience_events_gets_its_exits(stack: Stack, bq: bigquery.Client) -> None:
    run = uuid.uuid4().hex[:6]
    entered = datetime(2026, 11, 30, 9, 15, 2, 118000, tzinfo=UTC)
    # The identify and the Joined Audience enter at the same time: one entry, of either message.
    [stay] = stays(stack, bq, f"engage_m_{run}", SpaceConfig(personas_events=RENAMED))
    assert (stay["user_id"], stay["audience_key"]) == ("u-1001", "first_time_shopper")
    assert (stay["entered_at"], stay["exited_at"]) == (entered, datetime(2026, 12, 1, 7, tzinfo=UTC))
    assert stay["entered_message_id"] in {"seg-identify-audience-1", "seg-track-entered-1"}
    assert stay["exited_message_id"] == "seg-track-exited-1"
    # Segment's default names: "Left Audience" says nothing about membership, so the stay stays open.
    [open_stay] = stays(stack, bq, f"default_m_{run}", SpaceConfig())
    assert (open_stay["entered_at"], open_stay["exited_at"]) == (entered, None)
    assert open_stay["entered_message_id"] == "seg-identify-audience-1"
