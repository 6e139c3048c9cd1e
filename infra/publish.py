"""Publish Segment Personas calls from a JSON-lines file to Pub/Sub, for demos, backfills and replays.

    python -m infra.publish calls.jsonl [--batch 100] [--attribute space=marketing] [--project P] [--topic T]
        [--ids-file published.jsonl]

One call per line (`-` reads stdin). Each line is checked locally: one that is not a JSON object is refused
with its line number and never published, rather than becoming an anonymous row in the ingest function's
rejection table. Talks to the emulator when PUBSUB_EMULATOR_HOST is set (the client reads it), else to
Pub/Sub with application-default credentials.

`--ids-file` records every confirmed message as a JSON line `{"pubsub_id", "call_ids", "space",
"published_after"}` (the call messageIds it carried, in order; `space` is the attribute, or null; the time
publishing started, from which reconcile reads the tables) for `python -m infra.ops.reconcile`.

Exit status: 0 all published; 1 a line was refused or a publish failed; 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, Protocol

import google.auth.exceptions
from google.cloud import pubsub_v1
from tqdm import tqdm

from schemas.calls import loads_strict

DEFAULT_PROJECT = "personas-local"
DEFAULT_TOPIC = "personas-calls"

# Fixed, not flags: large enough batches for throughput, small enough latency that a short file is quick.
BATCH_SETTINGS = pubsub_v1.types.BatchSettings(max_messages=500, max_bytes=1_000_000, max_latency=0.05)
# Block reading input once this much is unconfirmed, so a huge file does not end up queued in memory.
# The byte limit must stay above the largest message, or BLOCK turns into an error.
PUBLISHER_OPTIONS = pubsub_v1.types.PublisherOptions(
    flow_control=pubsub_v1.types.PublishFlowControl(
        message_limit=10 * BATCH_SETTINGS.max_messages,
        byte_limit=50_000_000,
        limit_exceeded_behavior=pubsub_v1.types.LimitExceededBehavior.BLOCK,
    )
)

# Pub/Sub rejects publish requests over 10 MB; keep room for the topic name and framing. Checked here
# because the client raises synchronously past it and (2.44.0) never releases the flow-control budget.
MAX_MESSAGE_BYTES = 9_990_000
PROGRESS_THRESHOLD_LINES = 1000

# PublisherClient.publish() takes attributes as **kwargs next to these parameters, so they cannot be keys.
_CLIENT_KEYWORDS = frozenset({"topic", "data", "ordering_key", "retry", "timeout"})
_ENVELOPE_OPEN, _ENVELOPE_CLOSE = b'{"batch":[', b"]}"
_ENVELOPE_BYTES = len(_ENVELOPE_OPEN) + len(_ENVELOPE_CLOSE)


class Publisher(Protocol):
    """What publish_lines needs: PublisherClient, or a fake in tests."""

    def publish(self, topic: str, data: bytes, **attrs: str) -> Future[Any]: ...


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...


@dataclass(frozen=True)
class Refusal:
    line: int
    reason: str


@dataclass(frozen=True)
class Failure:
    first_line: int
    last_line: int
    calls: int
    error: str


@dataclass
class Summary:
    """Counts for the final report; the lists say which lines to look at."""

    messages: int = 0  # confirmed published
    calls: int = 0  # calls inside those messages
    refused: list[Refusal] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)

    @property
    def failed_calls(self) -> int:
        return sum(f.calls for f in self.failed)

    @property
    def exit_status(self) -> int:
        return 1 if self.refused or self.failed else 0

    def line(self) -> str:
        return (
            f"published {self.messages} messages ({self.calls} calls), refused {len(self.refused)} lines, "
            f"failed {len(self.failed)} messages ({self.failed_calls} calls)"
        )


class _Refused(ValueError):
    pass


def encode_call(raw: str | bytes) -> bytes:
    """One line as compact UTF-8 JSON. Parses as strictly as the ingest function (no NaN, no Infinity),
    so JSON it would reject is refused here, with a line number, instead."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise _Refused(f"not valid UTF-8 (byte {exc.start + 1})") from None
    try:
        call = loads_strict(text)
    except json.JSONDecodeError as exc:
        raise _Refused(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer over Python's digit limit, absurd nesting
        raise _Refused(f"not valid JSON ({exc})") from None
    if not isinstance(call, dict):
        raise _Refused(f"a Segment call is a JSON object, not {type(call).__name__}")
    try:
        return json.dumps(call, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _Refused("contains a lone UTF-16 surrogate escape, which is not valid Unicode") from None


def call_id(data: bytes) -> str | None:
    """The messageId of an encoded call (what its row's `id` will be), or None when it has no string one."""
    value = json.loads(data).get("messageId")
    return value if isinstance(value, str) else None


def ids_line(pubsub_id: str, call_ids: Sequence[str | None], space: str | None, published_after: datetime) -> str:
    """One line of the ids file that infra.ops.reconcile reads. `published_after`: this machine's clock
    before the message was published, a lower bound of its publish time, from which reconcile reads the
    tables' partitions (instead of their whole history)."""
    entry = {"pubsub_id": pubsub_id, "call_ids": list(call_ids), "space": space}
    return json.dumps({**entry, "published_after": published_after.astimezone(UTC).isoformat()}) + "\n"


def _lines_label(first: int, last: int, calls: int) -> str:
    return f"line {first}" if calls == 1 else f"lines {first}-{last} ({calls} calls)"


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def publish_lines(
    lines: Iterable[str | bytes],
    publisher: Publisher,
    topic_path: str,
    *,
    batch: int | None = None,
    attributes: dict[str, str] | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] = _stderr,
    on_published: Callable[[str, list[str | None]], None] | None = None,
) -> Summary:
    """Publish every line, then wait for every future; never raises for a bad line or a failed publish.

    `batch` None: one call per message. `batch` N: {"batch": [...]} envelopes of up to N calls (fewer only
    when N would exceed Pub/Sub's size limit). `progress` advances by one per line once it is settled:
    its message confirmed or failed, or the line refused. `on_published(pubsub message id, call ids)` is
    called once per confirmed message (call ids: each call's messageId, None when it has none). Futures
    complete on the client's threads, so their callbacks only enqueue; all counting and logging happens on
    this thread.
    """
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    attributes = dict(attributes or {})
    attribute_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in attributes.items())
    summary = Summary()
    settled: queue.SimpleQueue[tuple[int, int, int, BaseException | None, str, list[str | None]]] = queue.SimpleQueue()
    outstanding = 0

    def settle(
        first: int,
        last: int,
        calls: int,
        error: BaseException | None,
        message_id: str = "",
        ids: Sequence[str | None] = (),
    ) -> None:
        if error is None:
            summary.messages += 1
            summary.calls += calls
            if on_published is not None:
                on_published(message_id, list(ids))
        else:
            text = f"{type(error).__name__}: {error}"
            summary.failed.append(Failure(first, last, calls, text))
            log(f"{_lines_label(first, last, calls)}: publish failed: {text}")
        if progress is not None:
            progress.update(calls)

    def drain(*, block: bool) -> None:
        nonlocal outstanding
        while outstanding:
            try:
                item = settled.get(block=block)
            except queue.Empty:
                return
            outstanding -= 1
            settle(*item)

    def send(data: bytes, first: int, last: int, calls: int, ids: list[str | None]) -> None:
        nonlocal outstanding

        def done(future: Future[Any]) -> None:
            message_id = ""
            try:
                error = future.exception()
                if error is None:
                    message_id = str(future.result())
            except CancelledError as exc:
                error = exc
            settled.put((first, last, calls, error, message_id, ids))

        try:
            future = publisher.publish(topic_path, data, **attributes)
        except Exception as exc:  # e.g. MessageTooLargeError, raised before any future exists
            settle(first, last, calls, exc)
            return
        outstanding += 1
        future.add_done_callback(done)
        drain(block=False)

    pending: list[bytes] = []
    pending_ids: list[str | None] = []
    pending_lines: list[int] = []
    pending_bytes = _ENVELOPE_BYTES + attribute_bytes

    def flush() -> None:
        nonlocal pending_bytes
        if pending:
            envelope = _ENVELOPE_OPEN + b",".join(pending) + _ENVELOPE_CLOSE
            send(envelope, pending_lines[0], pending_lines[-1], len(pending), list(pending_ids))
        pending.clear()
        pending_ids.clear()
        pending_lines.clear()
        pending_bytes = _ENVELOPE_BYTES + attribute_bytes

    for number, raw in enumerate(lines, start=1):
        if number == 1:  # a UTF-8 byte order mark, as some Windows editors write
            raw = raw.removeprefix(b"\xef\xbb\xbf") if isinstance(raw, bytes) else raw.removeprefix("\ufeff")
        if not raw.strip():
            continue
        try:
            data = encode_call(raw)
            size = len(data) + attribute_bytes + (0 if batch is None else _ENVELOPE_BYTES)
            if size > MAX_MESSAGE_BYTES:
                raise _Refused(f"{len(data)} bytes, too large for one Pub/Sub message")
        except _Refused as refusal:
            summary.refused.append(Refusal(number, str(refusal)))
            log(f"line {number}: refused: {refusal}")
            if progress is not None:
                progress.update(1)
            continue
        ids = [call_id(data)] if on_published is not None else []
        if batch is None:
            send(data, number, number, 1, ids)
            continue
        if pending and pending_bytes + len(data) + 1 > MAX_MESSAGE_BYTES:
            flush()
        pending.append(data)
        pending_ids.extend(ids)
        pending_lines.append(number)
        pending_bytes += len(data) + 1
        if len(pending) >= batch:
            flush()
    flush()
    drain(block=True)
    return summary


def parse_attribute(text: str) -> tuple[str, str]:
    """KEY=VALUE, checked here because Pub/Sub would fail every message over a bad key."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    if key in _CLIENT_KEYWORDS:
        raise argparse.ArgumentTypeError(f"{key!r} cannot be an attribute key with the Python Pub/Sub client")
    if key.startswith("goog"):
        raise argparse.ArgumentTypeError(f"{key!r}: keys starting with 'goog' are reserved by Pub/Sub")
    if len(key.encode()) > 256 or len(value.encode()) > 1024:
        raise argparse.ArgumentTypeError("Pub/Sub limits attribute keys to 256 bytes and values to 1024 bytes")
    return key, value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra.publish",
        description="Publish Segment Personas calls (JSON lines) to Pub/Sub.",
        epilog="Uses the Pub/Sub emulator when PUBSUB_EMULATOR_HOST is set.",
    )
    parser.add_argument("file", help="JSON-lines file, one Segment call per line; - for stdin")
    parser.add_argument(
        "--project",
        default=os.environ.get("GOOGLE_CLOUD_PROJECT") or DEFAULT_PROJECT,
        help=f"Google Cloud project (default: $GOOGLE_CLOUD_PROJECT, else {DEFAULT_PROJECT})",
    )
    parser.add_argument(
        "--topic", default=DEFAULT_TOPIC, help="topic ID, or a full projects/P/topics/T path (default: %(default)s)"
    )
    parser.add_argument(
        "--batch", type=_positive, metavar="N", help='send up to N calls per message as {"batch": [...]}'
    )
    parser.add_argument(
        "--attribute",
        type=parse_attribute,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="message attribute, e.g. space=marketing; repeatable",
    )
    parser.add_argument(
        "--ids-file",
        metavar="PATH",
        help="write each published message's id and call ids here (JSON lines) for infra.ops.reconcile",
    )
    return parser


def _count_lines(source: IO[bytes]) -> int | None:
    """Non-blank lines of a regular file, for the progress bar; None for a pipe (it cannot be re-read)."""
    if not source.seekable():
        return None
    count = sum(1 for line in source if line.strip())
    source.seek(0)
    return count


def make_publisher() -> pubsub_v1.PublisherClient:
    """The real client; a function so tests can replace it."""
    return pubsub_v1.PublisherClient(batch_settings=BATCH_SETTINGS, publisher_options=PUBLISHER_OPTIONS)


def _write(message: str) -> None:
    tqdm.write(message, file=sys.stderr)  # prints above the progress bar instead of through it


def topic_path_for(project: str, topic: str) -> str:
    return topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"


def publish_file(
    path: str | os.PathLike[str],
    *,
    project: str,
    topic: str,
    batch: int | None = None,
    attributes: dict[str, str] | None = None,
    ids_file: str | os.PathLike[str] | None = None,
) -> Summary:
    """A JSON-lines file (`-`: stdin) through the real client, with a progress bar on big inputs. Shared by
    main and `make demo` (infra/local/demo.py). Raises OSError if the file cannot be read (or the ids file
    written)."""
    with contextlib.ExitStack() as stack:
        on_published = None
        if ids_file is not None:
            ids_out = stack.enter_context(open(ids_file, "w", encoding="utf-8"))
            space = (attributes or {}).get("space")
            started = datetime.now(UTC)  # before the first publish: every message was published after it

            def on_published(message_id: str, call_ids: list[str | None]) -> None:
                ids_out.write(ids_line(message_id, call_ids, space, started))

        # Binary: lines split on b"\n" only (text mode would also split on a stray \r), and a bad byte
        # refuses its line instead of aborting the read.
        source = sys.stdin.buffer if path == "-" else stack.enter_context(open(path, "rb"))
        total = _count_lines(source)
        show = sys.stderr.isatty() or (total or 0) > PROGRESS_THRESHOLD_LINES
        publisher = make_publisher()
        try:
            with tqdm(total=total, unit="line", disable=not show, file=sys.stderr, dynamic_ncols=True) as bar:
                return publish_lines(
                    source,
                    publisher,
                    topic_path_for(project, topic),
                    batch=batch,
                    attributes=attributes,
                    progress=bar,
                    log=_write,
                    on_published=on_published,
                )
        finally:
            publisher.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    attributes: dict[str, str] = {}
    for key, value in args.attribute:
        if key in attributes:
            parser.error(f"--attribute {key} given twice")
        attributes[key] = value
    try:
        summary = publish_file(
            args.file,
            project=args.project,
            topic=args.topic,
            batch=args.batch,
            attributes=attributes,
            ids_file=args.ids_file,
        )
    except OSError as exc:
        print(f"publish: cannot read {exc.filename or args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except google.auth.exceptions.DefaultCredentialsError as exc:
        print(f"publish: no Google credentials ({exc}); set PUBSUB_EMULATOR_HOST for the emulator", file=sys.stderr)
        return 2
    print(summary.line())
    return summary.exit_status


if __name__ == "__main__":
    sys.exit(main())
