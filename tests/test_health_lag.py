"""``/healthz`` through a real platform when a stage falls behind: its own embedded broker, the
receiver and ingest-spans as processes under the supervisor. ingest-spans is frozen (SIGSTOP)
while spans keep arriving, so its consumer group's lag grows: ``/healthz`` turns 503 and names
the stage and its lag; thawed (SIGCONT), it catches up and ``/healthz`` is 200 again."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from pipeline import kafka
from pipeline.broker import free_port
from pipeline.platform import Platform
from pipeline.settings import Settings
from pipeline.testing import span_request
from tests.test_selfmetrics import get, scrape, value, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WINDOW_S = 3.0
MIN_RECORDS = 20


def _health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = get(port, "/healthz")
    return status, orjson.loads(body)


def _until(port: int, ok: Callable[[int, dict[str, Any]], bool]) -> Callable[[], Any]:
    def check() -> dict[str, Any] | None:
        try:
            status, health = _health(port)
        except OSError:  # the receiver is not listening yet
            return None
        return health if ok(status, health) else None

    return check


def test_healthz_is_503_while_a_stage_lag_grows_and_200_once_it_caught_up(
    tmp_path: Any,
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        http_port=free_port(),
        segment_max_seconds=0.5,
        monitor_every_s=0.5,
        health_lag_window_s=WINDOW_S,
        health_lag_min_records=MIN_RECORDS,
    )
    port = settings.http_port
    topic = settings.topic("otlp_spans")
    with Platform(settings, stages=["receiver", "ingest-spans"]) as platform:
        assert platform.supervisor is not None
        [ingest] = [s.proc for s in platform.supervisor.running if s.stage == "ingest-spans"]

        def produce(seeds: range) -> None:
            requests = [(None, span_request(seed, traces=1).SerializeToString()) for seed in seeds]
            asyncio.run(kafka.produce(platform.bootstrap_servers, topic, requests))

        # the group has read and committed: its lag counts, and it is 0
        produce(range(0, 8))
        wait_for(
            _until(
                port,
                lambda status, h: (
                    status == 200 and h["checks"]["lag"].get("ingest-spans", {}).get("records") == 0
                ),
            )
        )

        stop = threading.Event()
        sent = [8]

        def keep_producing() -> None:
            while not stop.is_set():
                produce(range(sent[0], sent[0] + 5))
                sent[0] += 5
                time.sleep(0.2)

        producer = threading.Thread(target=keep_producing)
        ingest.send_signal(signal.SIGSTOP)
        producer.start()
        try:
            growing = wait_for(_until(port, lambda status, _h: status == 503), timeout=45)
            samples = scrape(port)
        finally:
            stop.set()
            producer.join()
            ingest.send_signal(signal.SIGCONT)
        assert growing["status"] == "unhealthy"
        [reason] = growing["reasons"]  # the broker answers and every stage runs: only the lag
        assert reason.startswith("consumer lag of ingest-spans grows: at least ")
        behind = int(reason.split("at least ")[1].split()[0])
        assert behind >= MIN_RECORDS
        assert f"over the last {WINDOW_S:g} s" in reason
        lag = growing["checks"]["lag"]["ingest-spans"]
        assert lag["growing"] is True and lag["records"] >= behind
        assert growing["checks"]["stages"]["ingest-spans"]["up"] is True
        assert value(samples, "worldline_consumer_lag_growing", stage="ingest-spans") == 1
        assert value(samples, "worldline_healthy") == 0

        # thawed, it reads everything, commits, and the lag rule stops firing
        caught_up = wait_for(
            _until(
                port,
                lambda status, h: (
                    status == 200 and h["checks"]["lag"]["ingest-spans"]["records"] == 0
                ),
            ),
            timeout=45,
        )
        assert caught_up["status"] == "ok" and caught_up["reasons"] == []
        assert caught_up["checks"]["lag"]["ingest-spans"]["growing"] is False
        samples = scrape(port)
        assert value(samples, "worldline_consumer_lag_growing", stage="ingest-spans") == 0
        # every record sent was read once the stage was thawed
        wait_for(
            lambda: (
                value(scrape(port), "worldline_records_in_total", stage="ingest-spans") == sent[0]
            )
        )
