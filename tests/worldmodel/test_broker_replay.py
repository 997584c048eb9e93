"""Event time everywhere: a simulated run replayed through the embedded broker (ingest and
world-model stages as processes) learns the same dependency graph as a backfill of the same run,
and that graph matches the simulator's topology."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import defaultdict
from pathlib import Path

import pytest

from jobs.backfill import backfill_bundle
from jobs.simulator.bundle import BundleWriter
from jobs.simulator.simulation import RunConfig, Simulation
from pipeline import kafka
from pipeline.platform import Platform
from pipeline.segments.store import SegmentStore
from pipeline.settings import Settings
from pipeline.worldmodel.graph import dependency_pairs, edge_precision_recall
from pipeline.worldmodel.model import WorldModel
from pipeline.worldmodel.worker import MODEL_SIGNALS, checkpoint_path
from tests.ingest.test_ingest_kafka import (
    _high_water,
    _isolated_settings,
    _start,
    _stop,
    _wait_stored,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START_S = 1_763_690_400.0  # 2025-11-21T02:00:00Z


def test_broker_replay_learns_the_backfill_graph(platform: Platform, tmp_path: Path) -> None:
    run = RunConfig(
        start_s=START_S,
        scenario="network-latency",
        seed=2,
        services=12,
        warmup_s=1200,
        duration_s=300,
        slice_s=10.0,
        peak_rate=8.0,
        logs=False,
    )
    sim = Simulation(run)
    writer = BundleWriter(tmp_path / "bundle")
    produced: dict[str, list[bytes]] = defaultdict(list)
    for record in sim.records():
        writer.write(record)
        produced[record.topic].append(record.value)
    labels = sim.labels()
    writer.close(labels, {})

    backfilled = Settings(data_dir=tmp_path / "backfill")
    backfill_bundle(tmp_path / "bundle", backfilled, now=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    reference = WorldModel.restore(
        checkpoint_path(SegmentStore(backfilled.data_dir / "segments")).read_bytes()
    )

    settings, env = _isolated_settings(platform, tmp_path / "live")
    for logical in ("otlp_spans", "otlp_metrics"):
        asyncio.run(
            kafka.produce(
                platform.bootstrap_servers,
                settings.topic(logical),
                [(None, v) for v in produced[logical]],
            )
        )
    log = tmp_path / "workers.log"
    store_dir = tmp_path / "live" / "segments"
    env = dict(env, WORLDLINE_CHECKPOINT_EVERY_S="0.5")
    workers = [
        _start(env, stage, log) for stage in ("ingest-spans", "ingest-metrics", "world-model")
    ]
    try:
        _wait_stored(
            store_dir,
            "spans",
            settings.topic("otlp_spans"),
            _high_water(settings, "otlp_spans"),
            workers[0],
            log,
            timeout=120,
        )
        _wait_stored(
            store_dir,
            "metrics",
            settings.topic("otlp_metrics"),
            _high_water(settings, "otlp_metrics"),
            workers[1],
            log,
            timeout=120,
        )
        store = SegmentStore(store_dir)
        wanted = [m for m in store.manifests() if m.signal in MODEL_SIGNALS]
        deadline = time.monotonic() + 120
        live = None
        while time.monotonic() < deadline:
            path = checkpoint_path(store)
            if path.exists():
                live = WorldModel.restore(path.read_bytes())
                if all(live.already_applied(m) for m in wanted):
                    break
            time.sleep(0.5)
        assert live is not None and all(live.already_applied(m) for m in wanted), log.read_text()[
            -2000:
        ]
    finally:
        for w in workers:
            _stop(w)
    live = WorldModel.restore(checkpoint_path(SegmentStore(store_dir)).read_bytes())
    at = min(live.closed_through, reference.closed_through) - 1
    learned = dependency_pairs(live.graph.as_of(at), bare_names=True)
    assert learned == dependency_pairs(reference.graph.as_of(at), bare_names=True)
    truth = {tuple(e) for e in labels["topology"]["edges"]}
    precision, _ = edge_precision_recall(learned, truth)
    assert precision >= 0.95 and len(learned) >= 15
    assert live.dropped["late_rows"] == 0
