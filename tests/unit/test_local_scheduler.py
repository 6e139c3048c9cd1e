"""The local Cloud Scheduler stand-in (infra/local/scheduler.py) against a tiny HTTP server on 127.0.0.1,
and how the local stack configures, starts and stops it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from infra.local.scheduler import Scheduler, request_body, summarize
from infra.local.stack import ROOT, UP_SYNC_EVERY_SECONDS, Stack, StackConfig, _print_exports


@dataclass
class Server:
    """Records every request; answers each with the next of `statuses` (then 200), after `delay` seconds."""

    url: str
    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        while len(self.requests) < count:
            assert time.monotonic() < end, f"wanted {count} requests within {timeout}s, got {len(self.requests)}"
            time.sleep(0.02)
        return list(self.requests)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            state.requests.append(
                {
                    "path": self.path,
                    "content_type": self.headers.get("Content-Type"),
                    "body": json.loads(body),
                    "at": time.monotonic(),
                }
            )
            state.arrived.set()
            time.sleep(state.delay)
            status = state.statuses.pop(0) if state.statuses else 200
            answer = json.dumps({"spaces": [{"space": "s1", "status": "success" if status == 200 else "failed"}]})
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(answer.encode())
            except OSError:  # the client gave up (timeout): nothing to answer to
                pass

        def log_message(self, *_args: Any) -> None:  # keep pytest's output clean
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def closed_port() -> int:
    """A port nothing listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def scheduling(scheduler: Scheduler, first_after: float = 0.0) -> Iterator[Scheduler]:
    scheduler.start(first_after)
    try:
        yield scheduler
    finally:
        scheduler.stop(wait=5.0)


def test_posts_cloud_schedulers_json_body_on_every_tick(server: Server) -> None:
    lines: list[str] = []
    with scheduling(Scheduler(server.url, 0.1, ["s1", "s2"], log=lines.append)):
        requests = server.wait_for(3)
    assert [r["body"] for r in requests[:3]] == [{"full": False, "spaces": ["s1", "s2"]}] * 3
    assert {(r["path"], r["content_type"]) for r in requests} == {("/", "application/json")}
    # One log line per tick, with the status and the duration.
    assert len(lines) >= 3
    assert all(re.search(r" tick \d+ POST \S+ -> 200 in \d+\.\d\ds ", line) for line in lines), lines


def test_without_spaces_it_syncs_every_space() -> None:
    assert request_body(None) == request_body([]) == {"full": False}
    assert request_body(("a",)) == {"full": False, "spaces": ["a"]}


def test_log_lines_summarize_the_sync_answer() -> None:
    answer = {
        "run_id": "r",
        "spaces": [
            {
                "space": "a",
                "status": "success",
                "error": None,
                "tables": {"users": {"status": "success", "rows_inserted": 2, "rows_updated": 1}},
            },
            {"space": "b", "status": "failure", "error": "boom"},
        ],
    }
    assert summarize(json.dumps(answer)) == "a success users: inserted=2 updated=1; b failure error=boom"
    assert summarize('{"spaces": []}') == "no spaces"
    assert summarize("<html>\n  Bad   Gateway</html>") == "<html> Bad Gateway</html>"
    assert summarize('{"spaces": ["x"]}') == '{"spaces": ["x"]}'
    assert len(summarize("x" * 10_000)) == 300


def test_a_500_is_logged_and_the_next_tick_still_fires(server: Server) -> None:
    server.statuses = [500, 503]
    lines: list[str] = []
    with scheduling(Scheduler(server.url, 0.1, log=lines.append)) as scheduler:
        server.wait_for(3)
        end = time.monotonic() + 5
        while len(scheduler.ticks) < 3 and time.monotonic() < end:
            time.sleep(0.02)
    statuses = [t.status for t in list(scheduler.ticks)[:3]]
    assert statuses == [500, 503, 200]
    assert [t.ok for t in list(scheduler.ticks)[:3]] == [False, False, True]
    assert " -> 500 in " in lines[0] and lines[0].endswith("s s1 failed")


def test_a_refused_connection_is_logged_and_ticking_goes_on() -> None:
    lines: list[str] = []
    with scheduling(Scheduler(f"http://127.0.0.1:{closed_port()}/", 0.05, log=lines.append)) as scheduler:
        end = time.monotonic() + 5
        while len(scheduler.ticks) < 3 and time.monotonic() < end:
            time.sleep(0.02)
        assert scheduler._thread is not None and scheduler._thread.is_alive()
    assert len(scheduler.ticks) >= 3
    assert all(t.status is None and "Connection refused" in t.detail for t in scheduler.ticks)
    assert "-> no answer in" in lines[0]


def test_a_slow_answer_times_out_before_the_next_tick(server: Server) -> None:
    server.delay = 1.0
    with scheduling(Scheduler(server.url, 0.4, timeout=0.2, log=lambda _line: None)) as scheduler:
        server.wait_for(2)
    [first, *_] = scheduler.ticks
    assert first.status is None and "timed out" in first.detail
    assert 0.15 < first.seconds < 0.5


def test_stop_is_prompt_while_waiting_and_while_a_request_hangs(server: Server) -> None:
    idle = Scheduler(server.url, 60.0, log=lambda _line: None)
    idle.start()  # first tick in 60 s
    began = time.monotonic()
    assert idle.stop(wait=5.0) is True
    assert time.monotonic() - began < 1.0
    assert server.requests == []

    server.delay = 30.0
    busy = Scheduler(server.url, 60.0, log=lambda _line: None)
    busy.start(first_after=0)
    assert server.arrived.wait(5)
    began = time.monotonic()
    assert busy.stop(wait=0.3) is False  # the request still hangs; stop() does not wait for it
    assert time.monotonic() - began < 1.0
    assert len(server.requests) == 1


def test_no_tick_after_stop(server: Server) -> None:
    scheduler = Scheduler(server.url, 0.05, log=lambda _line: None)
    scheduler.start(first_after=0)
    server.wait_for(2)
    assert scheduler.stop() is True
    count = len(server.requests)
    time.sleep(0.3)
    assert len(server.requests) == count


def test_ticks_keep_a_fixed_rate_however_long_a_sync_takes(server: Server) -> None:
    # Like a cron: the first tick one period after start, then one per period -- not one period after
    # the previous answer, which would drift by the sync's duration (0.2 s of every 0.3 s here).
    server.delay = 0.2
    scheduler = Scheduler(server.url, 0.3, log=lambda _line: None)
    began = time.monotonic()
    scheduler.start()
    arrivals = [r["at"] for r in server.wait_for(5)]
    scheduler.stop()
    assert arrivals[0] - began >= 0.29
    gaps = [b - a for a, b in pairwise(arrivals)]
    assert 0.27 < sum(gaps) / len(gaps) < 0.46, gaps  # 0.5 if it drifted


@pytest.mark.parametrize(
    ("every", "timeout"),
    [(0, None), (-1, None), (1.0, 0), (1.0, 1.5)],
)
def test_refuses_a_period_or_timeout_that_would_break_the_schedule(every: float, timeout: float | None) -> None:
    with pytest.raises(ValueError):
        Scheduler("http://127.0.0.1:1/", every, timeout=timeout)


def run_cli(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "infra.local.scheduler", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_command_line_ticks_and_stops_cleanly_on_a_signal(server: Server, sig: signal.Signals) -> None:
    proc = run_cli(["--url", server.url, "--every", "0.1", "--space", "a", "--space", "b"])
    try:
        server.wait_for(2)
        began = time.monotonic()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - began < 5
    assert proc.returncode == 0, out
    assert server.requests[0]["body"] == {"full": False, "spaces": ["a", "b"]}
    lines = out.splitlines()
    assert lines[0].startswith("scheduler: POST ") and lines[-1] == "scheduler: stopped"
    assert sum(" tick " in line and " -> 200 in " in line for line in lines) >= 2


def test_command_line_refuses_a_zero_period() -> None:
    proc = run_cli(["--url", "http://127.0.0.1:1/", "--every", "0"])
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "every must be > 0" in out


# --- the local stack's side -------------------------------------------------------------------------------


def test_make_up_schedules_every_minute_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNC_EVERY_SECONDS", raising=False)
    assert StackConfig.from_env().sync_every_seconds == UP_SYNC_EVERY_SECONDS == 60
    monkeypatch.setenv("SYNC_EVERY_SECONDS", "5")
    assert StackConfig.from_env().sync_every_seconds == 5
    monkeypatch.setenv("SYNC_EVERY_SECONDS", "0")
    assert StackConfig.from_env().sync_every_seconds == 0
    for bad in ("-1", "nan"):
        monkeypatch.setenv("SYNC_EVERY_SECONDS", bad)
        with pytest.raises(ValueError):
            StackConfig.from_env()


def test_integration_stack_runs_no_scheduler() -> None:
    # Those tests assert on the summaries of the syncs they run by hand: a scheduled sync would race them.
    from tests.integration.conftest import TEST_CONFIG

    assert StackConfig().sync_every_seconds == 0
    assert TEST_CONFIG.sync_every_seconds == 0


def test_demo_runs_no_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    import infra.local.demo

    seen: list[StackConfig] = []

    @contextmanager
    def fake_running(config: StackConfig) -> Iterator[Any]:
        seen.append(config)
        yield object()

    monkeypatch.setenv("SYNC_EVERY_SECONDS", "60")
    monkeypatch.setattr(infra.local.demo, "running", fake_running)
    monkeypatch.setattr(infra.local.demo, "run_demo", lambda _stack: 0)
    assert infra.local.demo.main([]) == 0
    assert [c.sync_every_seconds for c in seen] == [0]


def test_up_output_names_the_scheduler(capsys: pytest.CaptureFixture[str]) -> None:
    _print_exports(StackConfig(sync_every_seconds=60))
    assert 'sync scheduler    POST {"full": false} to the sync function every 60 s' in capsys.readouterr().out
    _print_exports(StackConfig(sync_every_seconds=0))
    assert "sync scheduler    off (SYNC_EVERY_SECONDS=0)" in capsys.readouterr().out


def test_stack_spawns_the_scheduler_in_its_own_group_and_stops_it_by_pid(server: Server, tmp_path: Path) -> None:
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    stack = Stack(StackConfig(sync_port=port, sync_every_seconds=0.1, state_dir=str(tmp_path)))
    stack._spawn("scheduler", stack.scheduler_argv(), env={"PYTHONUNBUFFERED": "1"}, cwd=ROOT)
    try:
        stack.wait_scheduler_started()
        pid = stack.pids["scheduler"]
        assert os.getpgid(pid) == pid  # leads its own process group, like every process of the stack
        assert json.loads((tmp_path / "pids.json").read_text())["pids"] == {"scheduler": pid}
        server.wait_for(2)
    finally:
        Stack(replace(stack.config)).stop()  # as `make down` does: from the pid file, not by name
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    log = (tmp_path / "logs" / "scheduler.log").read_text()
    assert " -> 200 in " in log and log.rstrip().endswith("scheduler: stopped")
    assert not (tmp_path / "pids.json").exists()


def test_stack_reports_a_scheduler_that_exits_at_start(tmp_path: Path) -> None:
    stack = Stack(StackConfig(state_dir=str(tmp_path)))
    stack._spawn("scheduler", [sys.executable, "-m", "infra.local.scheduler", "--every", "1"], cwd=ROOT)
    try:
        with pytest.raises(RuntimeError, match="exited at start"):
            stack.wait_scheduler_started()
    finally:
        stack.stop()
