"""Two replicas of one ingest stage through the real embedded broker: they share the topic's
partitions in one consumer group, and a `kill -9` of one mid-stream and its restart leave the
store equal to what was produced (nothing lost, nothing twice)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline import kafka
from pipeline.ingest.spans import spans_table
from pipeline.platform import Platform
from pipeline.segments.audit import content_digest
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings
from pipeline.testing import span_request
from tests.ingest.test_ingest_kafka import (
    SPAN_COLUMNS,
    _high_water,
    _isolated_settings,
    _start,
    _stop,
    _tables,
    _wait_stored,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = {0, 1, 2, 3}  # otlp_spans' partitions in the registry


def _produce_keyed(settings: Settings, payloads: list[bytes], first: int) -> None:
    """Keyed records: the key decides the partition, so the spread is the same every run."""
    records = [(f"request-{first + i}".encode(), p) for i, p in enumerate(payloads)]
    placed = asyncio.run(
        kafka.produce(settings.bootstrap_servers or "", settings.topic("otlp_spans"), records)
    )
    assert {partition for partition, _ in placed} == PARTITIONS


def _assignment(log: Path, topic: str) -> set[int] | None:
    """The partitions of ``topic`` last assigned to the worker writing ``log`` (faust logs each
    assignment as a table: ``| <topic> | {0, 2} |``); None before the first."""
    if not log.exists():
        return None
    found = re.findall(rf"\| {re.escape(topic)} +\| \{{([\d, ]*)\}} +\|", log.read_text())
    if not found:
        return None
    return {int(p) for p in found[-1].split(",") if p.strip()}


def _wait_shared(
    logs: dict[str, Path], topic: str, procs: list[subprocess.Popen[bytes]], timeout: float = 30
) -> dict[str, set[int]]:
    """Wait until every replica holds partitions and together they hold each exactly once."""
    deadline = time.monotonic() + timeout
    held: dict[str, set[int] | None] = {}
    while time.monotonic() < deadline:
        held = {name: _assignment(log, topic) for name, log in logs.items()}
        sets = [h for h in held.values() if h]
        shared = len(sets) == len(logs) and sum(map(len, sets)) == len(PARTITIONS)
        if shared and set().union(*sets) == PARTITIONS:
            return {n: h for n, h in held.items() if h}
        for proc, log in zip(procs, logs.values(), strict=True):
            assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"the replicas do not share {topic}'s partitions: {held}")


def _stored_offsets(store_dir: Path, topic: str) -> dict[int, int]:
    """The last stored offset per partition, in the broker's one epoch (offsets are kept per
    epoch of the broker's storage)."""
    store = SegmentStore(store_dir)
    epochs = {m.source.epoch for m in store.manifests("spans") if m.source.topic == topic}
    assert len(epochs) <= 1, f"one broker, one epoch: {epochs}"
    return store.durable_offsets("spans", topic, *epochs)


def test_two_replicas_share_partitions_and_survive_kill_9(
    platform: Platform, tmp_path: Path
) -> None:
    settings, env = _isolated_settings(platform, tmp_path)
    topic = settings.topic("otlp_spans")
    requests = [span_request(seed, traces=8) for seed in range(320)]
    payloads = [r.SerializeToString() for r in requests]
    _produce_keyed(settings, payloads[:200], 0)
    store_dir = tmp_path / "segments"
    logs = {"a": tmp_path / "a.log", "b": tmp_path / "b.log"}
    a = _start(env, "ingest-spans", logs["a"])
    b = _start(env, "ingest-spans", logs["b"])
    try:
        held = _wait_shared(logs, topic, [a, b])
        assert held["a"].isdisjoint(held["b"])

        # both store what they hold; kill -9 of a as soon as it has sealed a segment
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            stored = _stored_offsets(store_dir, topic)
            if set(stored) & held["a"]:
                break
            assert a.poll() is None, logs["a"].read_text()[-3000:]
            time.sleep(0.02)
        os.kill(a.pid, signal.SIGKILL)
        a.wait()
        at_kill = _stored_offsets(store_dir, topic)
        assert set(at_kill) & held["a"], "a sealed nothing before it was killed"
        produced = _high_water(settings, "otlp_spans")
        assert any(at_kill.get(p, -1) < produced[p] - 1 for p in held["a"]), "a had finished"

        # the stream goes on while a is down, and after it is back
        _produce_keyed(settings, payloads[200:260], 200)
        logs["a"] = tmp_path / "a-restarted.log"
        a = _start(env, "ingest-spans", logs["a"])
        _produce_keyed(settings, payloads[260:], 260)
        again = _wait_shared(logs, topic, [a, b])
        assert again["a"] and again["b"]

        hws = _high_water(settings, "otlp_spans")
        assert sum(hws.values()) == len(payloads)
        _wait_stored(store_dir, "spans", topic, hws, b, logs["b"], timeout=60)
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                _stop(proc)

    store = SegmentStore(store_dir)
    by_partition = {m.source.partition for m in store.manifests("spans")}
    assert by_partition == PARTITIONS
    stored = content_digest(_tables(store, "spans"), SPAN_COLUMNS)
    expected = content_digest([spans_table(requests)], SPAN_COLUMNS)
    assert stored == expected  # same rows, nothing missing, nothing twice
