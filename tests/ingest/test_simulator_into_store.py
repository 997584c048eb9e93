"""Issue acceptance: a simulator scenario through the embedded broker into the store; the rows in
the store equal what was produced (counts and a content checksum per signal)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pytest

from jobs.simulator.simulation import RunConfig, Simulation
from pipeline import kafka, otlp, topics
from pipeline.ingest.logs import MinerStates
from pipeline.ingest.metrics import metrics_tables
from pipeline.ingest.spans import spans_table
from pipeline.platform import Platform
from pipeline.segments.audit import content_digest
from pipeline.segments.store import SegmentStore
from tests.ingest.test_ingest_kafka import (
    SPAN_COLUMNS,
    _high_water,
    _isolated_settings,
    _start,
    _stop,
    _wait_stored,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START_S = 1_763_730_000.0
METRIC_POINT_COLUMNS = [
    "series_id",
    "time_unix_nano",
    "value",
    "count",
    "sum",
    "bucket_counts",
    "explicit_bounds",
]


def test_simulated_incident_is_stored_as_produced(platform: Platform, tmp_path: Path) -> None:
    run = RunConfig(
        start_s=START_S,
        scenario="slow-query-after-deploy",
        seed=3,
        services=12,
        warmup_s=120,
        duration_s=90,
        peak_rate=25.0,
    )
    produced: dict[str, list[bytes]] = defaultdict(list)
    for record in Simulation(run).records():
        produced[record.topic].append(record.value)
    assert all(produced[t] for t in ("otlp_spans", "otlp_metrics", "otlp_logs"))

    settings, env = _isolated_settings(platform, tmp_path)
    for logical in ("otlp_spans", "otlp_metrics", "otlp_logs"):
        asyncio.run(
            kafka.produce(
                platform.bootstrap_servers,
                settings.topic(logical),
                [(None, v) for v in produced[logical]],
            )
        )
    log = tmp_path / "workers.log"
    store_dir = tmp_path / "segments"
    stages = {
        "ingest-spans": ("spans", "otlp_spans"),
        "ingest-metrics": ("metrics", "otlp_metrics"),
        "ingest-logs": ("logs", "otlp_logs"),
    }
    workers = {stage: _start(env, stage, log) for stage in stages}
    try:
        for stage, (signal, logical) in stages.items():
            _wait_stored(
                store_dir,
                signal,
                settings.topic(logical),
                _high_water(settings, logical),
                workers[stage],
                log,
                timeout=120,
            )
    finally:
        for proc in workers.values():
            _stop(proc)
    store = SegmentStore(store_dir)

    def stored(signal: str) -> list[pa.Table]:
        return [store.read(m) for m in store.manifests(signal)]

    decoded = [otlp.from_proto(v, topics.OTLP_TRACES) for v in produced["otlp_spans"]]
    expected_spans = content_digest([spans_table(decoded)], SPAN_COLUMNS)
    assert content_digest(stored("spans"), SPAN_COLUMNS) == expected_spans
    assert expected_spans[0] > 1000

    series, points = metrics_tables(
        [otlp.from_proto(v, topics.OTLP_METRICS) for v in produced["otlp_metrics"]]
    )
    assert content_digest(stored("metrics"), METRIC_POINT_COLUMNS) == content_digest(
        [points], METRIC_POINT_COLUMNS
    )
    assert {s for t in stored("metric_series") for s in t["series_id"].to_pylist()} == set(
        series["series_id"].to_pylist()
    )

    logs = pa.concat_tables(stored("logs"))
    states = MinerStates(store.state_dir(), settings.topic("otlp_logs"))
    rebuilt = sorted(
        (t, states.reconstruct(tid, params))
        for t, tid, params in zip(
            logs["time_unix_nano"].to_pylist(),
            logs["template_id"].to_pylist(),
            logs["params"].to_pylist(),
            strict=True,
        )
    )
    sent = sorted(
        (r.time_unix_nano or r.observed_time_unix_nano, r.body.string_value)
        for v in produced["otlp_logs"]
        for rl in otlp.from_proto(v, topics.OTLP_LOGS).resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
    )
    assert rebuilt == sent and len(sent) > 100
