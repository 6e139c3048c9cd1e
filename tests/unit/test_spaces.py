"""The space policy: which spaces may get a dataset. The rule (messages.space_refusal), the per-instance
catalog of space datasets it needs (spaces.py: cached, refreshed at most every 10 s on an unknown space,
exact within one instance), and ingest recording a refused space as a rejection that creates nothing and
lands once the policy allows it (replayed from its stored row)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infra.ops.replay import Filters, replay_rejected
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.errors import ErrorClass
from personas_warehouse.ingest import ingest
from personas_warehouse.messages import PubSubMessage, space_refusal
from personas_warehouse.settings import Settings, SpaceConfig, SpacePolicy
from personas_warehouse.spaces import SpaceCatalog, catalog_of
from tests.fakes import FakeClock, StrictFakeBigQuery
from tests.unit._ops_fakes import FakePublisher, FakeReader

ANY_3 = SpacePolicy("any", 3)
LISTED = SpacePolicy("listed", 3)


@pytest.mark.parametrize(
    ("space", "policy", "existing", "refused"),
    [
        ("new", ANY_3, {"a", "b"}, False),  # 2 < 3
        ("new", ANY_3, {"a", "b", "c"}, True),  # at the maximum
        ("a", ANY_3, {"a", "b", "c", "d"}, False),  # an existing space past a lowered maximum is kept
        ("mkt", LISTED, {"a", "b", "c"}, False),  # listed: the count does not matter
        ("other", LISTED, set(), True),
    ],
)
def test_the_rule(space: str, policy: SpacePolicy, existing: set[str], refused: bool) -> None:
    reason = space_refusal(space, policy, {"default": SpaceConfig(), "mkt": SpaceConfig()}, existing)
    assert (reason is not None) == refused


class Lister:
    def __init__(self, names: Iterable[str]) -> None:
        self.names = set(names)
        self.calls = 0

    def __call__(self, deadline: Deadline) -> list[str]:
        self.calls += 1
        return sorted(self.names)


def test_a_known_space_costs_no_listing_and_an_unknown_one_at_most_one_per_interval() -> None:
    clock = FakeClock()
    lister = Lister({"a", "b"})
    catalog = SpaceCatalog(lister, clock=clock, min_refresh_seconds=10)
    settings = Settings(space_policy=SpacePolicy("any", 4))
    deadline = Deadline(30)
    assert catalog.refusal("a", settings, deadline) is None and lister.calls == 1  # first use lists
    assert catalog.refusal("b", settings, deadline) is None and lister.calls == 1
    assert catalog.refusal("c", settings, deadline) is None and lister.calls == 1  # listed 0 s ago: admitted
    assert catalog.refusal("d", settings, deadline) is None  # 4 now: the maximum
    for made_up in ("x1", "x2", "x3"):
        assert catalog.refusal(made_up, settings, deadline) is not None
    assert lister.calls == 1, "a stream of unknown spaces does not list on every message"
    lister.names.add("e")  # made by another instance
    clock.advance(10)
    assert catalog.refusal("e", settings, deadline) is None and lister.calls == 2  # seen by the new listing
    assert catalog.refusal("x4", settings, deadline) is not None and lister.calls == 2


def test_listed_policy_never_lists() -> None:
    lister = Lister(set())
    catalog = SpaceCatalog(lister)
    settings = Settings(space_policy=LISTED, spaces={"default": SpaceConfig(), "mkt": SpaceConfig()})
    assert catalog.refusal("mkt", settings, Deadline(30)) is None
    assert "Not one of the spaces listed" in (catalog.refusal("sales", settings, Deadline(30)) or "")
    assert lister.calls == 0


def test_one_instance_never_admits_past_the_maximum_however_many_threads_race() -> None:
    gate = threading.Barrier(16)
    catalog = SpaceCatalog(Lister({"a"}))
    settings = Settings(space_policy=SpacePolicy("any", 5))

    def attempt(i: int) -> bool:
        gate.wait()
        return catalog.refusal(f"s{i}", settings, Deadline(30)) is None

    with ThreadPoolExecutor(16) as pool:
        admitted = sum(pool.map(attempt, range(16)))
    assert admitted == 4  # "a" exists: 4 more make 5


def test_the_catalog_is_one_per_warehouse() -> None:
    first, second = Warehouse(StrictFakeBigQuery()), Warehouse(StrictFakeBigQuery())  # type: ignore[arg-type]
    assert catalog_of(first) is catalog_of(first) and catalog_of(first) is not catalog_of(second)


# -- through ingest -----------------------------------------------------------------------------------------

PUBLISHED = datetime(2026, 11, 1, 12, tzinfo=UTC)
TOPIC = "projects/personas-test/topics/personas-calls"


def message(doc: Any, message_id: str, published: datetime = PUBLISHED, **attributes: str) -> PubSubMessage:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return PubSubMessage(message_id, base64.b64encode(data).decode(), published, attributes, "sub")


def identify(message_id: str) -> dict[str, Any]:
    return {"type": "identify", "userId": "u1", "messageId": message_id, "traits": {"plan": "pro"}}


def test_a_refused_space_is_a_recorded_rejection_and_never_a_dataset() -> None:
    fake = StrictFakeBigQuery()
    warehouse = Warehouse(fake, sleep=lambda _: None)  # type: ignore[arg-type]
    settings = Settings(ingest_deadline_seconds=30, space_policy=SpacePolicy("any", 2))
    for space in ("one", "two"):
        assert ingest(message(identify(f"{space}-1"), f"m-{space}", space=space), warehouse, settings).rejections == []
    outcome = ingest(message(identify("x-1"), "m-x", space="three"), warehouse, settings)

    assert [(r.error_class, r.call_index, r.space) for r in outcome.rejections] == [
        (ErrorClass.SPACE_REFUSED, 0, "three")
    ]
    assert outcome.rows == {}
    assert "personas_three" not in fake.datasets and {"personas_one", "personas_two"} <= fake.datasets
    [row] = fake.rows[f"{fake.project}.personas__ops.rejected_messages"]
    assert (row["error_class"], row["space"], json.loads(row["attributes"])) == (
        "space_refused",
        "three",
        {"space": "three"},
    )
    assert "maximum of space_policy.max_space_datasets" in json.loads(row["errors"])["space"][0]


def test_a_space_refused_by_the_count_lands_when_replayed_after_the_maximum_is_raised() -> None:
    fake = StrictFakeBigQuery()
    warehouse = Warehouse(fake, sleep=lambda _: None)  # type: ignore[arg-type]
    tight = Settings(
        ingest_deadline_seconds=30,
        space_policy=SpacePolicy("any", 1),
        spaces={"sales": SpaceConfig(space_ids=("spa_sales",))},
    )
    ingest(message(identify("first"), "m-0"), warehouse, tight)  # the default space: the 1 allowed
    envelope = {"context": {"personas": {"space_id": "spa_sales"}}, "batch": [identify("a"), identify("b")]}
    outcome = ingest(message(envelope, "orig"), warehouse, tight)
    assert [(r.error_class, r.call_index, r.space) for r in outcome.rejections] == [
        ("space_refused", 0, "sales"),
        ("space_refused", 1, "sales"),
    ]
    assert "personas_sales" not in fake.datasets

    reader, publisher = FakeReader(project=fake.project), FakePublisher()
    reader.ops["rejected_messages"] = [
        {**row, "publish_time": datetime.fromisoformat(row["publish_time"])}
        for row in fake.rows[f"{fake.project}.personas__ops.rejected_messages"]
    ]
    replay_rejected(reader, publisher, TOPIC, Filters(space="sales", error_class="space_refused"))
    assert len(publisher.published) == 2

    raised = replace(tight, space_policy=SpacePolicy("any", 2))
    for n, (_, data, attributes) in enumerate(publisher.published):
        replayed = ingest(message(data, f"new-{n}", PUBLISHED + timedelta(hours=1), **attributes), warehouse, raised)
        assert replayed.rejections == []
    rows = fake.rows[f"{fake.project}.personas_sales.identifies"]
    assert sorted(r["id"] for r in rows) == ["a", "b"]
    assert {r["received_at"] for r in rows} == {"2026-11-01T12:00:00.000000Z"}
