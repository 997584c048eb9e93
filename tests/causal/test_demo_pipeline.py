"""Issue acceptance: a simulated incident through the whole Kafka pipeline; an Alertmanager
alert in, a causes.ranked record out that validates and names the injected root cause first."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

import schemas
from jobs.demo import label_matches, run_demo
from jobs.simulator.simulation import RunConfig
from pipeline.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_alert_in_ranked_causes_out(tmp_path: Path) -> None:
    history = 2400.0
    start = dt.datetime(2026, 11, 20, 1, 0, tzinfo=dt.UTC).timestamp()  # as `worldline demo` does
    run = RunConfig(
        start_s=start,
        scenario="database-slowdown",
        seed=1,
        services=14,
        warmup_s=history,
        duration_s=600.0,
        peak_rate=15.0,
        slice_s=10.0,
    )
    result = run_demo(Settings(data_dir=tmp_path), run)
    assert result.record is not None, "no causes.ranked record arrived"
    record = result.record
    schemas.validate("causes.ranked.schema.json", record)
    [fault] = result.labels["faults"]
    top = record["causes"][0]
    assert label_matches(f"{top['entity']['kind']}:{top['entity']['name']}", fault["entity"])
    assert top["probability"] >= 0.5 and not record["abstained"]
    onset = dt.datetime.fromisoformat(top["onset"].replace("Z", "+00:00")).timestamp()
    assert abs(onset - (start + history)) <= 60.0  # within one interval of the injected onset
    assert top["path"][0] == top["entity"] and len(top["path"]) >= 2
