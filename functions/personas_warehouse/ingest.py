"""Ingest one Pub/Sub message: decode, shape, write, record. Returns only when every row, discard and
rejection is durably in BigQuery (then the caller acks); raises when the message must be redelivered."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from personas_warehouse import naming, values
from personas_warehouse.bigquery import Deadline, Warehouse
from personas_warehouse.errors import ErrorClass, Rejection, TransientError
from personas_warehouse.forget import drop_suppressed
from personas_warehouse.logs import log
from personas_warehouse.messages import PubSubMessage, RoutedCall, alone_in_envelope, batch_of, decode, received_at
from personas_warehouse.settings import Settings
from personas_warehouse.shaping import DISCARDS, Discard, PendingRow, discard_rows, fit_rows, plan_columns, shape
from personas_warehouse.spaces import catalog_of
from schemas.tables import spec

REJECTED_MESSAGES = "rejected_messages"


@dataclass
class Outcome:
    """What happened to one message (also the HTTP-free summary tests read)."""

    rows: dict[str, int] = field(default_factory=dict)  # "personas_default.identifies" -> count
    discards: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    suppressed: int = 0  # calls of forgotten ids, dropped unstored (forget.py)


def ingest(
    message: PubSubMessage,
    warehouse: Warehouse,
    settings: Settings,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Outcome:
    deadline = Deadline(settings.ingest_deadline_seconds)
    decoded = decode(message, settings)
    # Calls of forgotten ids (python -m infra.ops.forget) are dropped here: acked, stored nowhere, counted.
    decoded, suppressed = drop_suppressed(decoded, warehouse, settings, deadline)
    outcome = Outcome(rejections=list(decoded.rejections), suppressed=suppressed)
    admitted = _admitted(decoded.calls, outcome, warehouse, settings, deadline)
    arrived = received_at(message)
    pending = [
        row
        for routed in admitted
        for row in shape(routed, received_at=arrived, insert_prefix=message.message_id)
        if settings.space(routed.space).table_enabled(row.table)
    ]
    loaded_at = values.format_timestamp(now())
    discards: list[Discard] = []
    for (space, table, kind), rows in _groups(pending).items():
        dataset = naming.space_dataset(space)
        config = settings.space(space)
        schema = warehouse.ensure_table(dataset, table, spec(kind), deadline)
        new = plan_columns(rows, schema, config, settings.max_columns_per_table)
        if new:
            schema = warehouse.add_columns(dataset, table, new, deadline)
        fitted = fit_rows(rows, schema, config, loaded_at)
        refused_ids = set()
        for refusal in warehouse.insert(dataset, table, fitted.rows, fitted.insert_ids, deadline):
            row = rows[refusal.index]
            refused_ids.add(row.row_id)
            errors = {f"{table}.{e.get('location') or '_row'}": [str(e.get("message", e))] for e in refusal.errors}
            outcome.rejections.append(Rejection(ErrorClass.ROW_REFUSED, errors, row.call_index, space))
        outcome.rows[f"{dataset}.{table}"] = len(rows) - len(refused_ids)
        discards.extend(d for d in fitted.discards if d.row_id not in refused_ids)
    for space, items in _by_space(discards, settings).items():
        dataset = naming.space_dataset(space)
        warehouse.ensure_table(dataset, DISCARDS, spec(DISCARDS), deadline)
        out = discard_rows(items, loaded_at)
        if warehouse.insert(dataset, DISCARDS, out.rows, out.insert_ids, deadline):
            raise TransientError(f"BigQuery refused rows of {dataset}.{DISCARDS}")
        outcome.discards += len(items)
    if outcome.rejections:
        record_rejections(message, decoded.data, outcome.rejections, warehouse, settings, deadline, loaded_at)
    _log_outcome(message, admitted, pending, discards, outcome.rejections)
    return outcome


def _admitted(
    calls: list[RoutedCall], outcome: Outcome, warehouse: Warehouse, settings: Settings, deadline: Deadline
) -> list[RoutedCall]:
    """The calls whose space the space policy allows; the others become `space_refused` rejections (kept
    with their space, so `replay --space` finds them once the policy allows it)."""
    catalog = catalog_of(warehouse)
    kept = []
    for routed in calls:
        reason = catalog.refusal(routed.space, settings, deadline)
        if reason is None:
            kept.append(routed)
        else:
            outcome.rejections.append(
                Rejection(ErrorClass.SPACE_REFUSED, {"space": [reason]}, routed.index, routed.space)
            )
    return kept


def _by_space(discards: Iterable[Discard], settings: Settings) -> dict[str, list[Discard]]:
    grouped: dict[str, list[Discard]] = {}
    for item in discards:
        if settings.space(item.space).table_enabled(DISCARDS):
            grouped.setdefault(item.space, []).append(item)
    return grouped


def _log_outcome(
    message: PubSubMessage,
    calls: list[RoutedCall],
    pending: list[PendingRow],
    discards: list[Discard],
    rejections: list[Rejection],
) -> None:
    """A WARNING line per call that lost values (its discards) and per rejection (with the reasons).
    A call written whole gets no line of its own: the request's line (app) counts it, since a line per
    call is what Cloud Logging bills at volume."""
    lost: dict[tuple[str, str], int] = {}
    for item in discards:
        lost[(item.space, item.row_id)] = lost.get((item.space, item.row_id), 0) + 1
    refused = {r.call_index for r in rejections}
    for routed in calls:
        count = lost.get((routed.space, routed.call.message_id), 0)
        if not count or routed.index in refused:
            continue
        log(
            "WARNING",
            "call written with discards",
            pubsub_message_id=message.message_id,
            call_index=routed.index,
            space=routed.space,
            table=",".join(row.table for row in pending if row.call_index == routed.index),
            outcome="written",
            discards=count,
        )
    for rejection in rejections:
        log(
            "WARNING",
            "call rejected",
            pubsub_message_id=message.message_id,
            call_index=rejection.call_index,
            space=rejection.space,
            outcome=str(rejection.error_class),
            errors=rejection.errors,
        )


def _groups(rows: Iterable[PendingRow]) -> dict[tuple[str, str, str], list[PendingRow]]:
    groups: dict[tuple[str, str, str], list[PendingRow]] = {}
    for row in rows:
        groups.setdefault((row.space, row.table, row.kind), []).append(row)
    return groups


def _stored_data(
    message: PubSubMessage,
    data: bytes,
    batch: tuple[list[Any], dict[str, Any]] | None,
    call_index: int | None,
    limit: int,
) -> tuple[str, bool]:
    """The data a rejection is about, cut to `limit` bytes: one call of a batch is that call alone in the
    batch's envelope (`{"batch": [call], "sentAt": ..., "context": ...}`: the call re-serialized, with the
    envelope fields decode applied to it), which replays as the original delivery decoded it; anything
    else is the message data, UTF-8 text when it is text, else the base64 as delivered."""
    if call_index is not None and batch is not None and 0 <= call_index < len(batch[0]):
        text = values.json_text(alone_in_envelope(batch[0][call_index], batch[1]))
    else:
        try:
            text = data.decode("utf-8") if data else message.data_b64
        except UnicodeDecodeError:
            text = message.data_b64
    cut = text.encode("utf-8")[:limit].decode("utf-8", "ignore")
    return cut, len(cut) < len(text)


def _per_call(rejections: list[Rejection]) -> list[Rejection]:
    """One rejection per call (or one for the whole message): a call refused by two tables (tracks and
    its event table) is one row with both tables' errors, and its insert id stays unique."""
    merged: dict[int | None, Rejection] = {}
    for rejection in rejections:
        first = merged.get(rejection.call_index)
        if first is None:
            merged[rejection.call_index] = rejection
            continue
        errors = {path: list(reasons) for path, reasons in first.errors.items()}
        for path, reasons in rejection.errors.items():
            errors.setdefault(path, []).extend(reasons)
        merged[rejection.call_index] = replace(first, errors=errors)
    return list(merged.values())


def record_rejections(
    message: PubSubMessage,
    data: bytes,
    rejections: list[Rejection],
    warehouse: Warehouse,
    settings: Settings,
    deadline: Deadline,
    received_at: str,
) -> None:
    """One rejected_messages row per refused call (or one for the whole message). Each row stores the data
    it is about, so a message's data is stored once however many of its calls are refused."""
    per_call = _per_call(rejections)
    needs_calls = any(r.call_index is not None for r in per_call)
    batch = batch_of(data) if needs_calls else None
    rows: list[dict[str, Any]] = []
    ids: list[str] = []
    for rejection in per_call:
        stored, truncated = _stored_data(message, data, batch, rejection.call_index, settings.max_rejected_data_bytes)
        rows.append(
            {
                "message_id": message.message_id,
                "publish_time": values.format_timestamp(message.publish_time),
                "subscription": message.subscription,
                "call_index": rejection.call_index,
                "space": rejection.space,
                "error_class": str(rejection.error_class),
                "errors": json.dumps(rejection.errors, sort_keys=True),
                "attributes": json.dumps(dict(message.attributes), sort_keys=True),
                "data": stored,
                "data_truncated": truncated,
                "received_at": received_at,
            }
        )
        ids.append(f"{message.message_id}:{rejection.call_index}")
    dataset = settings.ops_dataset
    warehouse.ensure_table(dataset, REJECTED_MESSAGES, spec(REJECTED_MESSAGES), deadline)
    refused = warehouse.insert(dataset, REJECTED_MESSAGES, rows, ids, deadline)
    if refused:
        raise TransientError(f"BigQuery refused rows of {dataset}.{REJECTED_MESSAGES}: {refused}")
