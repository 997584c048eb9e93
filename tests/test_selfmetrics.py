"""Self-observability through a real platform: its own embedded broker, the receiver and the
ingest-spans stage as processes under the supervisor (multiprocess metrics), telemetry sent
over HTTP, ``/metrics`` scraped and parsed, ``/healthz`` going 503 when a stage or the broker
dies."""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline import kafka
from pipeline.broker import free_port
from pipeline.platform import Platform
from pipeline.settings import Settings
from pipeline.testing import span_request

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(port: int, path: str, body: bytes | None = None, ctype: str = "") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        headers = {"Content-Type": ctype} if ctype else {}
        connection.request("POST" if body is not None else "GET", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def scrape(port: int) -> Samples:
    status, body = get(port, "/metrics")
    assert status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def wait_for(what: Callable[[], Any], timeout: float = 60.0, step: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = what()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"not reached in {timeout} s: {last!r}")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("selfmetrics"),
        http_port=free_port(),
        segment_max_seconds=1.0,
        monitor_every_s=0.5,
    )
    with Platform(settings, stages=["receiver", "ingest-spans"]) as platform:

        def healthy() -> bool:
            try:
                return get(settings.http_port, "/healthz")[0] == 200
            except OSError:
                return False

        wait_for(healthy)
        yield platform


def test_metrics_count_records_dead_letters_and_lag(running: Platform) -> None:
    port = running.settings.http_port
    for seed in range(3):
        body = span_request(seed).SerializeToString()
        assert get(port, "/v1/traces", body, "application/x-protobuf")[0] == 200
    # refused by the receiver (not protobuf), and by ingest (sent to Kafka directly)
    assert get(port, "/v1/traces", b"\x0a\xff\xff", "application/x-protobuf")[0] == 400
    asyncio.run(
        kafka.produce(
            running.bootstrap_servers, running.settings.topic("otlp_spans"), [(None, b"\x0a\xff")]
        )
    )

    def ingested() -> Samples | None:
        samples = scrape(port)
        done = value(samples, "worldline_records_in_total", stage="ingest-spans") == 4
        lag = [
            v
            for (name, labels), v in samples.items()
            if name == "worldline_consumer_lag" and ("stage", "ingest-spans") in labels
        ]
        # every record seen, and committed: no lag left on any partition
        return samples if done and len(lag) == 4 and sum(lag) == 0 else None

    samples = wait_for(ingested)
    assert value(samples, "worldline_records_in_total", stage="receiver") == 4
    assert value(samples, "worldline_bytes_in_total", stage="receiver") > 0
    assert value(samples, "worldline_bytes_in_total", stage="ingest-spans") > 0
    assert (
        value(
            samples, "worldline_deadletters_total", stage="ingest-spans", reason="otlp_decode_error"
        )
        == 1
    )
    assert (
        value(samples, "worldline_deadletters_total", stage="receiver", reason="otlp_decode_error")
        == 1
    )
    assert value(samples, "worldline_http_refused_total", reason="otlp_decode_error") == 1
    assert value(samples, "worldline_items_stored_total", stage="ingest-spans") == 3 * 5 * 4
    topic = running.settings.topic("otlp_spans")
    high = [
        value(samples, "worldline_topic_high_water", topic=topic, partition=str(p))
        for p in range(4)
    ]
    assert sum(h or 0 for h in high) == 4  # three requests and the bad record
    for p in range(4):
        labels = dict(
            stage="ingest-spans", group="worldline-ingest-spans", topic=topic, partition=str(p)
        )
        assert value(samples, "worldline_consumer_lag", **labels) == 0
    assert value(samples, "worldline_broker_up") == 1
    assert value(samples, "worldline_stage_up", stage="ingest-spans") == 1
    assert value(samples, "worldline_healthy") == 1

    status, body = get(port, "/healthz")
    health = orjson.loads(body)
    assert status == 200 and health["status"] == "ok" and health["reasons"] == []
    assert health["checks"]["broker"]["up"] is True
    assert health["checks"]["stages"]["ingest-spans"]["up"] is True
    assert health["refused"] == {"otlp_decode_error": 1}  # the counters are still there


def test_healthz_is_503_when_a_stage_is_down(running: Platform) -> None:
    assert running.supervisor is not None
    [ingest] = [s for s in running.supervisor.running if s.stage == "ingest-spans"]
    ingest.proc.kill()
    ingest.proc.wait()  # reaped: nothing restarts it (no `up` loop here)

    def unhealthy() -> dict[str, Any] | None:
        status, body = get(running.settings.http_port, "/healthz")
        return orjson.loads(body) if status == 503 else None

    health = wait_for(unhealthy, timeout=15)
    assert health["status"] == "unhealthy"
    assert any(r.startswith("stage ingest-spans is down") for r in health["reasons"])
    assert (
        value(scrape(running.settings.http_port), "worldline_stage_up", stage="ingest-spans") == 0
    )


def test_healthz_is_503_when_the_broker_is_killed(running: Platform) -> None:
    assert running.broker is not None and running.broker.proc is not None
    running.broker.proc.kill()
    running.broker.proc.wait()

    def broker_down() -> dict[str, Any] | None:
        status, body = get(running.settings.http_port, "/healthz")
        health = orjson.loads(body)
        return health if status == 503 and health["checks"]["broker"]["up"] is False else None

    health = wait_for(broker_down, timeout=30)
    assert any(r.startswith("broker ") and "unreachable" in r for r in health["reasons"])
    samples = scrape(running.settings.http_port)
    assert value(samples, "worldline_broker_up") == 0
    assert value(samples, "worldline_healthy") == 0
    # no lag is made up while the broker cannot be read
    assert not [k for k in samples if k[0] == "worldline_consumer_lag"]
    # counters recorded before stay
    assert value(samples, "worldline_records_in_total", stage="ingest-spans") == 4


def test_stage_states_file_is_removed_on_stop(tmp_path: Path) -> None:
    from pipeline.stages import StageSupervisor, read_stage_states, stages_file

    settings = Settings(data_dir=tmp_path)
    supervisor = StageSupervisor(settings, "127.0.0.1:1")
    supervisor.start([])
    assert stages_file(settings).exists() and read_stage_states(settings) == {}
    supervisor.stop()
    assert not stages_file(settings).exists()
