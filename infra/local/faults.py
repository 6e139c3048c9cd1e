"""Faults to inject into the local stack, for the project's fault tests (`make faults`, tests/faults).

`FaultProxy` is a TCP proxy on loopback that sits between the functions and bqemulator (point the
functions' BIGQUERY_EMULATOR_HOST at it). bqemulator keeps its data in memory, so "BigQuery is down"
cannot be killing it: the proxy makes it unreachable instead. While it is down, every open connection
is cut and every new one is reset as soon as it is accepted, which the client sees as a connection
error, as it would an outage. It can also report when given bytes pass from client to server (a
MERGE statement, say), so a test can kill a process at a precise step of its work.

Threads, bounded: at most `max_connections` connections (two pump threads each); more are reset.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
CHUNK = 65536


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0  # reset at accept: the proxy was down or full
    cut: int = 0  # open connections closed when the proxy went down
    bytes_up: int = 0
    bytes_down: int = 0
    bytes_while_down: int = 0  # pumped after down() (a read in progress when it came), for the record


@dataclass
class _Watch:
    marker: bytes
    count: int = 0
    events: list[tuple[int, threading.Event]] = field(default_factory=list)  # (count to reach, event)


class FaultProxy:
    """Forwards 127.0.0.1:`listen_port` to 127.0.0.1:`target_port` until told to fail."""

    def __init__(self, listen_port: int, target_port: int, *, max_connections: int = 64) -> None:
        self.listen_port, self.target_port, self.max_connections = listen_port, target_port, max_connections
        self.stats = ProxyStats()
        self._lock = threading.Lock()
        self._down = False
        self._stopping = threading.Event()
        self._open: dict[int, tuple[socket.socket, socket.socket]] = {}
        self._next_id = 0
        self._watches: list[_Watch] = []
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.listen_port}"

    def start(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, self.listen_port))  # loopback only: never reachable from elsewhere
        listener.listen(128)
        listener.settimeout(0.2)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        self._cut_all()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults -----------------------------------------------------------------------------------------

    def down(self) -> None:
        """From now on BigQuery is unreachable: open connections are cut, new ones reset."""
        with self._lock:
            self._down = True
        self._cut_all()

    def up(self) -> None:
        with self._lock:
            self._down = False

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.down()
        try:
            yield
        finally:
            self.up()

    def watch(self, marker: bytes, occurrence: int = 1) -> threading.Event:
        """An event set once `marker` has passed from client to server `occurrence` more times from now
        (counted once per read it appears in; a marker split across two reads counts too)."""
        event = threading.Event()
        with self._lock:
            found = next((w for w in self._watches if w.marker == marker), None)
            if found is None:
                found = _Watch(marker)
                self._watches.append(found)
            found.events.append((found.count + occurrence, event))
        return event

    # --- plumbing -----------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._down:  # fast path; the locked check below is the one that counts
                self.stats.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection((LOOPBACK, self.target_port), timeout=5)
            except OSError:
                self.stats.refused += 1
                _reset(client)
                continue
            server.settimeout(None)
            with self._lock:  # checked and registered at once: down() either refuses it or cuts it
                refuse = self._down or len(self._open) >= self.max_connections
                if not refuse:
                    key = self._next_id
                    self._next_id += 1
                    self._open[key] = (client, server)
                    self.stats.accepted += 1
            if refuse:
                self.stats.refused += 1
                _reset(client)
                server.close()
                continue
            for source, sink, upward in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(key, source, sink, upward), daemon=True).start()

    def _pump(self, key: int, source: socket.socket, sink: socket.socket, upward: bool) -> None:
        tail = b""
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    break
                if self._down:
                    self.stats.bytes_while_down += len(data)
                if upward:
                    self.stats.bytes_up += len(data)
                    tail = self._scan(tail + data)
                else:
                    self.stats.bytes_down += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(key)

    def _scan(self, data: bytes) -> bytes:
        """Count watched markers in data; the tail to prepend to the next chunk (markers split over reads)."""
        keep = 0
        with self._lock:
            for watch in self._watches:
                if watch.marker in data:
                    watch.count += 1
                    for target, event in watch.events:
                        if watch.count >= target:
                            event.set()
                keep = max(keep, len(watch.marker) - 1)
        return data[-keep:] if keep and not any(w.marker in data for w in self._watches) else b""

    def _close(self, key: int) -> None:
        with self._lock:
            pair = self._open.pop(key, None)
        if pair is not None:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _cut_all(self) -> None:
        with self._lock:
            keys = list(self._open)
        for key in keys:
            with self._lock:
                pair = self._open.get(key)
            if pair is not None:
                self.stats.cut += 1
                _reset(pair[0])  # the client sees a reset, not a clean end of the response
            self._close(key)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) rather than FIN: the peer gets ECONNRESET, as when a service dies.
    SHUT_RD first wakes a pump thread blocked reading it (close alone does not)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()
