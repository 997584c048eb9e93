"""Run the receivers: a Kafka producer, the aiohttp app, a TCP site on the configured address."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web
from aiokafka import AIOKafkaProducer

from pipeline.api import mount_api
from pipeline.kafka_auth import KafkaAuth
from pipeline.monitor import Monitor
from pipeline.receivers.app import COUNTERS_KEY, ReceiverCounters, build_receiver_app
from pipeline.settings import Settings

# room for the record batch framing around a record of max_record_bytes
PRODUCER_REQUEST_MARGIN_BYTES = 64 * 1024


@dataclass(frozen=True)
class RunningReceivers:
    host: str
    port: int
    counters: ReceiverCounters

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextlib.asynccontextmanager
async def running_receivers(
    settings: Settings,
    bootstrap: str,
    *,
    token: str | None = None,
    port: int | None = None,
    max_request_bytes: int | None = None,
) -> AsyncIterator[RunningReceivers]:
    """Serve on ``settings.http_host`` and ``port`` (default ``settings.http_port``; 0: any free)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_request_size=settings.max_record_bytes + PRODUCER_REQUEST_MARGIN_BYTES,
        **KafkaAuth.from_settings(settings).aiokafka_options(),
    )
    await producer.start()
    runner: web.AppRunner | None = None
    monitor = Monitor(settings, bootstrap)
    try:
        await monitor.start()
        app = build_receiver_app(
            settings, producer, token=token, max_request_bytes=max_request_bytes, monitor=monitor
        )
        mount_api(app, settings, token)
        # bodies are decompressed by the receivers themselves, under the size limit
        runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.http_host, settings.http_port if port is None else port)
        await site.start()
        bound_port = int(runner.addresses[0][1])
        yield RunningReceivers(settings.http_host, bound_port, app[COUNTERS_KEY])
    finally:
        if runner is not None:
            await runner.cleanup()
        await monitor.stop()
        await producer.stop()


def run_receivers(
    settings: Settings,
    bootstrap: str,
    *,
    token: str | None = None,
    duration_s: float | None = None,
    on_ready: Callable[[RunningReceivers], None] = lambda _running: None,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``duration_s``), then stop cleanly."""

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with running_receivers(settings, bootstrap, token=token) as running:
            on_ready(running)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration_s)

    asyncio.run(serve())
