"""Warehouse.run: a MERGE aborted by a concurrent one is run again (bounded); other errors are not."""

from __future__ import annotations

from typing import Any

import pytest
from google.api_core import exceptions as gexc

from personas_warehouse.bigquery import Deadline, Warehouse

CONCURRENT = "Could not serialize access to table p.d.users due to concurrent update"


class Job:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def result(self, **_: Any) -> list[Any]:
        if self.error:
            raise self.error
        return []


class Client:
    project = "personas-test"

    def __init__(self, errors: list[Exception | None]) -> None:
        self.errors = errors
        self.calls = 0

    def query(self, sql: str, **_: Any) -> Job:
        self.calls += 1
        return Job(self.errors.pop(0) if self.errors else None)


def warehouse(client: Client) -> Warehouse:
    return Warehouse(client, sleep=lambda _: None)  # type: ignore[arg-type]


def test_concurrent_update_is_run_again() -> None:
    client = Client([gexc.BadRequest(CONCURRENT), gexc.BadRequest(CONCURRENT), None])
    warehouse(client).run("MERGE ...", [], Deadline(60))
    assert client.calls == 3


def test_concurrent_update_retries_are_bounded() -> None:
    client = Client([gexc.BadRequest(CONCURRENT)] * 10)
    with pytest.raises(gexc.BadRequest):
        warehouse(client).run("MERGE ...", [], Deadline(60))
    assert client.calls == 5


def test_other_bad_requests_are_not_retried() -> None:
    client = Client([gexc.BadRequest("Unrecognized name: loaded_at")])
    with pytest.raises(gexc.BadRequest):
        warehouse(client).run("MERGE ...", [], Deadline(60))
    assert client.calls == 1
