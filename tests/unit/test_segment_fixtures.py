"""The messages Segment's Google Cloud Pub/Sub destination publishes (tests/fixtures/segment; their shape
and sources are in each file and in docs/connect-segment.md), decoded with the integration stack's config:
each is one call, routed by its context.personas.space_id (the destination sets no attribute), and its
track event is recognised by the names that space configured. tests/integration/test_segment_e2e.py
publishes the same messages through Pub/Sub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from personas_warehouse.messages import decode
from personas_warehouse.settings import Settings, load_settings
from personas_warehouse.shaping import shape
from tests.unit._support import PUBLISHED, message

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "segment").glob("*.json"))
CONFIG = ROOT / "tests" / "integration" / "personas-test.yaml"


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings({"PERSONAS_CONFIG": str(CONFIG)})


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def test_there_is_a_fixture_of_each_kind() -> None:
    kinds = {(load(p)["data"]["type"], load(p)["role"]) for p in FIXTURES}
    assert kinds == {
        ("identify", None),
        ("track", "audience_entered"),
        ("track", "audience_exited"),
        ("track", "trait_computed"),
    }


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_a_destination_message_is_one_call_routed_by_its_space_id(path: Path, settings: Settings) -> None:
    fixture = load(path)
    assert fixture["attributes"] == {} and fixture["sources"], "the destination sets no attribute; cite the shape"
    decoded = decode(message(fixture["data"], attributes=fixture["attributes"]), settings)
    assert decoded.rejections == []
    [routed] = decoded.calls
    assert routed.space == fixture["space"]
    rows = shape(routed, received_at=PUBLISHED, insert_prefix="p")
    assert {row.table for row in rows} == (
        {"identifies"} if fixture["data"]["type"] == "identify" else {"tracks", rows[-1].table}
    )


@pytest.mark.parametrize("path", [p for p in FIXTURES if load(p)["role"]], ids=lambda p: p.stem)
def test_the_space_recognises_its_configured_event_names(path: Path, settings: Settings) -> None:
    fixture = load(path)
    events = settings.space(fixture["space"]).personas_events
    assert events.role_of(fixture["data"]["event"]) == fixture["role"]


def test_renamed_events_are_not_mistaken_for_the_defaults(settings: Settings) -> None:
    engage = settings.space("engage").personas_events
    assert engage.role_of("Joined Audience") == "audience_entered" and engage.role_of("Audience Entered") is None
    assert settings.space("default").personas_events.role_of("Audience Entered") == "audience_entered"
