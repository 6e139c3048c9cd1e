"""infra.publish without a network: a fake publisher hands back concurrent.futures.Future objects."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from infra import publish
from infra.publish import MAX_MESSAGE_BYTES, Summary, encode_call, publish_lines

TOPIC = "projects/pubtest/topics/personas-calls"


def call(n: int) -> str:
    return json.dumps({"type": "identify", "userId": f"u{n}", "traits": {"n": n}})


class FakePublisher:
    """Records every publish. `fail` picks messages whose future fails; `delay` resolves futures later,
    from another thread, as the real client does."""

    def __init__(self, fail: Any = None, raise_on: Any = None, delay: float | None = None) -> None:
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.fail = fail or (lambda data: False)
        self.raise_on = raise_on or (lambda data: False)
        self.delay = delay
        self.stopped = False

    def publish(self, topic: str, data: bytes, **attrs: str) -> Future[str]:
        if self.raise_on(data):
            raise RuntimeError("rejected before publishing")
        self.published.append((topic, data, attrs))
        future: Future[str] = Future()

        def resolve() -> None:
            if self.fail(data):
                future.set_exception(RuntimeError("503 unavailable"))
            else:
                future.set_result(str(len(self.published)))

        if self.delay is None:
            resolve()
        else:
            threading.Timer(self.delay, resolve).start()
        return future

    def stop(self) -> None:
        self.stopped = True

    def documents(self) -> list[Any]:
        return [json.loads(data) for _, data, _ in self.published]


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def update(self, n: int = 1) -> None:
        self.n += n


def run(
    lines: Sequence[str | bytes], publisher: FakePublisher | None = None, **kwargs: Any
) -> tuple[Summary, list[str]]:
    logged: list[str] = []
    summary = publish_lines(lines, publisher or FakePublisher(), TOPIC, log=logged.append, **kwargs)
    return summary, logged


def test_single_calls_one_message_each_compact_utf8() -> None:
    fake = FakePublisher()
    lines = ['{ "type": "track",  "event": "Café ☕", "userId": "u1" }\n', call(2) + "\n"]
    summary, logged = run(lines, fake)
    assert [data for _, data, _ in fake.published] == [
        '{"type":"track","event":"Café ☕","userId":"u1"}'.encode(),
        json.dumps(json.loads(call(2)), separators=(",", ":")).encode(),
    ]
    assert {topic for topic, _, _ in fake.published} == {TOPIC}
    assert (summary.messages, summary.calls, summary.refused, summary.failed) == (2, 2, [], [])
    assert summary.exit_status == 0
    assert logged == []


def test_batch_groups_calls_and_sends_the_last_partial_batch() -> None:
    fake = FakePublisher()
    summary, _ = run([call(n) for n in range(7)], fake, batch=3)
    batches = [doc["batch"] for doc in fake.documents()]
    assert [[c["userId"] for c in b] for b in batches] == [["u0", "u1", "u2"], ["u3", "u4", "u5"], ["u6"]]
    assert (summary.messages, summary.calls) == (3, 7)
    assert summary.line() == "published 3 messages (7 calls), refused 0 lines, failed 0 messages (0 calls)"


def test_batch_of_one_still_uses_the_envelope() -> None:
    fake = FakePublisher()
    run([call(1)], fake, batch=1)
    assert fake.documents() == [{"batch": [json.loads(call(1))]}]


def test_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="batch"):
        run([call(1)], batch=0)


def test_attributes_are_passed_with_every_message() -> None:
    fake = FakePublisher()
    run([call(1), call(2), call(3)], fake, batch=2, attributes={"space": "marketing", "source": "replay"})
    assert [attrs for _, _, attrs in fake.published] == [{"space": "marketing", "source": "replay"}] * 2


def test_blank_lines_are_skipped_but_still_numbered() -> None:
    fake = FakePublisher()
    summary, logged = run(["\n", call(1) + "\n", "   \t\r\n", "", call(2) + "\r\n", "{oops\n"], fake)
    assert len(fake.published) == 2
    assert summary.refused[0].line == 6
    assert logged[0].startswith("line 6: refused: not valid JSON")


def test_bad_json_line_is_refused_with_its_line_number_and_the_rest_published() -> None:
    fake = FakePublisher()
    summary, logged = run([call(1), '{"type": "identify",', call(3), "NaN", "[1, 2]", '{"n": 1e999}'], fake)
    assert [doc["userId"] for doc in fake.documents()] == ["u1", "u3"]
    assert [r.line for r in summary.refused] == [2, 4, 5, 6]
    assert logged[0].startswith("line 2: refused: not valid JSON (")
    assert "NaN is not valid JSON" in logged[1]
    assert "JSON object, not list" in logged[2]
    assert "out of range" in logged[3]
    assert summary.exit_status == 1
    assert summary.line().startswith("published 2 messages (2 calls), refused 4 lines")


def test_refused_lines_are_left_out_of_a_batch() -> None:
    fake = FakePublisher()
    summary, _ = run([call(1), "nope", call(3), call(4)], fake, batch=2)
    assert [[c["userId"] for c in doc["batch"]] for doc in fake.documents()] == [["u1", "u3"], ["u4"]]
    assert [r.line for r in summary.refused] == [2]


def test_bytes_lines_invalid_utf8_and_a_byte_order_mark() -> None:
    fake = FakePublisher()
    summary, logged = run([b"\xef\xbb\xbf" + call(1).encode(), b'{"name": "\xff"}\n'], fake)
    assert [doc["userId"] for doc in fake.documents()] == ["u1"]
    assert summary.refused[0].line == 2
    assert "not valid UTF-8" in logged[0]


def test_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        encode_call('{"name": "\\ud800"}')


def test_publish_failure_is_counted_and_reported_and_the_rest_goes_on() -> None:
    fake = FakePublisher(fail=lambda data: b'"u2"' in data)
    summary, logged = run([call(n) for n in range(1, 5)], fake, batch=2)
    assert (summary.messages, summary.calls) == (1, 2)
    assert [(f.first_line, f.last_line, f.calls) for f in summary.failed] == [(1, 2, 2)]
    assert logged == ["lines 1-2 (2 calls): publish failed: RuntimeError: 503 unavailable"]
    assert summary.exit_status == 1
    assert summary.line() == "published 1 messages (2 calls), refused 0 lines, failed 1 messages (2 calls)"


def test_publish_raising_synchronously_is_a_failure_too() -> None:
    fake = FakePublisher(raise_on=lambda data: b'"u1"' in data)
    summary, logged = run([call(1), call(2)], fake)
    assert summary.messages == 1
    assert [f.first_line for f in summary.failed] == [1]
    assert logged == ["line 1: publish failed: RuntimeError: rejected before publishing"]


def test_waits_for_futures_resolved_later_on_other_threads() -> None:
    fake = FakePublisher(fail=lambda data: b'"u3"' in data, delay=0.05)
    progress = Counter()
    summary, _ = run([call(n) for n in range(1, 6)] + ["bad"], fake, progress=progress)
    assert (summary.messages, len(summary.failed), len(summary.refused)) == (4, 1, 1)
    assert progress.n == 6  # every non-blank line, once settled


def test_batch_is_split_before_it_would_exceed_the_pubsub_limit() -> None:
    big = json.dumps({"type": "track", "userId": "u", "properties": {"blob": "x" * (MAX_MESSAGE_BYTES // 2)}})
    fake = FakePublisher()
    summary, _ = run([big, big, big], fake, batch=10)
    assert [len(doc["batch"]) for doc in fake.documents()] == [1, 1, 1]
    assert all(len(data) <= MAX_MESSAGE_BYTES for _, data, _ in fake.published)
    assert summary.calls == 3


def test_a_line_too_large_for_pubsub_is_refused() -> None:
    huge = json.dumps({"type": "track", "properties": {"blob": "x" * MAX_MESSAGE_BYTES}})
    fake = FakePublisher()
    summary, logged = run([call(1), huge], fake)
    assert len(fake.published) == 1
    assert [r.line for r in summary.refused] == [2]
    assert "too large" in logged[0]


@pytest.mark.parametrize(
    ("argument", "error"),
    [("space", "KEY=VALUE"), ("=x", "KEY=VALUE"), ("timeout=5", "cannot be an attribute"), ("googx=1", "reserved")],
)
def test_bad_attributes_are_usage_errors(argument: str, error: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        publish.main(["-", "--attribute", argument])
    assert exit_.value.code == 2
    assert error in capsys.readouterr().err


def test_attribute_value_may_contain_equals() -> None:
    assert publish.parse_attribute("filter=a=b") == ("filter", "a=b")


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> FakePublisher:
    fake = FakePublisher()
    monkeypatch.setattr(publish, "make_publisher", lambda: fake)
    return fake


def test_main_refuses_a_bad_line_and_exits_1(
    fake_client: FakePublisher, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "calls.jsonl"
    path.write_text(f"{call(1)}\n\n{{not json}}\n{call(4)}\n", encoding="utf-8")
    status = publish.main([str(path), "--project", "pubtest", "--topic", "calls", "--attribute", "space=marketing"])
    out, err = capsys.readouterr()
    assert status == 1
    assert "line 3: refused: not valid JSON" in err
    assert out == "published 2 messages (2 calls), refused 1 lines, failed 0 messages (0 calls)\n"
    assert {(topic, tuple(attrs.items())) for topic, _, attrs in fake_client.published} == {
        ("projects/pubtest/topics/calls", (("space", "marketing"),))
    }
    assert fake_client.stopped


def test_main_reads_stdin_and_exits_0(
    fake_client: FakePublisher, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-env")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(f"{call(1)}\n{call(2)}\n".encode())))
    assert publish.main(["-", "--batch", "5"]) == 0
    assert [topic for topic, _, _ in fake_client.published] == ["projects/from-env/topics/personas-calls"]
    assert capsys.readouterr().out.startswith("published 1 messages (2 calls)")


def test_main_reports_an_unreadable_file(
    fake_client: FakePublisher, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert publish.main([str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_publish_file_as_the_demo_calls_it(fake_client: FakePublisher, tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    path.write_text(f"{call(1)}\n{call(2)}\n", encoding="utf-8")
    summary = publish.publish_file(path, project="demo", topic="personas-calls")
    assert (summary.messages, summary.calls) == (2, 2)
    assert fake_client.published[0][0] == "projects/demo/topics/personas-calls"
