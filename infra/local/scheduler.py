"""A local stand-in for Cloud Scheduler: POSTs `{"full": false}` to the sync function every N seconds,
so a local stack keeps `users` current the way the deployed one does.

Like Cloud Scheduler, each tick is a fresh HTTP request with a deadline, a failed tick is logged and the
next one fires on schedule, and the sync is expected to be safe when runs overlap. Ticks here are
sequential, on a fixed-rate clock (start + k * every), with a per-request timeout shorter than the
period, so a tick never delays the next one. That does not hide overlap: functions-framework finishes
a request after its client has given up, so a sync slower than the period is still running when the
next tick starts another one -- the same overlap the deployed scheduler produces with its attempt
deadline. One thread and no request queue keeps the stand-in small.

Usage: python -m infra.local.scheduler --url http://127.0.0.1:8081/ --every 60 [--space S ...]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType

TIMEOUT_SHARE = 0.9  # default request timeout, as a share of the period: the answer comes before the next tick
LOG_BODY_CHARS = 300
MAX_BODY_BYTES = 1 << 20  # a sync summary is a few hundred bytes per space


@dataclass(frozen=True)
class Tick:
    """One request's outcome; `status` is None when no HTTP answer came (refused, timed out)."""

    number: int
    status: int | None
    seconds: float
    detail: str

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def request_body(spaces: Sequence[str] | None) -> dict[str, object]:
    """What Cloud Scheduler sends: an incremental sync, of every space unless some are named."""
    body: dict[str, object] = {"full": False}
    if spaces:
        body["spaces"] = list(spaces)
    return body


def summarize(body: str) -> str:
    """One short line: per space of a sync summary, its status and each table's row counts; else the body, cut."""
    try:
        spaces = json.loads(body)["spaces"]
        return (
            "; ".join(
                f"{s['space']} {s['status']}"
                + "".join(
                    f" {name}: inserted={t['rows_inserted']} updated={t['rows_updated']}"
                    for name, t in (s.get("tables") or {}).items()
                    if t.get("status") != "skipped"
                )
                + (f" error={s['error']}" if s.get("error") else "")
                for s in spaces
            )[:LOG_BODY_CHARS]
            or "no spaces"
        )
    except (ValueError, KeyError, TypeError):  # not a sync summary: an error page, a proxy, a traceback
        return " ".join(body.split())[:LOG_BODY_CHARS]


def _read_quietly(error: urllib.error.HTTPError) -> str:
    try:
        return error.read(MAX_BODY_BYTES).decode(errors="replace")
    except Exception as reading:  # an error answer cut short: its status is what matters
        return f"({type(reading).__name__} reading the body)"


def _print_line(line: str) -> None:
    print(line, flush=True)  # flush: the log file is read while the process runs


class Scheduler:
    """Ticks in a daemon thread between start() and stop(); usable in-process (tests) or via main()."""

    def __init__(
        self,
        url: str,
        every: float,
        spaces: Sequence[str] | None = None,
        *,
        timeout: float | None = None,
        log: Callable[[str], None] = _print_line,
    ) -> None:
        if every <= 0:
            raise ValueError(f"every must be > 0 seconds, got {every}")
        self.timeout = every * TIMEOUT_SHARE if timeout is None else timeout
        if not 0 < self.timeout <= every:
            raise ValueError(f"timeout must be in (0, every={every}] so ticks stay on schedule, got {self.timeout}")
        self.url = url
        self.every = every
        self.body = json.dumps(request_body(spaces)).encode()
        self.log = log
        self.ticks: deque[Tick] = deque(maxlen=100)  # recent outcomes, for tests and debugging
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._count = 0

    def tick(self) -> Tick:
        """One POST; never raises, so one bad answer cannot stop the schedule."""
        self._count += 1
        request = urllib.request.Request(
            self.url, data=self.body, method="POST", headers={"Content-Type": "application/json"}
        )
        started = time.monotonic()
        status: int | None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, detail = response.status, response.read(MAX_BODY_BYTES).decode(errors="replace")
        except urllib.error.HTTPError as error:
            status, detail = error.code, _read_quietly(error)
        except Exception as error:  # refused, reset, timed out, bad URL: log it, tick again later
            status, detail = None, f"{type(error).__name__}: {error}"
        result = Tick(self._count, status, time.monotonic() - started, summarize(detail))
        self.ticks.append(result)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.log(
            f"{stamp} tick {result.number} POST {self.url} -> {status if status is not None else 'no answer'}"
            f" in {result.seconds:.2f}s {result.detail}"
        )
        return result

    def run(self, first_after: float | None = None) -> None:
        """Tick at start + first_after + k * every until stopped; a late tick skips the slots it missed."""
        next_at = time.monotonic() + (self.every if first_after is None else first_after)
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            self.tick()
            next_at += self.every
            now = time.monotonic()
            if next_at < now:  # only when a request overran (e.g. a slow DNS lookup): no burst of catch-up ticks
                next_at += ((now - next_at) // self.every + 1) * self.every

    def start(self, first_after: float | None = None) -> None:
        if self._thread is not None:
            raise RuntimeError("scheduler already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, args=(first_after,), name="sync-scheduler", daemon=True)
        self._thread.start()

    def stop(self, wait: float = 5.0) -> bool:
        """No tick starts after this returns; an in-flight request is given `wait` seconds to finish
        (the thread is a daemon, so a request still hanging after that cannot keep the process alive).
        True when the thread has ended."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(wait)
        return not thread.is_alive()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.scheduler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the sync function's URL")
    parser.add_argument("--every", type=float, required=True, help="seconds between ticks (> 0)")
    parser.add_argument("--space", action="append", dest="spaces", help="sync only this space (repeatable)")
    parser.add_argument("--timeout", type=float, help=f"per-request timeout (default {TIMEOUT_SHARE} x --every)")
    parser.add_argument("--first-after", type=float, help="seconds before the first tick (default --every)")
    args = parser.parse_args(argv)
    try:
        scheduler = Scheduler(args.url, args.every, args.spaces, timeout=args.timeout)
    except ValueError as error:
        parser.error(str(error))
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _print_line(
        f"scheduler: POST {args.url} {scheduler.body.decode()} every {args.every:g}s"
        f" (timeout {scheduler.timeout:g}s); SIGTERM/SIGINT stops it"
    )
    scheduler.start(args.first_after)
    stopping.wait()
    ended = scheduler.stop(wait=2.0)
    _print_line("scheduler: stopped" + ("" if ended else " (abandoned a request in flight)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
