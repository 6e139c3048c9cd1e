"""Put refused or dead-lettered messages back onto the topic, once the cause is fixed.

    python -m infra.ops.replay --topic personas-calls [--space S] [--error-class C] [--message-id ID ...]
        [--from T --to T] [--dead-letter-subscription SUB] [--dry-run]

Rejected calls come from `rejected_messages` (every filter given must match). A rejected call of a batch
is republished alone, in its envelope: ingest stores it as `{"batch": [that call], "sentAt": ...,
"context": ...}` (the envelope fields it applied to the call), so the replay routes by the envelope's
`context.personas.space_id` and derives the event time from its `sentAt` as the original delivery did,
and the calls of the batch that were written are not written again. A rejection whose stored data was cut
(`data_truncated`) is refused: what is left is not the message; republish it from its source. Dead
letters are pulled from the dead-letter subscription and acked only after their republish succeeded
(and was recorded); the ones that do not match the filters are handed back untouched.

Every republished message carries the original attributes (`space` included), `replay_of=<original
message id>` and `original_publish_time=<its publish time>` (kept from the first original through replays
of replays): ingest then gives the calls the original's received_at, so a replayed call lands as the
original delivery would have written it (same space, received_at, timestamp and day partition); only
`loaded_at` says when it was written. Each replay is a row of `<ops dataset>.replays` (created on first use), and a call
already replayed (outcome `published`) is skipped: running the command twice replays nothing twice.
What became of a replay: join `replays.new_message_id` to `rejected_messages.message_id` (refused
again), else its rows carry the call's own id as before. A replay refused again is not replayed by the
next run (that would chain replays of an unfixed cause forever): it is counted as "refused again", and
`--include-replays` replays such rejections too (each, again, only once).

Exit status: 0 done (or nothing to do); 1 something was refused or failed to publish; 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from tqdm import tqdm

from infra.ops import common, queries
from infra.ops.common import Pulled, Reader, Subscriber
from personas_warehouse.messages import ORIGINAL_PUBLISH_TIME, REPLAY_OF

REPLAYS = "replays"
REJECTED, DEAD_LETTER = "rejected", "dead_letter"
PUBLISHED, PUBLISH_FAILED = "published", "publish_failed"
PUBLISH_TIMEOUT = 60.0


class Publisher(Protocol):
    def publish(self, topic: str, data: bytes, **attrs: str) -> Any: ...


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


@dataclass(frozen=True)
class Filters:
    space: str | None = None
    error_class: str | None = None
    message_ids: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    include_replays: bool = False  # also rejections of messages that were themselves replays

    def matches_dead_letter(self, message: Pulled) -> bool:
        if self.error_class is not None:  # dead letters were never classified
            return False
        if self.space is not None and message.attributes.get("space") != self.space:
            return False
        if self.message_ids and message.message_id not in self.message_ids:
            return False
        published = common.original_publish_time(message)
        return not (
            (self.start is not None and published < self.start) or (self.end is not None and published >= self.end)
        )


@dataclass(frozen=True)
class Candidate:
    source: str
    message_id: str
    call_index: int | None
    space: str | None
    error_class: str | None
    data: bytes | None  # None: refused, see `refusal`
    attributes: dict[str, str]
    refusal: str | None = None
    ack_id: str | None = None
    published: datetime | None = None  # when the original was published (becomes the calls' received_at)

    def label(self) -> str:
        where = "" if self.call_index is None else f" call {self.call_index}"
        return f"{self.source} {self.message_id}{where} space={self.space or '?'} class={self.error_class or '-'}"


@dataclass
class Summary:
    dry_run: bool = False
    published: list[Candidate] = field(default_factory=list)
    already: int = 0
    refused_again: int = 0  # rejections of earlier replays, left alone (see --include-replays)
    refused: list[Candidate] = field(default_factory=list)
    failed: list[tuple[Candidate, str]] = field(default_factory=list)
    would: list[Candidate] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        return 1 if self.refused or self.failed else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "published": len(self.published),
            "already_replayed": self.already,
            "refused_again": self.refused_again,
            "refused": [
                {"message_id": c.message_id, "call_index": c.call_index, "why": c.refusal} for c in self.refused
            ],
            "failed": [{"message_id": c.message_id, "call_index": c.call_index, "error": e} for c, e in self.failed],
            "would_replay": [c.label() for c in self.would],
        }

    def line(self) -> str:
        if self.dry_run:
            return (
                f"dry run: would replay {len(self.would)}, already replayed {self.already}, "
                f"replays refused again {self.refused_again}, refused {len(self.refused)}"
            )
        return (
            f"replayed {len(self.published)}, already replayed {self.already}, "
            f"replays refused again {self.refused_again}, refused {len(self.refused)}, failed {len(self.failed)}"
        )


def replay_payload(data: str, call_index: int | None) -> bytes:
    """The bytes to publish: the stored data. A refused call of a batch is stored alone in its envelope
    (`{"batch": [call], ...}`), published as is; rows stored by older versions held the whole envelope
    (the call is cut out of it, with the envelope's other fields) or the bare call (published as is: its
    envelope's fields were not kept)."""
    raw = data.encode("utf-8")
    if call_index is None:
        return raw
    try:
        doc = json.loads(data)
    except ValueError:
        return raw
    batch = doc.get("batch") if isinstance(doc, dict) else None
    if isinstance(batch, list) and len(batch) > 1 and 0 <= call_index < len(batch):
        alone = {**doc, "batch": [batch[call_index]]}
        return json.dumps(alone, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return raw


def replay_attributes(original: dict[str, str], message_id: str, published: datetime | None) -> dict[str, str]:
    """The original attributes (space included) minus Pub/Sub's dead-letter bookkeeping, plus replay_of and
    original_publish_time (the first original's, when this replays a replay)."""
    kept = {k: v for k, v in original.items() if not k.startswith("CloudPubSubDeadLetter") and k != REPLAY_OF}
    if ORIGINAL_PUBLISH_TIME not in kept and published is not None:
        kept[ORIGINAL_PUBLISH_TIME] = common.iso(published) or ""
    return {**kept, REPLAY_OF: message_id}


def _candidate_from_rejection(row: dict[str, Any]) -> Candidate:
    try:
        attributes = {str(k): str(v) for k, v in json.loads(row["attributes"] or "{}").items()}
    except (ValueError, AttributeError):
        attributes = {}
    refusal = None
    if row["data_truncated"]:
        refusal = "its data was truncated when it was rejected; republish it from its source"
    elif row["error_class"] == "bad_base64":
        refusal = "its data was never valid base64; there is nothing to republish"
    elif row["data"] is None:
        refusal = "no data was stored"
    data = None if refusal else replay_payload(row["data"], row["call_index"])
    return Candidate(
        REJECTED,
        row["message_id"],
        row["call_index"],
        row["space"],
        row["error_class"],
        data,
        attributes,
        refusal,
        published=row["publish_time"],
    )


def _already_replayed(reader: Reader, message_ids: Iterable[str]) -> set[tuple[str, int | None, str]]:
    if REPLAYS not in reader.ops_tables():
        return set()
    done: set[tuple[str, int | None, str]] = set()
    for part in queries.chunks(sorted(set(message_ids))):
        for row in reader.run(queries.replayed(reader.project, reader.ops_dataset, part)):
            done.add((row["original_message_id"], row["call_index"], row["source"]))
    return done


def _publish(publisher: Publisher, topic: str, candidate: Candidate) -> tuple[str | None, str | None]:
    """(new message id, None) or (None, error)."""
    assert candidate.data is not None
    try:
        attributes = replay_attributes(candidate.attributes, candidate.message_id, candidate.published)
        future = publisher.publish(topic, candidate.data, **attributes)
        return str(future.result(timeout=PUBLISH_TIMEOUT)), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _record(
    reader: Reader, candidate: Candidate, new_id: str | None, error: str | None, now: Callable[[], datetime]
) -> None:
    row = {
        "original_message_id": candidate.message_id,
        "call_index": candidate.call_index,
        "new_message_id": new_id,
        "replayed_at": common.iso(now()),
        "source": candidate.source,
        "outcome": PUBLISHED if new_id else PUBLISH_FAILED,
        "space": candidate.space,
        "error_class": candidate.error_class,
        "error": error,
    }
    insert_id = f"{candidate.source}:{candidate.message_id}:{candidate.call_index}:{new_id or 'failed'}"
    reader.insert_ops(REPLAYS, [row], [insert_id])


def replay_rejected(
    reader: Reader,
    publisher: Publisher | None,
    topic: str,
    filters: Filters,
    *,
    dry_run: bool = False,
    progress: Callable[[int], Progress] | None = None,
    now: Callable[[], datetime] = common.now_utc,
    summary: Summary | None = None,
) -> Summary:
    """Republish the rejected calls matching `filters` that were not replayed before."""
    summary = summary or Summary(dry_run=dry_run)
    if "rejected_messages" not in reader.ops_tables():
        return summary
    query = queries.rejected_to_replay(
        reader.project,
        reader.ops_dataset,
        space=filters.space,
        error_class=filters.error_class,
        message_ids=filters.message_ids,
        start=filters.start,
        end=filters.end,
    )
    candidates: dict[tuple[str, int | None], Candidate] = {}
    for row in reader.run(query):  # a redelivered rejected message may have been recorded twice
        candidates.setdefault((row["message_id"], row["call_index"]), _candidate_from_rejection(row))
    done = _already_replayed(reader, (m for m, _ in candidates))
    todo = []
    for (message_id, call_index), candidate in candidates.items():
        if (message_id, call_index, REJECTED) in done:
            summary.already += 1
        elif REPLAY_OF in candidate.attributes and not filters.include_replays:
            summary.refused_again += 1
        elif candidate.refusal:
            summary.refused.append(candidate)
        else:
            todo.append(candidate)
    if dry_run:
        summary.would.extend(todo)
        return summary
    if not todo:
        return summary
    assert publisher is not None
    reader.ensure_ops_table(REPLAYS)
    bar = progress(len(todo)) if progress else None
    try:
        for candidate in todo:
            new_id, error = _publish(publisher, topic, candidate)
            _record(reader, candidate, new_id, error, now)
            if new_id:
                summary.published.append(candidate)
            else:
                summary.failed.append((candidate, error or ""))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return summary


def replay_dead_letters(
    reader: Reader,
    publisher: Publisher | None,
    topic: str,
    subscriber: Subscriber,
    subscription: str,
    filters: Filters,
    *,
    dry_run: bool = False,
    progress: Callable[[int | None], Progress] | None = None,
    now: Callable[[], datetime] = common.now_utc,
    summary: Summary | None = None,
) -> Summary:
    """Republish what waits in the dead-letter subscription. Acks a message only once its republish
    succeeded and was recorded (or it had been replayed before: a run stopped between the two); hands
    back everything else (dry run, filtered out, failed) when done. Leases are held until then, so a
    message is seen once per run."""
    summary = summary or Summary(dry_run=dry_run)
    seen: set[str] = set()
    give_back: list[str] = []
    bar = progress(None) if progress else None
    created = False
    try:
        while True:
            batch = [m for m in common.pull_batch(subscriber, subscription) if m.message_id not in seen]
            if not batch:
                break
            seen.update(m.message_id for m in batch)
            done = _already_replayed(reader, (m.message_id for m in batch))
            ack: list[str] = []
            for message in batch:
                candidate = Candidate(
                    DEAD_LETTER,
                    message.message_id,
                    None,
                    message.attributes.get("space"),
                    None,
                    message.data,
                    message.attributes,
                    ack_id=message.ack_id,
                    published=common.original_publish_time(message),
                )
                if not filters.matches_dead_letter(message):
                    give_back.append(message.ack_id)
                elif (message.message_id, None, DEAD_LETTER) in done:
                    summary.already += 1
                    (give_back if dry_run else ack).append(message.ack_id)
                elif dry_run:
                    summary.would.append(candidate)
                    give_back.append(message.ack_id)
                else:
                    assert publisher is not None
                    if not created:
                        reader.ensure_ops_table(REPLAYS)
                        created = True
                    new_id, error = _publish(publisher, topic, candidate)
                    _record(reader, candidate, new_id, error, now)
                    if new_id:
                        summary.published.append(candidate)
                        ack.append(message.ack_id)
                    else:
                        summary.failed.append((candidate, error or ""))
                        give_back.append(message.ack_id)
                    if bar is not None:
                        bar.update(1)
            common.acknowledge(subscriber, subscription, ack)
    finally:
        common.release(subscriber, subscription, give_back)
        if bar is not None:
            bar.close()
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra.ops.replay",
        description="Republish rejected and dead-lettered messages (each once) after fixing the cause.",
        epilog="Uses the emulators when PUBSUB_EMULATOR_HOST / BIGQUERY_EMULATOR_HOST are set.",
    )
    parser.add_argument("--topic", required=True, help="topic ID, or a full projects/P/topics/T path")
    parser.add_argument("--space", help="only rejections (and dead letters) of this space")
    parser.add_argument("--error-class", help="only rejections of this class (dead letters have none)")
    parser.add_argument("--message-id", nargs="+", default=[], metavar="ID", help="only these Pub/Sub message ids")
    parser.add_argument("--from", dest="start", type=common.time_arg, metavar="T", help="published at or after T")
    parser.add_argument("--to", dest="end", type=common.time_arg, metavar="T", help="published before T")
    parser.add_argument("--dead-letter-subscription", metavar="SUB", help="also replay what waits in this subscription")
    parser.add_argument(
        "--include-replays", action="store_true", help="also replay rejections of earlier replays (refused again)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be replayed; change nothing")
    parser.add_argument("--json", action="store_true", help="machine-readable summary")
    common.add_common_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    filters = Filters(args.space, args.error_class, tuple(args.message_id), args.start, args.end, args.include_replays)
    reader = common.make_warehouse(args.project, args.ops_dataset)
    publisher = None if args.dry_run else common.make_publisher()
    topic = common.topic_path(args.project, args.topic)

    def bar(total: int | None) -> Progress:
        return tqdm(total=total, unit="msg", file=sys.stderr, disable=not sys.stderr.isatty())  # type: ignore[no-any-return]

    summary = replay_rejected(reader, publisher, topic, filters, dry_run=args.dry_run, progress=bar)
    if args.dead_letter_subscription:
        subscription = common.subscription_path(args.project, args.dead_letter_subscription)
        replay_dead_letters(
            reader,
            publisher,
            topic,
            common.make_subscriber(),
            subscription,
            filters,
            dry_run=args.dry_run,
            progress=bar,
            summary=summary,
        )
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        for candidate in summary.would:
            print(f"would replay {candidate.label()} ({len(candidate.data or b'')} bytes)")
        for candidate in summary.refused:
            print(f"REFUSED {candidate.label()}: {candidate.refusal}")
        for candidate, error in summary.failed:
            print(f"FAILED  {candidate.label()}: {error}")
        print(summary.line())
    return summary.exit_status


if __name__ == "__main__":
    sys.exit(main())
