"""What the operator commands share: the BigQuery reader (one thin adapter around the client, so the
commands' logic runs over a fake in tests), Pub/Sub peeking, flags, and plain-text tables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from infra.ops.queries import Query, SpaceTable
from personas_warehouse import naming
from personas_warehouse.sql import DATASET, PROJECT, UnsafeIdentifier
from schemas.tables import spec

DEFAULT_PROJECT = "personas-local"
DEFAULT_OPS_DATASET = "personas__ops"


class Reader(Protocol):
    """What the commands need from BigQuery; `Warehouse` below, or a fake in tests."""

    project: str
    ops_dataset: str

    def run(self, query: Query) -> list[dict[str, Any]]: ...

    def space_tables(self) -> dict[str, frozenset[str]]: ...

    def ops_tables(self) -> frozenset[str]: ...

    def ensure_ops_table(self, kind: str) -> None: ...

    def insert_ops(self, kind: str, rows: list[dict[str, Any]], row_ids: list[str]) -> None: ...


class Warehouse:
    """The real client. Lists datasets and tables through the API (bqemulator has no INFORMATION_SCHEMA)."""

    def __init__(self, client: Any, project: str, ops_dataset: str) -> None:
        for part, pattern in ((project, PROJECT), (ops_dataset, DATASET)):
            if not pattern.match(part):
                raise UnsafeIdentifier(f"refusing identifier {part!r}")
        self.client = client
        self.project = project
        self.ops_dataset = ops_dataset

    def run(self, query: Query) -> list[dict[str, Any]]:
        from google.cloud import bigquery

        from personas_warehouse.bigquery import query_parameters

        config = bigquery.QueryJobConfig(query_parameters=query_parameters(query.params))
        return [dict(row) for row in self.client.query(query.sql, job_config=config, project=self.project).result()]

    def space_tables(self) -> dict[str, frozenset[str]]:
        out: dict[str, frozenset[str]] = {}
        for item in self.client.list_datasets(project=self.project):
            if naming.is_space_dataset(item.dataset_id):
                tables = self.client.list_tables(f"{self.project}.{item.dataset_id}")
                out[naming.space_of_dataset(item.dataset_id)] = frozenset(t.table_id for t in tables)
        return out

    def ops_tables(self) -> frozenset[str]:
        from google.api_core import exceptions as gexc

        try:
            return frozenset(t.table_id for t in self.client.list_tables(f"{self.project}.{self.ops_dataset}"))
        except gexc.NotFound:
            return frozenset()

    def ensure_ops_table(self, kind: str) -> None:
        """Create an ops table from tables.json if it is missing (Terraform creates it in production). Looks
        first, so an operator without create permissions is not refused when the table is there."""
        from google.api_core import exceptions as gexc
        from google.cloud import bigquery

        if kind in self.ops_tables():
            return
        table_spec = spec(kind)
        try:
            self.client.get_dataset(f"{self.project}.{self.ops_dataset}")
        except gexc.NotFound:
            self.client.create_dataset(f"{self.project}.{self.ops_dataset}", exists_ok=True)
        table = bigquery.Table(
            f"{self.project}.{self.ops_dataset}.{kind}",
            schema=[bigquery.SchemaField(c.name, c.type, description=c.description) for c in table_spec.columns],
        )
        table.description = table_spec.description
        if table_spec.partition_field:
            table.time_partitioning = bigquery.TimePartitioning(field=table_spec.partition_field)
        table.clustering_fields = list(table_spec.clustering) or None
        self.client.create_table(table, exists_ok=True)

    def insert_ops(self, kind: str, rows: list[dict[str, Any]], row_ids: list[str]) -> None:
        errors = self.client.insert_rows_json(f"{self.project}.{self.ops_dataset}.{kind}", rows, row_ids=row_ids)
        if errors:
            raise RuntimeError(f"BigQuery refused rows of {self.ops_dataset}.{kind}: {errors}")


def raw_tables(
    catalog: dict[str, frozenset[str]], names: Iterable[str], spaces: Iterable[str] | None = None
) -> list[SpaceTable]:
    """The existing tables called `names` of the given spaces (default: all), sorted."""
    wanted = set(catalog) if spaces is None else set(spaces) & set(catalog)
    return [
        SpaceTable(space, naming.space_dataset(space), name)
        for space in sorted(wanted)
        for name in names
        if name in catalog[space]
    ]


# --- Pub/Sub ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pulled:
    ack_id: str
    message_id: str
    data: bytes
    attributes: dict[str, str]
    publish_time: datetime


class Subscriber(Protocol):
    """The few SubscriberClient calls used: pull, acknowledge, modify_ack_deadline."""

    def pull(self, request: dict[str, Any], timeout: float | None = None) -> Any: ...

    def acknowledge(self, request: dict[str, Any]) -> Any: ...

    def modify_ack_deadline(self, request: dict[str, Any]) -> Any: ...


PULL_TIMEOUT = 3.0
PEEK_LIMIT = 10_000


def pull_batch(subscriber: Subscriber, subscription: str, max_messages: int = 100) -> list[Pulled]:
    """One pull; an empty list when nothing is there (the emulator waits for the timeout then)."""
    from google.api_core import exceptions as gexc

    try:
        response = subscriber.pull(
            request={"subscription": subscription, "max_messages": max_messages}, timeout=PULL_TIMEOUT
        )
    except (gexc.DeadlineExceeded, gexc.RetryError):
        return []
    out = []
    for received in response.received_messages:
        message = received.message
        publish_time = message.publish_time
        if not isinstance(publish_time, datetime):  # protobuf Timestamp on some client versions
            publish_time = publish_time.ToDatetime(tzinfo=UTC)
        out.append(
            Pulled(received.ack_id, message.message_id, bytes(message.data), dict(message.attributes), publish_time)
        )
    return out


def release(subscriber: Subscriber, subscription: str, ack_ids: Sequence[str]) -> None:
    """Hand messages back undelivered (ack deadline 0) so they stay in the subscription."""
    for i in range(0, len(ack_ids), 1000):
        subscriber.modify_ack_deadline(
            request={"subscription": subscription, "ack_ids": list(ack_ids[i : i + 1000]), "ack_deadline_seconds": 0}
        )


def acknowledge(subscriber: Subscriber, subscription: str, ack_ids: Sequence[str]) -> None:
    for i in range(0, len(ack_ids), 1000):
        subscriber.acknowledge(request={"subscription": subscription, "ack_ids": list(ack_ids[i : i + 1000])})


def peek(subscriber: Subscriber, subscription: str, limit: int = PEEK_LIMIT) -> tuple[list[Pulled], bool]:
    """Every message waiting in a pull subscription, without acking any: pulls while holding the leases
    (so none is counted twice), then releases them all. Returns (messages, complete); complete is False
    when `limit` stopped it."""
    seen: dict[str, Pulled] = {}
    ack_ids: list[str] = []
    try:
        while len(seen) < limit:
            batch = pull_batch(subscriber, subscription)
            fresh = [m for m in batch if m.message_id not in seen]
            ack_ids.extend(m.ack_id for m in batch)
            if not fresh:
                break
            seen.update((m.message_id, m) for m in fresh)
    finally:
        release(subscriber, subscription, ack_ids)
    return list(seen.values()), len(seen) < limit


def dead_letter_space(message: Pulled) -> str:
    return message.attributes.get("space") or "?"


def original_publish_time(message: Pulled) -> datetime:
    """When the message was first published: Pub/Sub records it on dead-lettered messages."""
    raw = message.attributes.get("CloudPubSubDeadLetterSourceTopicPublishTime")
    if raw:
        try:
            return parse_time(raw)
        except ValueError:
            pass
    return message.publish_time


def make_subscriber() -> Any:
    from google.cloud import pubsub_v1

    return pubsub_v1.SubscriberClient()


def make_publisher() -> Any:
    from google.cloud import pubsub_v1

    return pubsub_v1.PublisherClient()


def subscription_path(project: str, subscription: str) -> str:
    return subscription if subscription.startswith("projects/") else f"projects/{project}/subscriptions/{subscription}"


def topic_path(project: str, topic: str) -> str:
    return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"


# --- flags and clients ------------------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """ISO-8601 with a zone (a bare date means its midnight UTC); a time without a zone is refused."""
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        if "T" in text or " " in text.strip():
            raise ValueError(f"{text!r} has no time zone; add Z or +00:00")
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def time_arg(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--project",
        default=os.environ.get("BIGQUERY_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT") or DEFAULT_PROJECT,
        help=f"Google Cloud project (default: $BIGQUERY_PROJECT, $GOOGLE_CLOUD_PROJECT, else {DEFAULT_PROJECT})",
    )
    parser.add_argument(
        "--ops-dataset",
        default=os.environ.get("OPS_DATASET") or DEFAULT_OPS_DATASET,
        help="operations dataset (default: $OPS_DATASET, else %(default)s)",
    )


def make_warehouse(project: str, ops_dataset: str) -> Warehouse:
    """The real BigQuery client; bqemulator when BIGQUERY_EMULATOR_HOST is set (as `make up` prints)."""
    from google.cloud import bigquery

    host = os.environ.get("BIGQUERY_EMULATOR_HOST")
    if host:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        client = bigquery.Client(
            project=project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=host),
        )
    else:
        client = bigquery.Client(project=project)
    return Warehouse(client, project, ops_dataset)


# --- output -----------------------------------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned first column, right-aligned numbers; plain text for a terminal."""
    cells = [[str(h) for h in headers], *[["-" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def now_utc() -> datetime:
    return datetime.now(UTC)
