"""The causal-search stage as a process on the real broker: invalid alerts are dead-lettered,
a valid one gets a causes.ranked record even before the world model exists (an honest abstention)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

import schemas
from pipeline import kafka
from pipeline.platform import Platform
from tests.ingest.test_ingest_kafka import _isolated_settings, _start, _stop

pytestmark = pytest.mark.integration


def _read(bootstrap: str, topic: str, want: int) -> list[dict[str, object]]:
    async def run() -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        async for rec in kafka.tail(
            bootstrap, topic, from_beginning=True, limit=want, idle_timeout_s=45
        ):
            out.append(orjson.loads(rec.value or b"{}"))
        return out

    return asyncio.run(run())


def test_stage_dead_letters_bad_alerts_and_answers_good_ones(
    platform: Platform, tmp_path: Path
) -> None:
    settings, env = _isolated_settings(platform, tmp_path)
    renames = {
        "alerts": f"alerts-{tmp_path.name}"[:200],
        "causes.ranked": f"ranked-{tmp_path.name}"[:200],
    }
    settings = settings.model_copy(update={"topics": {**settings.topics, **renames}})
    asyncio.run(kafka.ensure_topics(settings, platform.bootstrap_servers))
    env = dict(
        env,
        WORLDLINE_TOPIC_ALERTS=renames["alerts"],
        WORLDLINE_TOPIC_CAUSES_RANKED=renames["causes.ranked"],
        WORLDLINE_ANSWER_WAIT_S="5",
    )
    bad = b'{"version": "4", "alerts": []}'
    good = orjson.dumps(schemas.examples("alerts")[0])
    asyncio.run(
        kafka.produce(
            platform.bootstrap_servers, settings.topic("alerts"), [(None, bad), (None, good)]
        )
    )
    worker = _start(env, "causal-search", tmp_path / "stage.log")
    try:
        [record] = _read(platform.bootstrap_servers, settings.topic("causes.ranked"), 1)
        [letter] = _read(platform.bootstrap_servers, settings.topic("deadletter"), 1)
    finally:
        _stop(worker)
    schemas.validate("causes.ranked.schema.json", record)
    assert record["abstained"] is True and "world model" in str(record["abstain_reason"])
    assert record["alert_fingerprints"] == ["a1b2c3d4e5f60718"]
    schemas.validate("deadletter.schema.json", letter)
    assert letter["reason"] == "invalid_alert" and letter["source"]["offset"] == 0  # type: ignore[index]
