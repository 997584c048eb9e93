"""A running receiver on a free loopback port, publishing to fresh topics of the session broker.

The receiver runs in its own event loop on a background thread, so synchronous clients (the
OpenTelemetry SDK exporters, Prometheus, ``http.client``) talk to it as to any server. A consumer
on the same loop collects what lands on the topics; ``take`` returns what arrived since the last
call, so every test sees only its own records.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.client
import threading
import uuid
from collections import defaultdict
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

import schemas
from pipeline import kafka, topics
from pipeline.receivers.server import RunningReceivers, running_receivers
from pipeline.settings import Settings

RECEIVER_RECORD_LIMIT = 256 * 1024
WATCHED_TOPICS = ("otlp_spans", "otlp_metrics", "otlp_logs", "deadletter", "alerts")
T = TypeVar("T")


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


class ReceiverHarness:
    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stack = contextlib.AsyncExitStack()
        self.buffer: dict[str, list[ConsumerRecord[bytes, bytes]]] = defaultdict(list)
        self.running: RunningReceivers | None = None
        self.consumer: AIOKafkaConsumer | None = None

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> ReceiverHarness:
        self.thread.start()
        self.running = self.call(self._start())
        return self

    async def _start(self) -> RunningReceivers:
        running = await self.stack.enter_async_context(
            running_receivers(self.settings, self.bootstrap, port=0)
        )
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        self.stack.push_async_callback(consumer.stop)
        partitions = [
            TopicPartition(self.settings.topic(name), p)
            for name in WATCHED_TOPICS
            for p in range(topics.spec(name).partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        self.consumer = consumer
        return running

    def stop(self) -> None:
        self.call(self.stack.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @property
    def port(self) -> int:
        assert self.running is not None
        return self.running.port

    @property
    def url(self) -> str:
        assert self.running is not None
        return self.running.url

    def start_extra(self, **kwargs: Any) -> RunningReceivers:
        """Another receiver on the same topics (e.g. with a token), stopped with the harness."""

        async def start() -> RunningReceivers:
            return await self.stack.enter_async_context(
                running_receivers(self.settings, self.bootstrap, port=0, **kwargs)
            )

        return self.call(start())

    def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        method: str = "POST",
        port: int | None = None,
    ) -> HttpAnswer:
        connection = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=20)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
            return HttpAnswer(
                response.status, {k.lower(): v for k, v in response.getheaders()}, data
            )
        finally:
            connection.close()

    def health(self) -> dict[str, Any]:
        answer = self.post("/healthz", b"", method="GET")
        assert answer.status == 200
        result: dict[str, Any] = orjson.loads(answer.body)
        return result

    def take(
        self, logical: str, count: int, *, timeout: float = 15.0, settle: float = 0.2
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Records of a topic that arrived since the last call: wait for ``count``, then a bit more."""
        return self.call(self._take(self.settings.topic(logical), count, timeout, settle), 60)

    async def _take(
        self, topic: str, count: int, timeout: float, settle: float
    ) -> list[ConsumerRecord[bytes, bytes]]:
        assert self.consumer is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        settle_until: float | None = None
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for record in records:
                    self.buffer[record.topic].append(record)
            now = loop.time()
            if len(self.buffer[topic]) >= count and settle_until is None:
                settle_until = now + settle
            if (settle_until is not None and now >= settle_until) or now >= deadline:
                break
        taken = sorted(self.buffer.pop(topic, []), key=lambda r: (r.partition, r.offset))
        return taken

    def deadletters(self, count: int, **kwargs: Any) -> list[dict[str, Any]]:
        letters = [orjson.loads(r.value or b"") for r in self.take("deadletter", count, **kwargs)]
        for letter in letters:
            schemas.validate("deadletter.schema.json", letter)
        return letters


@pytest.fixture(scope="session")
def receiver(bootstrap: str) -> Iterator[ReceiverHarness]:
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        bootstrap_servers=bootstrap,
        http_port=0,
        max_record_bytes=RECEIVER_RECORD_LIMIT,
        topics={name: f"receivers-{run}-{name}" for name in WATCHED_TOPICS},
    )
    asyncio.run(kafka.ensure_topics(settings, bootstrap))
    harness = ReceiverHarness(settings, bootstrap).start()
    yield harness
    harness.stop()


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)
