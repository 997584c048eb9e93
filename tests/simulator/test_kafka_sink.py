"""Through a real broker, on topics renamed for this test so that nothing else sees the records."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from click.testing import CliRunner

from jobs.simulator.cli import simulate
from jobs.simulator.simulation import TOPICS, RunConfig, Simulation
from jobs.simulator.sink import send_records
from pipeline import kafka
from pipeline.settings import Settings
from tests.simulator.simulated_runs import START_S

pytestmark = pytest.mark.integration


def isolated_topics() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return {t: f"{t}-sim-{suffix}" for t in TOPICS}


async def _find_change(
    bootstrap: str, topic: str, change_id: str
) -> tuple[int, dict[str, object]] | None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        for _ in range(20):
            batch = await consumer.getmany(tp, timeout_ms=500)
            for message in batch.get(tp, []):
                event = orjson.loads(message.value)
                if event["change_id"] == change_id:
                    return message.timestamp, event
        return None
    finally:
        await consumer.stop()


def test_records_reach_kafka_with_event_time_timestamps(bootstrap: str, tmp_path: Path) -> None:
    settings = Settings(bootstrap_servers=bootstrap, data_dir=tmp_path, topics=isolated_topics())
    asyncio.run(kafka.ensure_topics(settings, bootstrap))
    sim = Simulation(
        RunConfig(
            start_s=START_S,
            scenario="slow-query-after-deploy",
            seed=8,
            services=10,
            warmup_s=20.0,
            duration_s=10.0,
        )
    )
    records = list(sim.records())
    sent = asyncio.run(send_records(bootstrap, records, settings.topic))
    assert sent == len(records)
    (deploy,) = [c for c in sim.changes if c.change_id.startswith("deploy-")]
    found = asyncio.run(_find_change(bootstrap, settings.topic("changes"), deploy.change_id))
    assert found is not None
    timestamp, event = found
    assert timestamp == int(deploy.time_s * 1000)
    assert event["kind"] == "deploy"


def test_cli_run_sends_to_the_configured_broker(
    bootstrap: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    renames = isolated_topics()
    monkeypatch.setenv("WORLDLINE_BOOTSTRAP_SERVERS", bootstrap)
    monkeypatch.setenv("WORLDLINE_DATA_DIR", str(tmp_path))
    for logical, actual in renames.items():
        monkeypatch.setenv(f"WORLDLINE_TOPIC_{logical.upper()}", actual)
    args = [
        "run",
        "--scenario",
        "bad-config-push",
        "--seed",
        "5",
        "--services",
        "10",
        "--warmup",
        "20",
        "--duration",
        "10",
        "--start",
        "2025-11-21T13:00:00Z",
        "--kafka",
    ]
    result = CliRunner().invoke(simulate, args)
    assert result.exit_code == 0, result.output
    change_id = f"config-{int(START_S) + 20}"
    found = asyncio.run(_find_change(bootstrap, renames["changes"], change_id))
    assert found is not None and found[1]["kind"] == "config"
