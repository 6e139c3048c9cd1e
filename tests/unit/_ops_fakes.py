"""In-memory stand-ins for what the operator commands talk to: BigQuery (answering each `Query` by its
kind, from rows held in memory, applying the query's parameters as the SQL would), a Pub/Sub publisher
and a pull subscriber with leases. The SQL text itself is exercised against bqemulator by
tests/integration/test_ops_e2e.py."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from infra.ops.common import Pulled
from infra.ops.queries import Query, partition_field

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _space(row: dict[str, Any]) -> str | None:
    """COALESCE(space, JSON_VALUE(attributes, '$.space')), as queries.REJECTED_SPACE."""
    return row["space"] or json.loads(row["attributes"] or "{}").get("space")


@dataclass
class FakeReader:
    project: str = "personas-test"
    ops_dataset: str = "personas__ops"
    raw: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    ops: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    extra_tables: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    queries: list[Query] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    # --- set-up helpers ---
    def row(self, space: str, table: str, id: str, at: datetime = T0, loaded: datetime | None = None) -> None:
        self.raw[(space, table)].append({"id": id, "received_at": at, "loaded_at": loaded or at})

    def discard(self, space: str, table: str, column: str, loaded: datetime = T0) -> None:
        self.raw[(space, "discards")].append({"table_name": table, "column_name": column, "loaded_at": loaded})

    def reject(self, message_id: str, call_index: int | None, error_class: str, space: str | None, **more: Any) -> None:
        """A rejected_messages row; `space` goes to the attribute too (pass space_column=None for a call
        refused before routing, whose space column is null)."""
        row = {
            "message_id": message_id,
            "call_index": call_index,
            "error_class": error_class,
            "space": space,
            "publish_time": T0,
            "received_at": T0,
            "attributes": json.dumps({"space": space} if space else {}),
            "space_column": space,
            "data": '{"type":"identify","messageId":"x"}',
            "data_truncated": False,
        }
        row.update(more)
        row["space"] = row.pop("space_column")
        self.ops.setdefault("rejected_messages", []).append(row)

    def sync(
        self, space: str, status: str, started: datetime, watermark: datetime | None, table: str | None = "users"
    ) -> None:
        self.ops.setdefault("sync_history", []).append(
            {
                "space": space,
                "table_name": table,
                "status": status,
                "started_at": started,
                "finished_at": started,
                "watermark_to": watermark,
            }
        )

    # --- the Reader protocol ---
    def space_tables(self) -> dict[str, frozenset[str]]:
        out: dict[str, set[str]] = defaultdict(set)
        for space, table in self.raw:
            out[space].add(table)
        for space, tables in self.extra_tables.items():
            out[space] |= tables
        return {s: frozenset(t) for s, t in out.items()}

    def ops_tables(self) -> frozenset[str]:
        return frozenset(self.ops)

    def ensure_ops_table(self, kind: str) -> None:
        self.created.append(kind)
        self.ops.setdefault(kind, [])

    def insert_ops(self, kind: str, rows: list[dict[str, Any]], row_ids: list[str]) -> None:
        assert kind in self.ops, f"{kind} written before it was created"
        self.ops[kind].extend(rows)

    def run(self, query: Query) -> list[dict[str, Any]]:
        self.queries.append(query)
        return getattr(self, "_" + query.kind)(query)

    # --- one answer per query kind ---
    def _tables(self, query: Query) -> list[tuple[str, str]]:
        """(space, table) of every UNION ALL part, read back from the SQL the way BigQuery would."""
        spaces = {p.name: p.value for p in query.params if p.name.startswith("s") and p.name[1:].isdigit()}
        parts = []
        for part in query.sql.split("UNION ALL"):
            name = part.split("AS space")[0].split("@")[-1].strip()
            table = part.split("FROM `")[1].split("`")[0].split(".")[-1]
            parts.append((spaces[name], table))
        return parts

    def _bounded(self, query: Query, space: str, table: str) -> list[dict[str, Any]]:
        """The rows of a table in the partitions the query reads (its partition column >= @since)."""
        since, column = query.param("since"), partition_field(table)
        return [r for r in self.raw.get((space, table), []) if r[column] >= since]

    def _raw_id_counts(self, query: Query) -> list[dict[str, Any]]:
        ids = set(query.param("ids"))
        counts: Counter[tuple[str, str]] = Counter()
        for space, table in self._tables(query):
            counts.update((space, r["id"]) for r in self._bounded(query, space, table) if r["id"] in ids)
        return [{"space": s, "id": i, "n": n} for (s, i), n in counts.items()]

    def _rejections_by_message(self, query: Query) -> list[dict[str, Any]]:
        ids, since = set(query.param("ids")), query.param("since")
        keys = {
            (r["message_id"], r["call_index"], _space(r), r["error_class"])
            for r in self.ops.get("rejected_messages", [])
            if r["message_id"] in ids and r["received_at"] >= since
        }
        return [dict(zip(("message_id", "call_index", "space", "error_class"), k, strict=True)) for k in keys]

    def _raw_window(self, query: Query) -> list[dict[str, Any]]:
        start, end = query.param("start"), query.param("end")
        rows: Counter[str] = Counter()
        ids: dict[str, set[str]] = defaultdict(set)
        for space, table in self._tables(query):
            for r in self._bounded(query, space, table):
                if start <= r["received_at"] < end:
                    rows[space] += 1
                    ids[space].add(r["id"])
        return [{"space": s, "n_rows": n, "calls": len(ids[s])} for s, n in rows.items()]

    def _rejections_window(self, query: Query) -> list[dict[str, Any]]:
        start, end, since = query.param("start"), query.param("end"), query.param("since")
        keys = {
            (r["message_id"], r["call_index"], _space(r), r["error_class"])
            for r in self.ops.get("rejected_messages", [])
            if start <= r["publish_time"] < end and r["received_at"] >= since
        }
        counts = Counter((k[2], k[3]) for k in keys)
        return [{"space": s, "error_class": c, "n": n} for (s, c), n in counts.items()]

    def _rejections_since(self, query: Query) -> list[dict[str, Any]]:
        since = query.param("since")
        counts = Counter(
            (_space(r), r["error_class"]) for r in self.ops.get("rejected_messages", []) if r["received_at"] >= since
        )
        return [{"space": s, "error_class": c, "n": n} for (s, c), n in counts.items()]

    def _last_syncs(self, query: Query) -> list[dict[str, Any]]:
        ok, since = set(query.param("ok")), query.param("since")
        by_table: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in self.ops.get("sync_history", []):
            if r["started_at"] >= since:
                by_table[(r["space"], r["table_name"] or "users")].append(r)
        out = []
        for (space, name), runs in by_table.items():
            good = [r for r in runs if r["status"] in ok]
            newest = max(runs, key=lambda r: r["started_at"])
            out.append(
                {
                    "space": space,
                    "table_name": name,
                    "last_success": max((r["finished_at"] for r in good), default=None),
                    "watermark_to": max((r["watermark_to"] for r in good if r["watermark_to"]), default=None),
                    "last_run": newest["started_at"],
                    "last_status": newest["status"],
                }
            )
        return out

    def _duplicate_keys(self, query: Query) -> list[dict[str, Any]]:
        out = []
        for space, table in self._tables(query):
            ids = [r["id"] for r in self.raw.get((space, table), [])]
            out.append({"space": space, "n_rows": len(ids), "ids": len(set(ids))})
        return out

    def _rows_written(self, query: Query) -> list[dict[str, Any]]:
        hour, day = query.param("hour"), query.param("day")
        out: dict[str, dict[str, Any]] = {}
        for space, table in self._tables(query):
            for r in self.raw.get((space, table), []):
                if r["loaded_at"] >= day:
                    e = out.setdefault(space, {"space": space, "last_hour": 0, "last_day": 0})
                    e["last_day"] += 1
                    e["last_hour"] += r["loaded_at"] >= hour
        return list(out.values())

    def _discard_columns(self, query: Query) -> list[dict[str, Any]]:
        since = query.param("since")
        counts: Counter[tuple[str, str, str]] = Counter()
        for space, table in self._tables(query):
            counts.update(
                (space, r["table_name"], r["column_name"])
                for r in self.raw.get((space, table), [])
                if r["loaded_at"] >= since
            )
        return [{"space": s, "table_name": t, "column_name": c, "n": n} for (s, t, c), n in counts.most_common()]

    def _rejected_to_replay(self, query: Query) -> list[dict[str, Any]]:
        params = {p.name: p.value for p in query.params}
        out = []
        for r in self.ops.get("rejected_messages", []):
            if "space" in params and _space(r) != params["space"]:
                continue
            if "error_class" in params and r["error_class"] != params["error_class"]:
                continue
            if "ids" in params and r["message_id"] not in params["ids"]:
                continue
            if "start" in params and r["publish_time"] < params["start"]:
                continue
            if "end" in params and r["publish_time"] >= params["end"]:
                continue
            out.append({**r, "space": _space(r)})
        return out

    def _replayed(self, query: Query) -> list[dict[str, Any]]:
        ids, outcome = set(query.param("ids")), query.param("outcome")
        keys = {
            (r["original_message_id"], r["call_index"], r["source"])
            for r in self.ops.get("replays", [])
            if r["outcome"] == outcome and r["original_message_id"] in ids
        }
        return [dict(zip(("original_message_id", "call_index", "source"), k, strict=True)) for k in keys]


class FakePublisher:
    """Resolves each publish at once with ids new-1, new-2, ...; `fail` picks data whose publish fails."""

    def __init__(self, fail: Any = None) -> None:
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.fail = fail or (lambda data: False)

    def publish(self, topic: str, data: bytes, **attrs: str) -> Future[str]:
        future: Future[str] = Future()
        if self.fail(data):
            future.set_exception(RuntimeError("503 unavailable"))
        else:
            self.published.append((topic, data, attrs))
            future.set_result(f"new-{len(self.published)}")
        return future


@dataclass
class _Msg:
    message_id: str
    data: bytes
    attributes: dict[str, str]
    publish_time: datetime


class FakeSubscriber:
    """A pull subscription: a pulled message is leased (not pulled again) until acked (gone) or its
    deadline is set to 0 (back in the subscription)."""

    def __init__(self, messages: list[_Msg] | None = None, batch: int = 2) -> None:
        self.messages: dict[str, _Msg] = {m.message_id: m for m in messages or []}
        self.leased: set[str] = set()
        self.acked: list[str] = []
        self.batch = batch
        self.pulls = 0

    @staticmethod
    def message(message_id: str, data: bytes = b"{}", at: datetime = T0, **attributes: str) -> _Msg:
        return _Msg(message_id, data, attributes, at)

    def pull(self, request: dict[str, Any], timeout: float | None = None) -> Any:
        self.pulls += 1
        free = [m for k, m in self.messages.items() if k not in self.leased][: min(self.batch, request["max_messages"])]
        self.leased.update(m.message_id for m in free)
        received = [
            type("Received", (), {"ack_id": "ack-" + m.message_id, "message": _Proto(m)})()  # shaped like the client's
            for m in free
        ]
        return type("PullResponse", (), {"received_messages": received})()

    def acknowledge(self, request: dict[str, Any]) -> None:
        for ack_id in request["ack_ids"]:
            message_id = ack_id.removeprefix("ack-")
            self.acked.append(message_id)
            self.messages.pop(message_id, None)
            self.leased.discard(message_id)

    def modify_ack_deadline(self, request: dict[str, Any]) -> None:
        assert request["ack_deadline_seconds"] == 0
        for ack_id in request["ack_ids"]:
            self.leased.discard(ack_id.removeprefix("ack-"))


class _Proto:
    def __init__(self, m: _Msg) -> None:
        self.message_id, self.data, self.attributes, self.publish_time = (
            m.message_id,
            m.data,
            m.attributes,
            m.publish_time,
        )


def pulled(message_id: str, **attributes: str) -> Pulled:
    return Pulled("ack-" + message_id, message_id, b"{}", attributes, T0)
