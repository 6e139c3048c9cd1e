"""The local stack: Google's Pub/Sub emulator, bqemulator, and the functions under functions-framework,
run from the staged deployable source (build/function), wired like production (a push subscription
to the ingest function), and, for `make up`, a stand-in for Cloud Scheduler that POSTs to the sync
function every SYNC_EVERY_SECONDS (infra/local/scheduler.py). Used by `make up|down` (this module's
command line), `make demo` (infra/local/demo.py), and every suite that needs a stack of its own:
`StackConfig.spare` lays out its ports and `StackConfig`'s client methods reach it.

Every process is started in its own process group and stopped by that group's id, never by name.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.cloud import bigquery, pubsub_v1

ROOT = Path(__file__).resolve().parents[2]
STAGE = ROOT / "build" / "function"
VENV_BIN = Path(sys.executable).parent
UP_SYNC_EVERY_SECONDS = 60.0  # Cloud Scheduler's cadence (a cron fires at most once a minute)
# Shifts the ports of every stack on spare ports, so that two checkouts (or two developers' worktrees) can run
# their suites at once on one machine. 0 in CI.
PORT_OFFSET_VAR = "PERSONAS_TEST_PORT_OFFSET"


def port_offset() -> int:
    return int(os.environ.get(PORT_OFFSET_VAR) or 0)


@dataclass(frozen=True)
class StackConfig:
    """Names and ports users rely on; every one can be overridden by the env var of the same name.

    `sync_every_seconds` is the period of the local sync scheduler, 0 for none. It is off in a config
    built in code (the integration tests run their syncs by hand and assert on their summaries) and
    UP_SYNC_EVERY_SECONDS in `from_env` (`make up`); `demo` turns it off to keep its output fixed."""

    project: str = "personas-local"
    topic: str = "personas-calls"
    subscription: str = "personas-calls-ingest"
    pubsub_port: int = 8085
    bigquery_port: int = 9050
    bigquery_grpc_port: int = 9060
    ingest_port: int = 8080
    sync_port: int = 8081
    sync_every_seconds: float = 0.0
    state_dir: str = str(ROOT / ".stack")
    function_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def spare(cls, base: int, name: str, **fields: Any) -> StackConfig:
        """A stack of a suite's own (integration, faults, bench, load), no scheduler, its state in
        build/stacks/<name>: Pub/Sub on base+85, BigQuery REST and gRPC on base+50 and base+60, ingest and
        sync on base+80 and base+81 (base+70 and base+90 are left for a suite's extras), every port shifted
        by PERSONAS_TEST_PORT_OFFSET. Keep base plus offset below 32768: Linux hands out 32768-60999 to
        client sockets, which can hold a port a stack wants. `fields` set the rest (topic, function_env...)."""
        base += port_offset()
        ports: dict[str, Any] = {
            "pubsub_port": base + 85,
            "bigquery_port": base + 50,
            "bigquery_grpc_port": base + 60,
            "ingest_port": base + 80,
            "sync_port": base + 81,
            "state_dir": str(ROOT / "build" / "stacks" / name),
        }
        return cls(**(ports | fields))

    @classmethod
    def from_env(cls) -> StackConfig:
        env = os.environ
        return cls(
            project=env.get("GCP_PROJECT", cls.project),
            topic=env.get("PUBSUB_TOPIC", cls.topic),
            subscription=env.get("PUBSUB_SUBSCRIPTION", cls.subscription),
            pubsub_port=int(env.get("PUBSUB_PORT", cls.pubsub_port)),
            bigquery_port=int(env.get("BIGQUERY_PORT", cls.bigquery_port)),
            bigquery_grpc_port=int(env.get("BIGQUERY_GRPC_PORT", cls.bigquery_grpc_port)),
            ingest_port=int(env.get("INGEST_PORT", cls.ingest_port)),
            sync_port=int(env.get("SYNC_PORT", cls.sync_port)),
            sync_every_seconds=float(env.get("SYNC_EVERY_SECONDS", UP_SYNC_EVERY_SECONDS)),
        )

    def __post_init__(self) -> None:
        if not self.sync_every_seconds >= 0:  # also refuses NaN
            raise ValueError(f"sync_every_seconds (SYNC_EVERY_SECONDS) must be >= 0, got {self.sync_every_seconds}")

    @property
    def pubsub_host(self) -> str:
        return f"127.0.0.1:{self.pubsub_port}"

    @property
    def bigquery_url(self) -> str:
        return f"http://127.0.0.1:{self.bigquery_port}"

    @property
    def bigquery_grpc_host(self) -> str:
        return f"127.0.0.1:{self.bigquery_grpc_port}"

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.ingest_port}"

    @property
    def sync_url(self) -> str:
        return f"http://127.0.0.1:{self.sync_port}/"

    @property
    def push_endpoint(self) -> str:
        # The HTTP function serves every path; this one mirrors Terraform's push endpoint.
        return f"{self.ingest_url}/projects/{self.project}/topics/{self.topic}"

    def exports(self) -> dict[str, str]:
        """What a shell (or the functions) need to reach the emulators."""
        return {
            "PUBSUB_EMULATOR_HOST": self.pubsub_host,
            "GOOGLE_CLOUD_PROJECT": self.project,
            "BIGQUERY_EMULATOR_HOST": self.bigquery_url,
            "BIGQUERY_EMULATOR_GRPC_HOST": self.bigquery_grpc_host,  # the Write API (BIGQUERY_WRITER=storage_write)
            "BIGQUERY_PROJECT": self.project,
        }

    def function_environment(self) -> dict[str, str]:
        """What the functions run with, on top of the caller's environment (`function_env` last)."""
        env = {
            **self.exports(),
            "PYTHONUNBUFFERED": "1",
            # Imports pinned to the staged copy: a file missing from the deployable unit fails.
            "PYTHONPATH": str(STAGE),
            # As Terraform sets it on the ingest function (its concurrency): requests in flight share writes.
            "THREADS": "80",
            **self.function_env,
        }
        env.pop("PUBSUB_EMULATOR_HOST")
        return env

    def bigquery_client(self) -> bigquery.Client:
        """The real client, on this stack's bqemulator."""
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(
            project=self.project,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=self.bigquery_url),
        )

    def publisher(self, **options: Any) -> pubsub_v1.PublisherClient:
        """The real client (`options`: batch_settings, publisher_options), on this stack's Pub/Sub emulator
        whatever PUBSUB_EMULATOR_HOST says: a plain-text gRPC channel to it, which is what the client builds
        from that variable. A transport given this way is supported with or without the variable:
        https://github.com/googleapis/python-pubsub/pull/1348"""
        import grpc
        from google.cloud import pubsub_v1
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

        transport = PublisherGrpcTransport(channel=grpc.insecure_channel(self.pubsub_host))
        return pubsub_v1.PublisherClient(transport=transport, **options)

    def subscriber(self) -> pubsub_v1.SubscriberClient:
        """As `publisher`, for subscriptions."""
        import grpc
        from google.cloud import pubsub_v1
        from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

        transport = SubscriberGrpcTransport(channel=grpc.insecure_channel(self.pubsub_host))
        return pubsub_v1.SubscriberClient(transport=transport)


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.pids: dict[str, int] = {}
        self._commands: dict[str, tuple[list[str], dict[str, str] | None, Path | None]] = {}

    @property
    def state_file(self) -> Path:
        return self.state_dir / "pids.json"

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        logs = self.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        self.pids[name] = proc.pid
        self._commands[name] = (argv, env, cwd)
        self.state_file.write_text(json.dumps({"pids": self.pids, "config": asdict(self.config)}))

    def start(self) -> None:
        c = self.config
        if not (STAGE / "main.py").exists():
            raise SystemExit(f"{STAGE} is missing: run `make stage` first")
        for port in (c.pubsub_port, c.bigquery_port, c.bigquery_grpc_port, c.ingest_port, c.sync_port):
            if _port_open(port):
                raise SystemExit(f"port {port} is already in use: is a stack running? (`make down`)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._spawn(
                "pubsub-emulator",
                [
                    shutil.which("gcloud") or "gcloud",
                    "beta",
                    "emulators",
                    "pubsub",
                    "start",
                    f"--host-port={c.pubsub_host}",
                    f"--project={c.project}",
                    "--quiet",
                ],
            )
            self._spawn(
                "bqemulator",
                [
                    sys.executable,
                    "-m",
                    "infra.local.bqemulator_server",
                    "start",
                    "--project",
                    c.project,
                    "--rest-port",
                    str(c.bigquery_port),
                    "--grpc-port",
                    str(c.bigquery_grpc_port),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
            )
            function_env = c.function_environment()
            for name, target, signature, port in (
                ("ingest", "ingest", "http", c.ingest_port),
                ("sync", "sync", "http", c.sync_port),
            ):
                self._spawn(
                    name,
                    [
                        str(VENV_BIN / "functions-framework"),
                        "--target",
                        target,
                        "--signature-type",
                        signature,
                        "--source",
                        str(STAGE / "main.py"),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                    ],
                    env=function_env,
                    cwd=STAGE,
                )
            self.wait_ready()
            self.create_topic_and_push_subscription()
            if c.sync_every_seconds > 0:  # last: its first tick finds the sync function up
                self._spawn("scheduler", self.scheduler_argv(), env={"PYTHONUNBUFFERED": "1"}, cwd=ROOT)
                self.wait_scheduler_started()
        except BaseException:
            self.stop()
            raise

    def respawn(self, name: str) -> None:
        """Start a process of this stack again with the command it was started with (the fault tests kill
        a function's process group and bring it back); its old group must be gone."""
        _reap(self.pids[name])
        if _group_alive(self.pids[name]):
            raise RuntimeError(f"{name} (process group {self.pids[name]}) is still running")
        self._spawn(name, *self._commands[name])

    def scheduler_argv(self) -> list[str]:
        every = f"{self.config.sync_every_seconds:g}"
        return [sys.executable, "-m", "infra.local.scheduler", "--url", self.config.sync_url, "--every", every]

    def wait_scheduler_started(self, timeout: float = 15.0) -> None:
        """It has no port to probe: wait for its first log line, which it prints once its arguments are valid."""
        log = self.state_dir / "logs" / "scheduler.log"
        end = time.monotonic() + timeout
        while not (log.exists() and "scheduler: POST" in log.read_text(errors="replace")):
            if self._exited("scheduler"):
                raise RuntimeError(f"the sync scheduler exited at start; see {log}")
            if time.monotonic() > end:
                raise TimeoutError(f"the sync scheduler did not start within {timeout:.0f}s; see {log}")
            time.sleep(0.1)

    def wait_ready(self, timeout: float = 60.0) -> None:
        c = self.config
        checks = {
            "pubsub-emulator": f"http://{c.pubsub_host}/v1/projects/{c.project}/topics",
            "bqemulator": f"{c.bigquery_url}/bigquery/v2/projects/{c.project}/datasets",
            "ingest": None,
            "sync": None,
        }
        ports = {"ingest": c.ingest_port, "sync": c.sync_port}
        end = time.monotonic() + timeout
        for name, url in checks.items():
            while True:
                if self._exited(name):
                    raise RuntimeError(f"{name} exited at start; see {self.state_dir}/logs/{name}.log")
                if (url and _http_ok(url)) or (url is None and _port_open(ports[name])):
                    break
                if time.monotonic() > end:
                    raise TimeoutError(f"{name} not ready after {timeout:.0f}s; see {self.state_dir}/logs/{name}.log")
                time.sleep(0.2)

    def _exited(self, name: str) -> bool:
        try:
            pid, _status = os.waitpid(self.pids[name], os.WNOHANG)
        except ChildProcessError:
            return not _alive(self.pids[name])
        return pid != 0

    def create_topic_and_push_subscription(self) -> None:
        c = self.config
        publisher, subscriber = c.publisher(), c.subscriber()
        topic = publisher.topic_path(c.project, c.topic)
        publisher.create_topic(name=topic)
        # No retry_policy here (Terraform sets one for real Pub/Sub). Measured 2026-11-29 with the Cloud SDK
        # 528 emulator: with one, messages whose pushes failed a few times in a row (500s, or connection
        # refused while the function was down) were not pushed again within 300 s; without one, the
        # emulator retries at once and delivers them (make faults found it).
        subscriber.create_subscription(
            request={
                "name": subscriber.subscription_path(c.project, c.subscription),
                "topic": topic,
                "push_config": {"push_endpoint": c.push_endpoint},
                "ack_deadline_seconds": 60,
            }
        )

    def stop(self) -> None:
        """Stop every process this stack started: SIGTERM its process group, then SIGKILL.
        The scheduler goes first, so no tick hits a sync function that is shutting down."""
        pids = dict(self.pids)
        if not pids and self.state_file.exists():  # `make down` from another process
            pids = json.loads(self.state_file.read_text())["pids"]
        first = {name: pid for name, pid in pids.items() if name == "scheduler"}
        rest = {name: pid for name, pid in pids.items() if name != "scheduler"}
        for group in (first, rest):
            _stop_groups(list(group.values()))
        self.pids = {}
        self.state_file.unlink(missing_ok=True)


def _stop_groups(pids: list[int], grace: float = 10.0) -> None:
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    for pid in pids:
        while _group_alive(pid) and time.monotonic() < end:
            _reap(pid)
            time.sleep(0.1)
        if _group_alive(pid):
            _signal_group(pid, signal.SIGKILL)
        _reap(pid)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status < 500)
    except OSError:
        return False


def _signal_group(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # each process leads its own group (start_new_session)


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _reap(pid: int) -> None:
    with suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@contextmanager
def running(config: StackConfig) -> Iterator[Stack]:
    stack = Stack(config)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def _print_exports(config: StackConfig) -> None:
    print(f"Pub/Sub emulator  {config.pubsub_host}   topic {config.topic}, push subscription {config.subscription}")
    print(f"BigQuery (REST)   {config.bigquery_url}   project {config.project}")
    print(f"ingest function   {config.ingest_url}   (push endpoint {config.push_endpoint})")
    print(f"sync function     {config.sync_url}")
    if config.sync_every_seconds > 0:
        print(
            f'sync scheduler    POST {{"full": false}} to the sync function every {config.sync_every_seconds:g} s'
            " (like Cloud Scheduler; SYNC_EVERY_SECONDS=0 turns it off)"
        )
    else:
        print("sync scheduler    off (SYNC_EVERY_SECONDS=0): run the sync by hand")
    print("\n# paste into a shell to use the clients against the stack:")
    for key, value in config.exports().items():
        print(f"export {key}={value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.local.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down"])
    args = parser.parse_args(argv)
    try:
        config = StackConfig.from_env()
    except ValueError as error:  # a malformed port or period in the environment
        parser.error(str(error))
    if args.command == "up":
        stack = Stack(config)
        stack.start()
        print("local stack is up (`make down` stops it); logs in .stack/logs/\n")
        _print_exports(config)
        return 0
    Stack(config).stop()
    print("local stack stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
