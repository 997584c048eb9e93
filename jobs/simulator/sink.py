"""Send simulated records to Kafka: as fast as possible, or paced to their event times.

Record timestamps are the event times (``timestamp_ms``), so a consumer sees the same times
whichever pace was chosen. Topic names go through the settings' overrides like every other
producer in worldline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Literal

from aiokafka import AIOKafkaProducer

from jobs.simulator.simulation import Record
from pipeline import kafka_auth

Pace = Literal["realtime", "fast"]


class PacedClock:
    """Maps event time to wall time: record at event t is due at wall start + (t - first)."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now
        self.first_event_ms: int | None = None
        self.wall_start = 0.0

    def delay_for(self, event_ms: int) -> float:
        if self.first_event_ms is None:
            self.first_event_ms = event_ms
            self.wall_start = self.now()
            return 0.0
        due = self.wall_start + (event_ms - self.first_event_ms) / 1000.0
        return max(0.0, due - self.now())


async def send_records(
    bootstrap: str,
    records: Iterable[Record],
    topic_name: Callable[[str], str],
    pace: Pace = "fast",
    on_sent: Callable[[Record], None] | None = None,
    max_request_size: int = 4 * 1024 * 1024,
) -> int:
    """Produce every record (acks=all); return how many were sent."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        max_request_size=max_request_size,
        **kafka_auth.client_options(),
    )
    await producer.start()
    clock = PacedClock()
    sent = 0
    pending: list[asyncio.Future[object]] = []
    try:
        for record in records:
            if pace == "realtime":
                delay = clock.delay_for(record.timestamp_ms)
                if delay > 0:
                    await asyncio.sleep(delay)
            fut = await producer.send(
                topic_name(record.topic),
                value=record.value,
                key=record.key,
                timestamp_ms=record.timestamp_ms,
            )
            pending.append(fut)
            sent += 1
            if on_sent is not None:
                on_sent(record)
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return sent
    finally:
        await producer.stop()
