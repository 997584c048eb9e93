"""The embedded broker, for real: topics, produce, consume in a group, clean shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pipeline import kafka, topics
from pipeline.broker import BrokerError, EmbeddedBroker
from pipeline.platform import Platform
from pipeline.settings import Settings
from tests.conftest import listening, pid_alive

pytestmark = pytest.mark.integration


def test_registry_topics_exist_with_their_partition_counts(bootstrap: str) -> None:
    async def describe() -> dict[str, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics([t.name for t in topics.REGISTRY])
        finally:
            await admin.close()
        return {d["topic"]: len(d["partitions"]) for d in described}

    counts = asyncio.run(describe())
    assert counts == {t.name: t.partitions for t in topics.REGISTRY}


def test_broker_listens_on_loopback_only(platform: Platform) -> None:
    assert platform.broker is not None
    host, port = platform.broker.host, platform.broker.port
    assert host == "127.0.0.1"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    local = {line.split()[1] for line in lines if line.split()[3] == "0A"}  # LISTEN
    assert f"0100007F:{port:04X}" in local
    assert f"00000000:{port:04X}" not in local


def test_produce_then_consume_in_a_group(bootstrap: str) -> None:
    topic = "changes"
    payloads = [orjson.dumps({"n": i}) for i in range(50)]

    async def run() -> list[int]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
        await producer.start()
        try:
            for p in payloads:
                await producer.send(topic, p)
            await producer.flush()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id="test-group",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )
        await consumer.start()
        seen: list[int] = []
        try:
            deadline = time.monotonic() + 30
            while len(seen) < len(payloads) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    seen.extend(orjson.loads(r.value)["n"] for r in records if r.value)
            await consumer.commit()
        finally:
            await consumer.stop()
        return seen

    seen = asyncio.run(run())
    assert sorted(seen)[-50:] == list(range(50))

    # the committed offset and the fetch high-water mark agree: no lag left
    settings = Settings(bootstrap_servers=bootstrap)
    status = asyncio.run(kafka.cluster_status(settings, bootstrap))
    by_topic = {t.name: t for t in status.topics}
    assert by_topic["changes"].records >= 50
    group = next(g for g in status.groups if g.group == "test-group")
    assert group.lag == {"changes": 0}


def test_high_water_marks_are_right_after_multi_record_batches(bootstrap: str) -> None:
    tp = TopicPartition("otlp_logs", 3)

    async def run() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            before = (await kafka.high_water_marks(bootstrap, [tp]))[tp]
            batch = producer.create_batch()
            for i in range(7):
                batch.append(key=None, value=b"x%d" % i, timestamp=None)
            await (await producer.send_batch(batch, tp.topic, partition=tp.partition))
        finally:
            await producer.stop()
        after = (await kafka.high_water_marks(bootstrap, [tp]))[tp]
        return after - before

    assert asyncio.run(run()) == 7


def test_stop_leaves_no_process_and_frees_the_port() -> None:
    broker = EmbeddedBroker().start()
    pid, port = broker.pid, broker.port
    assert pid is not None and pid_alive(pid) and listening("127.0.0.1", port)
    broker.stop()
    assert not pid_alive(pid)
    assert not listening("127.0.0.1", port)


def test_taken_port_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port 127.0.0.1:{port} is already in use"):
            EmbeddedBroker(port=port).start()


def test_missing_binary_is_a_clear_error(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(BrokerError, match="is not an executable file"):
        EmbeddedBroker(binary=str(tmp_path) + "/no-tansu").start()


def test_broker_dies_with_a_crashed_parent(tmp_path: os.PathLike[str]) -> None:
    """kill -9 of the process that started the broker must not leave the broker running."""
    script = textwrap.dedent(
        """
        import sys, time
        from pipeline.broker import EmbeddedBroker
        b = EmbeddedBroker().start()
        print(b.pid, b.port, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pid_s, port_s = parent.stdout.readline().split()
    child = int(pid_s)
    assert pid_alive(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while pid_alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(child)
    assert not listening("127.0.0.1", int(port_s))
