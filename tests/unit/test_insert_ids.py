"""Every row's insert id depends on the message alone, on every path: the same messages, decoded and
shaped in processes with different hash seeds (PYTHONHASHSEED changes the order of a `set`, which
marshmallow used for the extra keys of `context`), give the same rows, discards and insert ids. A
redelivery handled by another instance then writes the same ids, which BigQuery (insertAll) drops and
the `<table>_view` views collapse.

The messages take both decode paths (the plain-Python fast path and marshmallow's), and carry what
makes discards: context keys that collide on one column (`a.b` and `{"a": {"b"}}`), values that do not
fit their column, and columns past the table's budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from personas_warehouse.messages import PubSubMessage, decode
from personas_warehouse.settings import Settings, SpaceConfig
from personas_warehouse.shaping import discard_rows, fit_rows, shape
from schemas.calls import common_call
from schemas.tables import spec
from tests.unit._support import message

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ("0", "1", "2", "3", "4", "5")
CONTEXT = {
    "zeta": {"deep": "x", "other": 1},
    "alpha": "not a bool",
    "a.b": "x",
    "mid": [1, 2],
    "a": {"b": "y", "c": {"d": True}},
    "personas": {"space_id": "spa_1", "x.y": 1, "x": {"y": 2}, "computation_key": "k", "kappa": "z"},
    "library": {"name": "analytics-node", "version": "6.0.0"},
    "a_b": 3,
}
TRAITS = {"score": "high", "first_time_shopper": True, "t.u": 1, "t": {"u": 2}}


def calls() -> list[dict[str, Any]]:
    identify = {"type": "identify", "messageId": "m-1", "userId": "u-1", "context": CONTEXT, "traits": TRAITS}
    track = {
        "type": "track",
        "messageId": "m-2",
        "userId": "u-1",
        "event": "Audience Entered",
        "context": CONTEXT,
        "properties": {"audience_key": "aud", "aud": True, **TRAITS},
    }
    # A numeric userId is not the common shape: marshmallow decodes these.
    return [identify, track, {**identify, "messageId": "m-3", "userId": 42}, {**track, "messageId": "m-4", "userId": 7}]


# The tables as BigQuery has them: some context columns exist with other types, the rest are over budget.
SCHEMAS = {
    kind: {
        **{c.name: c.type for c in spec(kind).columns},
        "context_alpha": "BOOL",
        "context_a_b": "INT64",
        "context_personas_x_y": "INT64",
        "score": "INT64",
        "first_time_shopper": "BOOL",
        "t_u": "INT64",
    }
    for kind in ("identifies", "tracks", "track_event")
}


def insert_ids() -> list[list[Any]]:
    """[table, insert ids of the rows, [insert id, key, reason, value] of each discard, the row's columns]
    for every row of every call, each call in a message of its own and then all of them in one batch."""
    settings = Settings()
    published = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    documents: list[Any] = [*calls(), {"batch": calls()}]
    out: list[list[Any]] = []
    for n, document in enumerate(documents):
        pubsub: PubSubMessage = message(document, message_id=f"pubsub-{n}")
        decoded = decode(pubsub, settings)
        assert not decoded.rejections, decoded.rejections
        for routed in decoded.calls:
            for row in shape(routed, received_at=published, insert_prefix=pubsub.message_id):
                fitted = fit_rows([row], SCHEMAS[row.kind], SpaceConfig(), "2026-12-01T12:00:01.000000Z")
                discards = discard_rows(fitted.discards, "2026-12-01T12:00:01.000000Z")
                lost = [
                    [i, d.key, str(d.reason), d.raw] for i, d in zip(discards.insert_ids, fitted.discards, strict=True)
                ]
                out.append([row.table, fitted.insert_ids, lost, list(fitted.rows[0])])
    return out


def in_process_with_seed(seed: str) -> list[list[Any]]:
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": f"{ROOT / 'functions'}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, "-c", "import json, tests.unit.test_insert_ids as t; print(json.dumps(t.insert_ids()))"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_the_messages_take_both_decode_paths_and_make_colliding_discards() -> None:
    paths = [common_call(call) is not None for call in calls()]
    assert paths == [True, True, False, False]
    ids = insert_ids()
    same_key = [[key for _, key, *_ in lost if [k for _, k, *_ in lost].count(key) > 1] for _, _, lost, _ in ids]
    assert any(same_key), "no two discards of one row share a key path: the ordinal is not exercised"
    reasons = {reason for _, _, lost, _ in ids for _, _, reason, _ in lost}
    assert reasons == {"type_conflict", "name_collision", "column_limit"}


def test_insert_ids_are_the_same_in_processes_with_different_hash_seeds() -> None:
    here = insert_ids()
    for seed in SEEDS:
        assert in_process_with_seed(seed) == here, f"PYTHONHASHSEED={seed}"


def test_both_decode_paths_shape_the_same_call_alike() -> None:
    """The marshmallow copies (pubsub-2, pubsub-3) of the fast-path calls (pubsub-0, pubsub-1) differ only
    by their ids: their columns and discards come out in the same order, with the same keys and reasons."""
    by_message: dict[str, list[Any]] = {}
    for table, row_ids, lost, columns in insert_ids():
        shaped = (table, [item[1:] for item in lost], columns)
        by_message.setdefault(row_ids[0].split(":")[0], []).append(shaped)
    assert by_message["pubsub-0"] + by_message["pubsub-1"] == by_message["pubsub-2"] + by_message["pubsub-3"]
