"""One local stack for the whole integration session, on its own ports (a `make up` stack can keep
running), from the staged source. Each test writes to its own space, so tests never see each
other's rows; the stack is stopped by process group at the end.

Both BigQuery writers must pass the same tests: the session's stack writes with insertAll (named in its
environment), and a test marked `both_writers` runs once more against a second stack whose functions
write with the Storage Write API (BIGQUERY_WRITER=storage_write, the default writer). Every
test gets `stack` parametrized by writer, so pytest keeps one stack per writer for the session and runs
the tests of one writer together (the first stack is stopped before the second starts). bqemulator's
Write API is slow (~0.5 s per append), so only a few core ingest tests are marked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from google.cloud import bigquery, pubsub_v1

from infra.local.stack import STAGE, Stack, StackConfig, running
from personas_warehouse.settings import SpacePolicy

CONFIG_FILE = Path(__file__).with_name("personas-test.yaml")
# The space policy of Settings built in-process by tests: every test makes spaces of its own, far past the
# default maximum (20) once the suite has run a while; personas-test.yaml says the same for the stack.
WIDE_OPEN = SpacePolicy(max_space_datasets=100_000)
# Random examples per property test on the stack, besides its explicit @example cases. Each costs several
# syncs, and bqemulator spends seconds translating each of their MERGEs: `make test` runs 3;
# `make property` runs 8 (PERSONAS_PROPERTY_EXAMPLES=8), as the tests did before the suite had four tables.
PROPERTY_EXAMPLES = int(os.environ.get("PERSONAS_PROPERTY_EXAMPLES", "3"))
# The shortest overlap settings accept (a row can become visible up to the ingest deadline plus a margin
# after its loaded_at): runs a few seconds apart re-read each other's rows, as they do in production.
SYNC_ENV = {"SYNC_OVERLAP_SECONDS": "80"}  # INGEST_DEADLINE_SECONDS: its default, 50
OVERLAP_SECONDS = 80
# The functions' key for forgotten ids' hashes (test_forget_e2e.py), and a 1 s refresh of ingest's copy of them.
FORGET_ENV = {"FORGET_HASH_KEY": "integration-test-key-" + "0" * 16, "FORGET_REFRESH_SECONDS": "1"}


def integration_config(base: int, **env: str) -> StackConfig:
    """A stack configured as the session's, on ports from `base` (StackConfig.spare)."""
    return StackConfig.spare(
        base,
        "integration",
        topic="personas-calls-test",
        subscription="personas-calls-test-ingest",
        function_env={
            "PERSONAS_CONFIG": str(CONFIG_FILE),
            "MAX_MESSAGE_BYTES": "20000",
            **SYNC_ENV,
            **FORGET_ENV,
            **env,
        },
    )


# The session's stack names its writer: storage_write, the default, is the second stack's.
TEST_CONFIG = integration_config(18_000, BIGQUERY_WRITER="insert_all")
# The same stack with the functions writing through the Storage Write API, on ports of its own.
STORAGE_WRITE_CONFIG = integration_config(18_100, BIGQUERY_WRITER="storage_write")
WRITERS = {"insert_all": TEST_CONFIG, "storage_write": STORAGE_WRITE_CONFIG}

pytestmark = pytest.mark.integration


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_writers: runs against the insert_all and the storage_write stack")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "stack" in metafunc.fixturenames:
        both = metafunc.definition.get_closest_marker("both_writers") is not None
        writers = list(WRITERS) if both else ["insert_all"]
        metafunc.parametrize("stack", writers, indirect=True, scope="session")


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    writer = getattr(request, "param", "insert_all")
    state = tmp_path_factory.mktemp(f"stack-{writer}")
    config = replace(WRITERS[writer], state_dir=str(state))
    with running(config) as started:
        yield started
    if os.environ.get("CI") or request.session.testsfailed:  # what the stack said, where CI's log shows it
        for log in sorted((state / "logs").glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-20:]
            print(f"\n== {log.name} (last lines)\n" + "\n".join(tail))


@pytest.fixture(scope="session")
def bq(stack: Stack) -> bigquery.Client:
    return stack.config.bigquery_client()


@pytest.fixture(scope="session")
def publisher(stack: Stack) -> pubsub_v1.PublisherClient:
    return stack.config.publisher()


@pytest.fixture
def space() -> str:
    return "t_" + uuid.uuid4().hex[:10]


@pytest.fixture
def publish(stack: Stack, publisher: pubsub_v1.PublisherClient) -> Callable[..., str]:
    topic = publisher.topic_path(stack.config.project, stack.config.topic)

    def _publish(doc: Any, **attributes: str) -> str:
        data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return str(publisher.publish(topic, data, **attributes).result(timeout=30))

    return _publish


def query(bq: bigquery.Client, sql: str, **params: Any) -> list[dict[str, Any]]:
    config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ScalarQueryParameter(k, "STRING", v) for k, v in params.items()]
    )
    return [dict(r) for r in bq.query(sql, job_config=config).result()]


def wait_rows(
    bq: bigquery.Client, sql: str, count: int, *, timeout: float = 60.0, **params: Any
) -> list[dict[str, Any]]:
    """Poll until the query answers at least `count` rows (the push path is asynchronous)."""
    end = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < end:
        try:
            found = query(bq, sql, **params)
        except Exception:  # the table may not exist yet
            found = []
        if len(found) >= count:
            return found
        time.sleep(0.3)
    raise AssertionError(f"wanted {count} rows within {timeout}s, got {len(found)}: {sql}")


def identify(user: str | None, message_id: str, timestamp: str, **traits: Any) -> dict[str, Any]:
    call: dict[str, Any] = {"type": "identify", "messageId": message_id, "timestamp": timestamp, "traits": traits}
    if user:
        call["userId"] = user
    else:
        call["anonymousId"] = "anon-" + message_id
    return call


def sync_cli(stack: Stack, space: str, config: str | None = None, tmp_path: Path | None = None) -> dict[str, Any]:
    """The users sync of one space by its command line, from the staged source (the HTTP one would
    sync every test's space). `config` is a personas.yaml text for selective sync."""
    env = {"PATH": "/usr/bin:/bin", **stack.config.exports(), **SYNC_ENV}
    if config is not None:
        assert tmp_path is not None
        path = tmp_path / "personas.yaml"
        path.write_text(config)
        env["PERSONAS_CONFIG"] = str(path)
    done = subprocess.run(
        [sys.executable, "-m", "personas_warehouse.sync", "--space", space],
        cwd=STAGE,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))
