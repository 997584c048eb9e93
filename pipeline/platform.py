"""The running platform: a broker (embedded or external) with every registry topic in place.

``Platform`` is what ``worldline up`` runs and what the test harness starts. When it owns an
embedded broker it records the broker address in ``<data_dir>/runtime/broker.json`` so that other
commands (``status``, ``tail``, ``produce``) in another terminal find it; the file is removed on
a clean stop and ignored when the process it names is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import orjson
from aiokafka import TopicPartition

from pipeline import kafka, topics
from pipeline.broker import EmbeddedBroker
from pipeline.registry import RECEIVER
from pipeline.settings import Settings
from pipeline.stages import StageSupervisor

DRAINED_INPUTS = {
    "ingest-spans": "otlp_spans",
    "ingest-metrics": "otlp_metrics",
    "ingest-logs": "otlp_logs",
    "world-model": "changes",
    "causal-search": "alerts",
}
"""The topic each stage reads whose records exist nowhere else until the stage has read them
(the world model's ``segments.sealed`` only notifies: the store is its truth)."""


STAGE_STOP_NO_BROKER_S = 3.0
"""How long a stage may take to stop when the embedded broker is gone (then SIGKILL; a seal cut
short is safe: segments are written atomically and the leftovers removed at the next start)."""


class NoBrokerError(RuntimeError):
    """No broker is configured and no embedded platform is running."""


@dataclass
class Platform:
    settings: Settings
    on_step: Callable[[str], None] = field(default=lambda _msg: None)
    broker: EmbeddedBroker | None = field(default=None, init=False)
    bootstrap_servers: str = field(default="", init=False)
    partitions: dict[str, int] = field(default_factory=dict, init=False)
    stages: list[str] = field(default_factory=list)
    supervisor: StageSupervisor | None = field(default=None, init=False)

    def start(self) -> Platform:
        s = self.settings
        try:
            if s.embedded:
                self.on_step("starting the embedded broker")
                self.broker = EmbeddedBroker(
                    host=s.broker_host,
                    port=s.broker_port,
                    binary=s.broker_bin,
                    start_timeout_s=s.broker_start_timeout_s,
                    storage=s.broker_storage,
                    cluster_id=broker_cluster_id(s),
                ).start()
                self.bootstrap_servers = self.broker.bootstrap_servers
            else:
                assert s.bootstrap_servers is not None
                self.bootstrap_servers = s.bootstrap_servers
            self.on_step(f"creating registry topics on {self.bootstrap_servers}")
            self.partitions = asyncio.run(kafka.ensure_topics(s, self.bootstrap_servers))
            if self.broker is not None:
                write_runtime_file(s.runtime_file, self.bootstrap_servers, os.getpid())
            if self.stages:
                self.on_step(f"starting stages: {', '.join(self.stages)}")
                self.supervisor = StageSupervisor(s, self.bootstrap_servers)
                self.supervisor.start(self.stages, time.monotonic())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.supervisor is not None:
            broker_gone = self.broker is not None and not self.broker.alive()
            if self.broker is not None and not broker_gone and not self.settings.durable_broker:
                try:
                    self.drain()
                except KeyboardInterrupt:  # a second Ctrl-C: stop now, unread records are lost
                    self.on_step("stopping without waiting for the stages to read")
            self.on_step("stopping stages")
            # a stage's graceful shutdown waits for the broker: without it, it would only hang
            self.supervisor.stop(timeout_s=STAGE_STOP_NO_BROKER_S if broker_gone else 20.0)
            self.supervisor = None
        if self.broker is not None:
            self.on_step("stopping the embedded broker")
            self.broker.stop()
            self.broker = None
            remove_runtime_file(self.settings.runtime_file, os.getpid())

    def drain(self) -> dict[str, int]:
        """Before the in-memory broker stops (and takes what it holds with it): stop the
        receiver, so nothing new is acknowledged, then give every running stage up to
        ``drain_timeout_s`` to read and commit what the broker holds on its input topic.
        Returns the records each stage's consumer group left unread (lost)."""
        assert self.supervisor is not None
        self.supervisor.stop(only=(RECEIVER,))
        groups = {
            f"worldline-{s.stage}": [
                TopicPartition(self.settings.topic(logical), p)
                for p in range(topics.spec(logical).partitions)
            ]
            for s in self.supervisor.running
            if (logical := DRAINED_INPUTS.get(s.stage)) and s.proc.poll() is None
        }
        if not groups:
            return {}
        self.on_step("letting the stages read what the broker holds")
        deadline = time.monotonic() + self.settings.drain_timeout_s
        left: dict[str, int] = {}
        while True:
            try:
                left = asyncio.run(kafka.unread(self.bootstrap_servers, groups))
            except Exception as e:  # the broker is gone: nothing more can be read
                self.on_step(f"cannot read what the stages left unread: {e}")
                return left
            left = {g: n for g, n in left.items() if n}
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if left:
            self.on_step(
                "lost with the in-memory broker, not read in time: "
                + ", ".join(f"{g} {n} records" for g, n in sorted(left.items()))
            )
        return left

    def __enter__(self) -> Platform:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def broker_cluster_id(settings: Settings) -> str:
    """The embedded broker's cluster id. In memory, a new one at every start: its records
    start again from offset 0, and the new id tells every stage that these are new records.
    In durable storage, one id per data directory, made at the first start and kept in
    ``<data_dir>/broker-cluster-id``: tansu keeps the records under it."""
    fresh = f"worldline-{uuid.uuid4().hex[:16]}"
    if not settings.durable_broker:
        return fresh
    path = settings.data_dir / "broker-cluster-id"
    with contextlib.suppress(FileNotFoundError):
        kept = path.read_text().strip()
        if kept:
            return kept
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(fresh + "\n")
    os.replace(tmp, path)
    return fresh


def write_runtime_file(path: Path, bootstrap: str, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"bootstrap_servers": bootstrap, "pid": pid}))
    os.replace(tmp, path)


def remove_runtime_file(path: Path, pid: int) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError, orjson.JSONDecodeError):
        if orjson.loads(path.read_bytes()).get("pid") == pid:
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_bootstrap(settings: Settings) -> str:
    """The broker to talk to: configured servers, else a running embedded platform."""
    if settings.bootstrap_servers:
        return settings.bootstrap_servers
    path = settings.runtime_file
    try:
        info = orjson.loads(path.read_bytes())
        if _alive(int(info["pid"])):
            return str(info["bootstrap_servers"])
    except (FileNotFoundError, KeyError, ValueError, orjson.JSONDecodeError):
        pass
    raise NoBrokerError(
        f"no broker to talk to: start the platform with `worldline up` (data_dir={settings.data_dir})"
        " or set bootstrap_servers (--bootstrap-servers / WORLDLINE_BOOTSTRAP_SERVERS)"
    )
